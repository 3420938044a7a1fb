//! Any text, cut anywhere, parses the same as when it arrives whole, and nothing panics.

use super::*;
use proptest::prelude::*;

fn parse(
    make: &dyn Fn() -> Box<dyn ToolCallParser>,
    text: &str,
    cuts: &[usize],
    cut: bool,
) -> Vec<Parsed> {
    let mut p = make();
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (text.len() + 1))
        .filter(|&c| text.is_char_boundary(c))
        .collect();
    points.sort_unstable();
    points.push(text.len());
    let mut raw = Vec::new();
    let mut at = 0;
    for q in points {
        raw.extend(p.push(&text[at..q]));
        at = q;
    }
    raw.extend(p.finish(cut));
    // Fragments of one call and adjacent text are compared joined.
    let mut out: Vec<Parsed> = Vec::new();
    for item in raw {
        match (out.last_mut(), item) {
            (Some(Parsed::Text(a)), Parsed::Text(b)) => a.push_str(&b),
            (Some(Parsed::CallArgs(a)), Parsed::CallArgs(b)) => a.push_str(&b),
            (_, item) => out.push(item),
        }
    }
    out
}

fn texts() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("<tool_call>".to_string()),
        Just("</tool_call>".to_string()),
        Just("{\"name\": \"f\", \"arguments\": ".to_string()),
        Just("{\"a\": 1}".to_string()),
        Just("}".to_string()),
        Just("[TOOL_CALLS]".to_string()),
        Just("<|python_tag|>".to_string()),
        Just("```json\n".to_string()),
        "[ a-z{}\\[\\]\":,(=)\n]{0,6}",
        "\\PC{0,4}",
    ];
    proptest::collection::vec(pieces, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn every_parser_is_split_invariant(text in texts(), cuts in proptest::collection::vec(any::<usize>(), 0..6), cut in any::<bool>()) {
        let makers: Vec<Box<dyn Fn() -> Box<dyn ToolCallParser>>> = vec![
            Box::new(|| Box::new(HermesParser::default())),
            Box::new(|| Box::new(HermesParser::new(vec!["f".into()]))),
            Box::new(|| Box::new(WholeOutputParser::llama3())),
            Box::new(|| Box::new(WholeOutputParser::mistral())),
            Box::new(|| Box::new(WholeOutputParser::pythonic())),
        ];
        for make in &makers {
            let whole = parse(make.as_ref(), &text, &[], cut);
            let split = parse(make.as_ref(), &text, &cuts, cut);
            prop_assert_eq!(whole, split, "{:?}", text);
        }
    }
}
