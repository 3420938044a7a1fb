//! Streaming tool-call parsers, one per syntax, behind one trait. Text is passed on as
//! soon as it cannot be the start of a call; a call is emitted once it is complete.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Text(String),
    /// A call has begun: its arguments follow as `CallArgs` fragments until `CallEnd`.
    CallStart {
        name: String,
    },
    CallArgs(String),
    CallEnd,
    /// `arguments` is JSON text of an object.
    Call {
        name: String,
        arguments: String,
    },
}

pub trait ToolCallParser: Send {
    fn push(&mut self, text: &str) -> Vec<Parsed>;
    /// End of output: flush whatever is held; an unfinished call that still parses counts.
    /// `cut`: the output was cut short (max_tokens), so a call that does not parse is a
    /// fragment of markup and is dropped instead of becoming text.
    fn finish(&mut self, cut: bool) -> Vec<Parsed>;
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// `<tool_call>{"name":..., "arguments":...}</tool_call>`, any number, text around them.
/// Small models often drop the tags and answer with the bare (or ```json-fenced) object:
/// an output that opens like that is held to the end and counts as a call when it names
/// a declared function.
#[derive(Default)]
pub struct HermesParser {
    buf: String,
    in_call: bool,
    /// Inside a call whose `{"name": ..., "arguments": ` header was read: arguments stream.
    streaming: bool,
    /// Inside a call of another shape: parsed whole at `</tool_call>`.
    whole: bool,
    names: Vec<String>,
    /// Some(true): the output opened like a bare JSON call and is held to the end.
    bare: Option<bool>,
}

impl HermesParser {
    pub fn new(names: Vec<String>) -> Self {
        HermesParser {
            names,
            ..HermesParser::default()
        }
    }

    fn bare_calls(&self, text: &str) -> Option<Vec<Parsed>> {
        let t = text.trim();
        let t = t
            .strip_prefix("```json")
            .or_else(|| t.strip_prefix("```"))
            .map_or(t, |r| r.trim_end().trim_end_matches("```"))
            .trim();
        let calls = calls_from_value(&serde_json::from_str::<Value>(t).ok()?)?;
        let declared = calls.iter().all(
            |c| matches!(c, Parsed::Call { name, .. } if self.names.iter().any(|n| n == name)),
        );
        (declared && !calls.is_empty()).then_some(calls)
    }
}

impl ToolCallParser for HermesParser {
    fn push(&mut self, text: &str) -> Vec<Parsed> {
        self.buf.push_str(text);
        if self.bare.is_none() && !self.names.is_empty() {
            let head = self.buf.trim_start();
            if head.starts_with('{') || head.starts_with("```") {
                self.bare = Some(true);
            } else if !head.is_empty() && !"```".starts_with(head) {
                self.bare = Some(false);
            }
        }
        if self.bare != Some(false) && !self.names.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        loop {
            if self.in_call && !self.streaming && !self.whole {
                match call_header(&self.buf) {
                    Header::Incomplete if !self.buf.contains(CLOSE) => break,
                    Header::Complete { name, len } => {
                        self.buf.drain(..len);
                        self.streaming = true;
                        out.push(Parsed::CallStart { name });
                    }
                    _ => self.whole = true,
                }
            } else if self.streaming {
                if let Some(end) = self.buf.find(CLOSE) {
                    let body: String = self.buf.drain(..end + CLOSE.len()).collect();
                    let (args, _) = split_args_tail(&body[..end], true);
                    if !args.is_empty() {
                        out.push(Parsed::CallArgs(args.to_string()));
                    }
                    out.push(Parsed::CallEnd);
                    self.in_call = false;
                    self.streaming = false;
                } else {
                    let (args, _) = split_args_tail(&self.buf, false);
                    let n = args.len();
                    if n > 0 {
                        out.push(Parsed::CallArgs(self.buf.drain(..n).collect()));
                    }
                    break;
                }
            } else if self.in_call {
                let Some(end) = self.buf.find(CLOSE) else {
                    break;
                };
                let body: String = self.buf.drain(..end + CLOSE.len()).collect();
                let body = &body[..end];
                self.in_call = false;
                self.whole = false;
                match call_from_json(body) {
                    Some(call) => out.push(call),
                    None => push_text(&mut out, format!("{OPEN}{body}{CLOSE}")),
                }
            } else if let Some(start) = self.buf.find(OPEN) {
                let before: String = self.buf.drain(..start + OPEN.len()).collect();
                push_text(&mut out, before[..start].to_string());
                self.in_call = true;
            } else {
                let keep = partial_suffix(&self.buf, OPEN);
                let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                push_text(&mut out, text);
                break;
            }
        }
        out
    }

