//! Where the IR's parts came from in the caller's request.

use crate::param_path::ParamPath;

/// Where the IR's messages and their parts came from in the caller's request, in its
/// own wire terms (`messages.1.content.0`, `contents[0].parts[1]`, `input[0]`): the IR
/// adds messages (a system prompt, tool results) and splits others, so an IR path like
/// `messages[2].content[1]` must be looked up, not renamed, to name what the caller sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartOrigins {
    messages: Vec<(usize, ParamPath)>,
    parts: Vec<(usize, usize, ParamPath)>,
    /// The caller's messages are the IR's, one to one (OpenAI's door): nothing is
    /// recorded per request, paths are the IR's less what a preset put in front.
    same: bool,
    /// With `same`: messages, and parts of the caller's first message, put in front.
    added_messages: usize,
    added_parts: usize,
}

impl PartOrigins {
    /// Names as the IR's (`messages[i].content[j]`).
    pub fn same_as_ir() -> PartOrigins {
        PartOrigins {
            same: true,
            ..PartOrigins::default()
        }
    }

    pub fn message(&mut self, index: usize, path: impl Into<ParamPath>) {
        self.messages.push((index, path.into()));
    }

    pub fn part(&mut self, message: usize, part: usize, path: impl Into<ParamPath>) {
        self.parts.push((message, part, path.into()));
    }

    /// A message written before all others (a preset's system prompt).
    pub fn message_prepended(&mut self) {
        self.added_messages += 1;
        for (m, _) in &mut self.messages {
            *m += 1;
        }
        for (m, _, _) in &mut self.parts {
            *m += 1;
        }
    }

    /// A part written before the others of the first message (a preset's system
    /// prompt joined to the caller's).
    pub fn part_prepended(&mut self) {
        self.added_parts += 1;
        for (m, p, _) in &mut self.parts {
            *p += usize::from(*m == 0);
        }
    }

    /// The caller's name for an IR parameter path, when it is about a message.
    pub fn name(&self, param: impl Into<ParamPath>) -> Option<ParamPath> {
        let param = param.into();
        let (i, rest, part) = param.message_of()?;
        if self.same {
            let i = i.checked_sub(self.added_messages)?;
            return match part {
                Some((j, tail)) => {
                    let j = if i == 0 {
                        j.checked_sub(self.added_parts)?
                    } else {
                        j
                    };
                    Some(ParamPath::message_part(i, j).join(tail))
                }
                None => Some(ParamPath::message(i).join(rest)),
            };
        }
        if let Some((j, tail)) = part {
            if let Some((_, _, path)) = self.parts.iter().find(|(m, p, _)| *m == i && *p == j) {
                return Some(path.join(tail));
            }
        }
        let (_, path) = self.messages.iter().find(|(m, _)| *m == i)?;
        Some(path.join(rest))
    }

    /// `e` with its parameter named as the caller wrote it (unchanged when unknown).
    pub fn rename(&self, mut e: crate::Error) -> crate::Error {
        if let Some(named) = e.param.as_ref().and_then(|p| self.name(p)) {
            e.param = Some(named);
        }
        e
    }
}
