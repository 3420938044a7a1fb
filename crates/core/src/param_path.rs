//! The request parameter an error is about, as a typed path of fields and indexes
//! rather than text, so doors rename and renumber it by its steps and render it in
//! their own style: `messages[2].content[1]` for OpenAI and Gemini, and
//! `messages.2.content.1` for Anthropic.

use std::fmt;
use std::ops::Deref;

/// The IR's names for its messages and their parts.
const MESSAGES: &str = "messages";
const CONTENT: &str = "content";

/// An IR message path taken apart: see [`ParamPath::message_of`].
pub type IrMessagePath<'a> = (usize, &'a [Step], Option<(usize, &'a [Step])>);

/// One step of a [`ParamPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object's field.
    Field(String),
    /// A list's element.
    Index(usize),
}

/// A path into a request body. Dereferences to its canonical text (the IR's and
/// OpenAI's style), which is kept beside the steps because errors are read as text
/// far more often than they are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamPath {
    steps: Vec<Step>,
    text: String,
}

impl ParamPath {
    /// A path of one field: `model`.
    pub fn field(name: impl Into<String>) -> ParamPath {
        ParamPath::from_steps(vec![Step::Field(name.into())])
    }

    /// The IR's message `i`: `messages[i]`.
    pub fn message(i: usize) -> ParamPath {
        ParamPath::field(MESSAGES).at(i)
    }

    /// Part `j` of the IR's message `i`: `messages[i].content[j]`.
    pub fn message_part(i: usize, j: usize) -> ParamPath {
        ParamPath::message(i).then(CONTENT).at(j)
    }

    /// For an IR message path (`messages[i]...`): `i`, the steps after it, and when it
    /// names a part (`messages[i].content[j]...`), `j` and the steps after that.
    pub fn message_of(&self) -> Option<IrMessagePath<'_>> {
        let (i, rest) = self.element_of(MESSAGES)?;
        let part = match rest {
            [Step::Field(c), Step::Index(j), tail @ ..] if c == CONTENT => Some((*j, tail)),
            _ => None,
        };
        Some((i, rest, part))
    }

    pub fn from_steps(steps: Vec<Step>) -> ParamPath {
        let text = render(&steps, false);
        ParamPath { steps, text }
    }

    /// This path, then the list element `i`: `messages` -> `messages[i]`.
    pub fn at(self, i: usize) -> ParamPath {
        self.then_step(Step::Index(i))
    }

    /// This path, then the field `name`: `messages[0]` -> `messages[0].content`.
    pub fn then(self, name: impl Into<String>) -> ParamPath {
        self.then_step(Step::Field(name.into()))
    }

    fn then_step(mut self, step: Step) -> ParamPath {
        push_step(&mut self.text, self.steps.is_empty(), &step, false);
        self.steps.push(step);
        self
    }

    /// This path followed by `tail`'s steps.
    pub fn join(&self, tail: &[Step]) -> ParamPath {
        let mut steps = self.steps.clone();
        steps.extend_from_slice(tail);
        ParamPath::from_steps(steps)
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The first step, when it is a field.
    pub fn head(&self) -> Option<&str> {
        match self.steps.first() {
            Some(Step::Field(f)) => Some(f),
            _ => None,
        }
    }

    /// For `field[i]...`: `i` and the steps after it.
    pub fn element_of(&self, field: &str) -> Option<(usize, &[Step])> {
        match self.steps.as_slice() {
            [Step::Field(f), Step::Index(i), rest @ ..] if f == field => Some((*i, rest)),
            _ => None,
        }
    }

    /// The path with its leading field `from` replaced by `to` (`max_tokens` ->
    /// `max_output_tokens`); `None` when it does not start with `from`.
    pub fn renamed(&self, from: &str, to: &ParamPath) -> Option<ParamPath> {
        match self.steps.split_first() {
            Some((Step::Field(f), rest)) if f == from => Some(to.join(rest)),
            _ => None,
        }
    }

    /// Anthropic's style: every step after a dot, `messages.0.content.1`.
    pub fn dotted(&self) -> String {
        render(&self.steps, true)
    }

    /// Reads a path written as text (`tools[1].function.name`, `messages.0`). A
    /// number after a dot stays a field, so a path reads back as it was written.
    pub fn parse(text: &str) -> ParamPath {
        let mut steps = Vec::new();
        for (n, dotted) in text.split('.').enumerate() {
            let (name, mut brackets) = dotted.split_once('[').map_or((dotted, ""), |(a, b)| (a, b));
            if !name.is_empty() || n == 0 {
                steps.push(Step::Field(name.to_string()));
            }
            while !brackets.is_empty() {
                let (inside, after) = brackets.split_once(']').unwrap_or((brackets, ""));
                steps.push(match inside.parse() {
                    Ok(i) => Step::Index(i),
                    Err(_) => Step::Field(inside.to_string()),
                });
                brackets = after.strip_prefix('[').unwrap_or(after);
            }
        }
        ParamPath::from_steps(steps)
    }
}