    fn finish(&mut self, cut: bool) -> Vec<Parsed> {
        if self.bare != Some(false) && !self.names.is_empty() {
            // Held output: a bare call, or else ordinary text (tags included) parsed as usual.
            if let Some(calls) = self.bare_calls(&self.buf) {
                self.buf.clear();
                return calls;
            }
            if cut && looks_like_call_start(&self.buf) {
                self.buf.clear();
                return Vec::new();
            }
            self.bare = Some(false);
            let held = std::mem::take(&mut self.buf);
            let mut out = self.push(&held);
            out.extend(self.finish(cut));
            return out;
        }
        let rest = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        if self.streaming {
            // Output ended inside a streaming call: what is left is its last fragment.
            let (args, _) = split_args_tail(&rest, true);
            if !args.is_empty() {
                out.push(Parsed::CallArgs(args.to_string()));
            }
            out.push(Parsed::CallEnd);
            self.in_call = false;
            self.streaming = false;
        } else if self.in_call {
            self.in_call = false;
            self.whole = false;
            match call_from_json(&rest) {
                Some(call) => out.push(call),
                None if cut => {}
                None => push_text(&mut out, format!("{OPEN}{rest}")),
            }
        } else {
            push_text(&mut out, rest);
        }
        out
    }
}

/// Syntaxes whose calls are the whole output (Llama 3 JSON, Mistral, pythonic): text
/// streams through unless the output opens like a call, which is then held to the end.
pub struct WholeOutputParser {
    /// Prefixes that mark the output as a call.
    markers: &'static [&'static str],
    parse: fn(&str) -> Option<Vec<Parsed>>,
    buf: String,
    holding: Option<bool>,
}

impl WholeOutputParser {
    pub fn llama3() -> Self {
        Self::new(&["<|python_tag|>", "{"], parse_llama3)
    }

    pub fn mistral() -> Self {
        Self::new(&["[TOOL_CALLS]"], parse_mistral)
    }

    pub fn pythonic() -> Self {
        Self::new(&["[", "```tool_code", "tool_code"], parse_pythonic)
    }

    fn new(markers: &'static [&'static str], parse: fn(&str) -> Option<Vec<Parsed>>) -> Self {
        WholeOutputParser {
            markers,
            parse,
            buf: String::new(),
            holding: None,
        }
    }
}

