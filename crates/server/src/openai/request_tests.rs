use super::*;

fn parse(v: Value) -> Result<ChatRequest, Error> {
    to_ir(serde_json::from_value(v).unwrap())
}

fn base() -> Value {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(key: &str, value: Value) -> Value {
    let mut b = base();
    b[key] = value;
    b
}

#[test]
fn ranges_name_their_param() {
    for (k, v) in [
        ("temperature", serde_json::json!(2.5)),
        ("top_p", serde_json::json!(1.5)),
        ("n", serde_json::json!(9)),
        ("n", serde_json::json!(0)),
        ("presence_penalty", serde_json::json!(-3)),
        ("frequency_penalty", serde_json::json!(3)),
        ("max_tokens", serde_json::json!(0)),
        ("stop", serde_json::json!(["a", "b", "c", "d", "e"])),
        ("repetition_penalty", serde_json::json!(0)),
    ] {
        let e = parse(with(k, v)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(k), "{k}: {}", e.message);
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn max_completion_tokens_wins() {
    let mut b = with("max_tokens", serde_json::json!(10));
    b["max_completion_tokens"] = serde_json::json!(5);
    assert_eq!(parse(b).unwrap().max_tokens, Some(5));
}

#[test]
fn unknown_role_and_part_are_400s() {
    let e = parse(serde_json::json!({"model":"m","messages":[{"role":"wizard","content":"x"}]}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    let e = parse(serde_json::json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
}

#[test]
fn data_url_images_are_decoded_to_base64_source() {
    let r = parse(
        serde_json::json!({"model":"m","messages":[{"role":"user","content":[
        {"type":"text","text":"Describe"},
        {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}}]}]}),
    )
    .unwrap();
    assert_eq!(
        r.messages[0].content[1],
        ContentPart::Image(ImageSource::Base64 {
            media_type: "image/jpeg".into(),
            data: "AAAA".into()
        })
    );
}

#[test]
fn developer_is_system_and_extras_survive() {
    let mut b =
        serde_json::json!({"model":"m","messages":[{"role":"developer","content":"be brief"}]});
    b["chat_template_kwargs"] = serde_json::json!({"enable_thinking": false});
    let r = parse(b).unwrap();
    assert_eq!(r.messages[0].role, Role::System);
    assert!(r
        .options
        .openai_compatible
        .contains_key("chat_template_kwargs"));
}

#[test]
fn named_tool_choice_must_exist() {
    let mut b = with(
        "tool_choice",
        serde_json::json!({"type":"function","function":{"name":"nope"}}),
    );
    b["tools"] = serde_json::json!([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]);
    assert_eq!(parse(b).unwrap_err().param.as_deref(), Some("tool_choice"));
}

#[test]
fn duplicate_tool_names_are_400() {
    let mut b = base();
    b["tools"] = serde_json::json!([
        {"type":"function","function":{"name":"f","parameters":{"type":"object"}}},
        {"type":"function","function":{"name":"g"}},
        {"type":"function","function":{"name":"f"}}]);
    let e = parse(b).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools[2].function.name"));
    assert!(e.message.contains("tools[0]"), "{}", e.message);
}

#[test]
fn logit_bias_keys_must_be_ids() {
    let e = parse(with("logit_bias", serde_json::json!({"abc": 1}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logit_bias"));
    let r = parse(with("logit_bias", serde_json::json!({"50256": -100}))).unwrap();
    assert_eq!(r.sampling.logit_bias, vec![(50256, -100.0)]);
}

#[test]
fn reasoning_effort_is_one_of_the_shared_words() {
    let r = parse(with("reasoning_effort", serde_json::json!("xhigh"))).unwrap();
    assert_eq!(r.reasoning.effort, Some(parlance_core::ir::Effort::XHigh));
    let e = parse(with("reasoning_effort", serde_json::json!("loud"))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
    assert!(
        e.message
            .contains("none, minimal, low, medium, high, xhigh"),
        "{}",
        e.message
    );
}