fn render(steps: &[Step], dotted: bool) -> String {
    let mut out = String::new();
    for (n, step) in steps.iter().enumerate() {
        push_step(&mut out, n == 0, step, dotted);
    }
    out
}

/// Writes one step: `.field`, `[i]`, or in the dotted style `.i` (no dot first).
fn push_step(out: &mut String, first: bool, step: &Step, dotted: bool) {
    match step {
        Step::Index(i) if !dotted => {
            out.push('[');
            out.push_str(&i.to_string());
            out.push(']');
        }
        Step::Field(_) | Step::Index(_) => {
            if !first {
                out.push('.');
            }
            match step {
                Step::Field(f) => out.push_str(f),
                Step::Index(i) => out.push_str(&i.to_string()),
            }
        }
    }
}

impl Deref for ParamPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ParamPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&str> for ParamPath {
    fn from(text: &str) -> Self {
        ParamPath::parse(text)
    }
}

impl From<String> for ParamPath {
    fn from(text: String) -> Self {
        ParamPath::parse(&text)
    }
}

impl From<&String> for ParamPath {
    fn from(text: &String) -> Self {
        ParamPath::parse(text)
    }
}

impl From<&ParamPath> for ParamPath {
    fn from(path: &ParamPath) -> Self {
        path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_back_as_written() {
        for t in [
            "model",
            "messages[0].content[1]",
            "tools[1].function.name",
            "messages.0.content.1",
            "generationConfig.max_tokens",
            "a[0][2].b",
        ] {
            assert_eq!(ParamPath::parse(t).to_string(), t);
        }
    }

    #[test]
    fn built_paths_render_in_both_styles() {
        let p = ParamPath::field("messages").at(2).then("content").at(1);
        assert_eq!(&*p, "messages[2].content[1]");
        assert_eq!(p.dotted(), "messages.2.content.1");
        assert_eq!(p, ParamPath::parse("messages[2].content[1]"));
        assert_eq!(
            p.element_of("messages").map(|(i, r)| (i, r.len())),
            Some((2, 2))
        );
        assert_eq!(p.element_of("content"), None);
        assert_eq!(p, ParamPath::message_part(2, 1));
        let tail = [Step::Field("x".into())];
        let joined = p.join(&tail);
        let (i, rest, part) = joined.message_of().unwrap();
        assert_eq!((i, rest.len(), part), (2, 3, Some((1, &tail[..]))));
        assert_eq!(ParamPath::field("model").message_of(), None);
    }

    #[test]
    fn a_leading_field_is_renamed_by_step_not_by_prefix() {
        let to = ParamPath::field("max_output_tokens");
        assert_eq!(
            ParamPath::field("max_tokens")
                .renamed("max_tokens", &to)
                .as_deref(),
            Some("max_output_tokens")
        );
        // `messages_x` is not `messages`.
        assert_eq!(
            ParamPath::field("messages_x").renamed("messages", &to),
            None
        );
        let input = ParamPath::field("input");
        let p = ParamPath::parse("messages[3].content").renamed("messages", &input);
        assert_eq!(p.as_deref(), Some("input[3].content"));
    }
}