impl ToolCallParser for WholeOutputParser {
    fn push(&mut self, text: &str) -> Vec<Parsed> {
        self.buf.push_str(text);
        if self.holding.is_none() {
            let head = self.buf.trim_start();
            if self.markers.iter().any(|m| head.starts_with(m)) {
                self.holding = Some(true);
            } else if !head.is_empty() && !self.markers.iter().any(|m| m.starts_with(head)) {
                self.holding = Some(false);
            }
        }
        match self.holding {
            Some(false) => {
                let mut out = Vec::new();
                push_text(&mut out, std::mem::take(&mut self.buf));
                out
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, cut: bool) -> Vec<Parsed> {
        let rest = std::mem::take(&mut self.buf);
        if let Some(calls) = (self.parse)(rest.trim()) {
            if !calls.is_empty() {
                return calls;
            }
        }
        let head = rest.trim_start();
        let tagged = self
            .markers
            .iter()
            .any(|m| m.len() > 1 && head.starts_with(m));
        if cut && self.holding == Some(true) && (tagged || looks_like_call_start(head)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        push_text(&mut out, rest);
        out
    }
}

enum Header {
    Incomplete,
    Complete { name: String, len: usize },
    Other,
}

/// Reads `{"name": "NAME", "arguments": ` up to (not including) the arguments' `{`.
fn call_header(buf: &str) -> Header {
    let mut rest = buf;
    let expect = |want: &str, rest: &mut &str| -> Option<bool> {
        *rest = rest.trim_start();
        if rest.len() < want.len() {
            return want.starts_with(*rest).then_some(false);
        }
        if rest.starts_with(want) {
            *rest = &rest[want.len()..];
            Some(true)
        } else {
            None
        }
    };
    for want in ["{", "\"name\"", ":", "\""] {
        match expect(want, &mut rest) {
            None => return Header::Other,
            Some(false) => return Header::Incomplete,
            Some(true) => {}
        }
    }
    let Some(end) = rest.find('"') else {
        return Header::Incomplete;
    };
    let name = rest[..end].to_string();
    if name.contains('\\') {
        return Header::Other;
    }
    rest = &rest[end + 1..];
    for want in [",", "\"arguments\"", ":"] {
        match expect(want, &mut rest) {
            None => return Header::Other,
            Some(false) => return Header::Incomplete,
            Some(true) => {}
        }
    }
    let trimmed = rest.trim_start();
    match trimmed.chars().next() {
        None => Header::Incomplete,
        Some('{') => Header::Complete {
            name,
            len: buf.len() - trimmed.len(),
        },
        Some(_) => Header::Other,
    }
}

/// Splits streamed call text into the arguments so far and a tail that may still turn out
/// to be the call's closing `}` (plus spaces and a partial `</tool_call>`). At the end of
/// the call (`done`), the tail is exactly the outer object's `}` and spaces.
fn split_args_tail(s: &str, done: bool) -> (&str, &str) {
    let mut cut = s.len();
    if !done {
        cut -= partial_suffix(s, CLOSE);
    }
    let body = s[..cut].trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let at = body.len();
    (&s[..at], &s[at..])
}

/// Output that opens like a JSON call object (`{"name": ...`, maybe fenced), as opposed
/// to JSON that merely starts with `{`.
fn looks_like_call_start(text: &str) -> bool {
    let t = text.trim_start();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .unwrap_or(t)
        .trim_start();
    let t = t.strip_prefix('[').unwrap_or(t).trim_start();
    match t.strip_prefix('{') {
        Some(rest) => {
            let rest = rest.trim_start();
            rest.is_empty() || "\"name\"".starts_with(rest) || rest.starts_with("\"name\"")
        }
        None => t.is_empty(),
    }
}

fn push_text(out: &mut Vec<Parsed>, text: String) {
    if !text.is_empty() {
        out.push(Parsed::Text(text));
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of `marker`.
fn partial_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && marker.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

fn args_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn call_from_value(v: &Value) -> Option<Parsed> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"));
    Some(Parsed::Call {
        name,
        arguments: args_text(args),
    })
}

fn call_from_json(body: &str) -> Option<Parsed> {
    call_from_value(&serde_json::from_str::<Value>(body.trim()).ok()?)
}

fn calls_from_value(v: &Value) -> Option<Vec<Parsed>> {
    match v {
        Value::Array(items) => items.iter().map(call_from_value).collect(),
        obj => Some(vec![call_from_value(obj)?]),
    }
}

fn parse_llama3(s: &str) -> Option<Vec<Parsed>> {
    let s = s.strip_prefix("<|python_tag|>").unwrap_or(s).trim();
    // Several calls may come separated by `;`.
    let mut calls = Vec::new();
    for part in s.split(";\n").flat_map(|p| p.split("; ")) {
        calls.extend(calls_from_value(
            &serde_json::from_str::<Value>(part.trim()).ok()?,
        )?);
    }
    Some(calls)
}

fn parse_mistral(s: &str) -> Option<Vec<Parsed>> {
    let s = s.strip_prefix("[TOOL_CALLS]")?.trim();
    calls_from_value(&serde_json::from_str::<Value>(s).ok()?)
}

/// `[f(a=1, b="x"), g()]`, keyword arguments with Python literals.
fn parse_pythonic(s: &str) -> Option<Vec<Parsed>> {
    let s = s
        .trim_start_matches("```tool_code")
        .trim_start_matches("tool_code")
        .trim_end_matches("```")
        .trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut calls = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let open = rest.find('(')?;
        let name = rest[..open].trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return None;
        }
        let (args, after) = python_kwargs(&rest[open + 1..])?;
        calls.push(Parsed::Call {
            name: name.to_string(),
            arguments: Value::Object(args).to_string(),
        });
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(calls)
}

/// Parses `a=1, b="x")` and returns the arguments and what follows the `)`.
fn python_kwargs(s: &str) -> Option<(serde_json::Map<String, Value>, &str)> {
    let mut map = serde_json::Map::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix(')') {
            return Some((map, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let (value, after) = python_literal(rest[eq + 1..].trim_start())?;
        map.insert(key, value);
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
}

/// One Python literal (string, number, True/False/None, list or dict) at the start of `s`.
fn python_literal(s: &str) -> Option<(Value, &str)> {
    let first = s.chars().next()?;
    if first == '"' || first == '\'' {
        let mut out = String::new();
        let mut chars = s[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                c if c == first => return Some((Value::String(out), &s[i + 2..])),
                c => out.push(c),
            }
        }
        return None;
    }
    if first == '[' || first == '{' {
        // Balanced brackets, then read as JSON after mapping Python constants.
        let mut depth = 0;
        let mut in_str: Option<char> = None;
        for (i, c) in s.char_indices() {
            match (in_str, c) {
                (Some(q), c) if c == q => in_str = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => in_str = Some(c),
                (None, '[' | '{') => depth += 1,
                (None, ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        let json = s[..=i]
                            .replace('\'', "\"")
                            .replace("True", "true")
                            .replace("False", "false")
                            .replace("None", "null");
                        return Some((serde_json::from_str(&json).ok()?, &s[i + 1..]));
                    }
                }
                _ => {}
            }
        }
        return None;
    }
    let end = s.find([',', ')']).unwrap_or(s.len());
    let word = s[..end].trim();
    let value = match word {
        "True" | "true" => Value::Bool(true),
        "False" | "false" => Value::Bool(false),
        "None" | "null" => Value::Null,
        n => serde_json::from_str::<Value>(n)
            .ok()
            .filter(Value::is_number)?,
    };
    Some((value, &s[end..]))
}

#[cfg(test)]
#[path = "parsers_tests.rs"]
mod tests;

/// Fuzzing (bounded, runs with `cargo test`).
#[cfg(test)]
#[path = "parsers_fuzz.rs"]
mod fuzz;
