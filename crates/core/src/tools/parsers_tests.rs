use super::*;

/// Feeds `text` cut at every byte position (in two pieces) and char by char, and
/// checks the parsed result never depends on where the stream was cut.
fn all_splits(make: fn() -> Box<dyn ToolCallParser>, text: &str) -> Vec<Parsed> {
    let whole = run(make(), &[text]);
    for cut in (0..=text.len()).filter(|&c| text.is_char_boundary(c)) {
        let got = run(make(), &[&text[..cut], &text[cut..]]);
        assert_eq!(got, whole, "cut at {cut}");
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(run(make(), &refs), whole, "char by char");
    whole
}

/// Runs the parser and merges adjacent text, so only meaning is compared.
fn run(mut p: Box<dyn ToolCallParser>, pieces: &[&str]) -> Vec<Parsed> {
    let mut raw = Vec::new();
    for piece in pieces {
        raw.extend(p.push(piece));
    }
    raw.extend(p.finish(false));
    let mut out: Vec<Parsed> = Vec::new();
    for item in raw {
        match (out.last_mut(), item) {
            (Some(Parsed::Text(a)), Parsed::Text(b)) => a.push_str(&b),
            // A streamed call, joined, must equal the call.
            (_, Parsed::CallStart { name }) => out.push(Parsed::Call {
                name,
                arguments: String::new(),
            }),
            (Some(Parsed::Call { arguments, .. }), Parsed::CallArgs(f)) => arguments.push_str(&f),
            (_, Parsed::CallEnd) => {}
            (_, item) => out.push(item),
        }
    }
    out
}

fn call(name: &str, args: &str) -> Parsed {
    Parsed::Call {
        name: name.into(),
        arguments: args.into(),
    }
}

fn hermes() -> Box<dyn ToolCallParser> {
    Box::new(HermesParser::default())
}

fn hermes_named() -> Box<dyn ToolCallParser> {
    Box::new(HermesParser::new(vec!["get_weather".into()]))
}

#[test]
fn bare_and_fenced_json_calls_of_declared_tools() {
    let bare = "{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Sofia\"}\n}";
    assert_eq!(
        all_splits(hermes_named, bare),
        vec![call("get_weather", "{\"city\":\"Sofia\"}")]
    );
    let fenced = "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Sofia\"}}\n```";
    assert_eq!(
        all_splits(hermes_named, fenced),
        vec![call("get_weather", "{\"city\":\"Sofia\"}")]
    );
    // JSON that names no declared tool is an answer, not a call.
    let answer = "{\"name\": \"Ivan\", \"age\": 3}";
    assert_eq!(
        all_splits(hermes_named, answer),
        vec![Parsed::Text(answer.into())]
    );
    // Tagged calls still work when the parser knows the names.
    let tagged = "Sure. <tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
    assert_eq!(
        all_splits(hermes_named, tagged),
        vec![Parsed::Text("Sure. ".into()), call("get_weather", "{}")]
    );
}

#[test]
fn hermes_calls_and_text_at_every_split() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"София\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let got = all_splits(hermes, text);
    assert_eq!(
        got,
        vec![
            Parsed::Text("Let me check.\n".into()),
            call("get_weather", "{\"city\": \"София\"}"),
            Parsed::Text("\n".into()),
            call("get_time", "{}"),
        ]
    );
}

#[test]
fn hermes_arguments_stream_in_fragments() {
    let mut p = HermesParser::default();
    let mut events = Vec::new();
    for piece in [
        "<tool_call>\n{\"name\": \"get_weather\", ",
        "\"arguments\": {\"city\": ",
        "\"Sofia\", \"unit\": ",
        "\"celsius\"}}\n</tool_call>",
    ] {
        events.extend(p.push(piece));
    }
    assert_eq!(
        events[0],
        Parsed::CallStart {
            name: "get_weather".into()
        }
    );
    let fragments: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Parsed::CallArgs(f) => Some(f.as_str()),
            _ => None,
        })
        .collect();
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_eq!(
        fragments.concat(),
        "{\"city\": \"Sofia\", \"unit\": \"celsius\"}"
    );
    assert_eq!(events.last(), Some(&Parsed::CallEnd));
}

#[test]
fn hermes_plain_text_passes_through_and_lookalikes_are_released() {
    assert_eq!(
        all_splits(hermes, "a <tool is not a call"),
        vec![Parsed::Text("a <tool is not a call".into())]
    );
    let mut p = HermesParser::default();
    assert_eq!(p.push("x <tool_"), vec![Parsed::Text("x ".into())]);
    assert_eq!(p.push("box>"), vec![Parsed::Text("<tool_box>".into())]);
}

#[test]
fn hermes_unclosed_call_at_end_still_counts_and_garbage_stays_text() {
    assert_eq!(
        all_splits(
            hermes,
            "<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1}}"
        ),
        vec![call("f", "{\"a\":1}")]
    );
    assert_eq!(
        all_splits(hermes, "<tool_call>not json</tool_call>"),
        vec![Parsed::Text("<tool_call>not json</tool_call>".into())]
    );
}

#[test]
fn a_call_cut_by_max_tokens_leaves_no_markup() {
    for text in [
        "<tool_call>\n{\"name\":\"get_",
        "Sure. <tool_call>\n{\"name\": \"f\", \"argu",
        "{\"name\": \"f\", \"arguments\": {\"a\"",
        "```json\n{\"na",
    ] {
        for cut_at in 0..=text.len() {
            if !text.is_char_boundary(cut_at) {
                continue;
            }
            let mut p = hermes_named();
            let mut out = p.push(&text[..cut_at]);
            out.extend(p.push(&text[cut_at..]));
            out.extend(p.finish(true));
            let shown: String = out
                .iter()
                .filter_map(|x| match x {
                    Parsed::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            assert!(
                !shown.contains('{') && !shown.contains("<tool"),
                "{text:?} @ {cut_at}: {out:?}"
            );
        }
    }
    // Not cut: a closed call that is garbage stays the model's text, and JSON that is
    // no call is text even when cut.
    let mut p = hermes_named();
    p.push("{\"answer\": 4");
    assert_eq!(p.finish(true), vec![Parsed::Text("{\"answer\": 4".into())]);
    let mut p: Box<dyn ToolCallParser> = Box::new(WholeOutputParser::mistral());
    p.push("[TOOL_CALLS][{\"name\": \"f\", \"argu");
    assert_eq!(p.finish(true), vec![]);
}

#[test]
fn llama3_json_with_parameters() {
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Sofia\"}}";
    assert_eq!(
        all_splits(|| Box::new(WholeOutputParser::llama3()), text),
        vec![call("get_weather", "{\"city\":\"Sofia\"}")]
    );
    let tagged = "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}";
    assert_eq!(
        all_splits(|| Box::new(WholeOutputParser::llama3()), tagged),
        vec![call("f", "{}")]
    );
    assert_eq!(
        all_splits(|| Box::new(WholeOutputParser::llama3()), "Hello there"),
        vec![Parsed::Text("Hello there".into())]
    );
}

#[test]
fn mistral_list_of_calls() {
    let text = "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]";
    assert_eq!(
        all_splits(|| Box::new(WholeOutputParser::mistral()), text),
        vec![call("a", "{\"x\":1}"), call("b", "{}")]
    );
}

#[test]
fn pythonic_calls_with_python_literals() {
    let text = "[get_weather(city=\"Sofia\", unit='celsius', days=3, alerts=True), ping()]";
    assert_eq!(
        all_splits(|| Box::new(WholeOutputParser::pythonic()), text),
        vec![
            call(
                "get_weather",
                "{\"city\":\"Sofia\",\"unit\":\"celsius\",\"days\":3,\"alerts\":true}"
            ),
            call("ping", "{}")
        ]
    );
    // A bracketed sentence is not a call.
    assert_eq!(
        all_splits(
            || Box::new(WholeOutputParser::pythonic()),
            "[citation needed] text"
        ),
        vec![Parsed::Text("[citation needed] text".into())]
    );
}
