//! Preparing a request off the async workers: rendering the chat template (images as
//! markers), tokenizing (images as placeholder spans), and the size checks that come
//! before the engine thread sees it.

use crate::constraint::Constrainer;
use crate::job;
use crate::job::Crash;
use crate::special::{self, Piece, Specials};
use crate::vision::{self, ImageInput, Media, Vision};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use parlance_core::ir::{ChatRequest, ContentPart, Message, Role, ToolDef};
use parlance_core::template::ChatTemplate;
use parlance_core::tools::{self, ToolSyntax};
use parlance_core::Code;
use parlance_core::Error;
use parlance_core::ParamPath;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// What preparing a request needs (template, tokenizer, grammar compiler): shared with
/// the blocking pool, where that CPU work runs instead of on the async workers.
pub(crate) struct Prep {
    /// Before `model`: the projector points into it.
    pub(crate) vision: Option<Arc<Vision>>,
    /// Most positions one image may take: llama.cpp's micro-batch, for a projector
    /// whose image must be decoded in one (see `Vision::non_causal`).
    pub(crate) image_limit: usize,
    pub(crate) model: Arc<LlamaModel>,
    pub(crate) template: ChatTemplate,
    /// Whether the template renders `tools` itself; otherwise tools are described in
    /// the system prompt and calls are asked for in Hermes syntax.
    pub(crate) template_tools: bool,
    pub(crate) tool_syntax: ToolSyntax,
    pub(crate) constrainer: Constrainer,
    /// BOS text, to avoid a double BOS when the template already writes one.
    pub(crate) bos_text: String,
    pub(crate) add_bos: bool,
    /// The longest token's text in bytes: a prompt of B bytes has at least
    /// B / this many tokens, so an oversized prompt is refused without tokenizing it.
    pub(crate) max_piece_bytes: usize,
    pub(crate) ctx_per_seq: u32,
    pub(crate) specials: Specials,
    /// Test hooks (cargo feature `test-hooks`): a prompt containing one of these texts
    /// makes the engine thread panic there, so tests can see how a dead engine, or a
    /// failed sequence in a live one, is reported.
    pub(crate) crash_markers: Vec<(String, Crash)>,
}

/// A prepared request: what the engine thread needs, computed off the async workers.
pub(crate) struct Prepared {
    pub(crate) prompt_text: String,
    pub(crate) prompt: Vec<LlamaToken>,
    pub(crate) media: Vec<Media>,
    pub(crate) constraint: Option<Matcher>,
    pub(crate) crash: Option<Crash>,
}
impl Prep {
    /// Whether a prompt gets the model's BOS token: not when the template wrote it.
    fn adds_bos(&self, prompt: &str) -> bool {
        self.add_bos && (self.bos_text.is_empty() || !prompt.starts_with(&self.bos_text))
    }

    /// Tokens of `text` (which starts at `offset` in the prompt), special-token text
    /// parsed only outside the prompt's `plain` ranges.
    pub(crate) fn tokenize_part(
        &self,
        text: &str,
        offset: usize,
        plain: &[Range<usize>],
        add_bos: bool,
    ) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let local: Vec<Range<usize>> = plain
            .iter()
            .filter(|r| r.end > offset && r.start < offset + text.len())
            .map(|r| r.start.max(offset) - offset..r.end.min(offset + text.len()) - offset)
            .collect();
        let mut tokens = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            tokens.push(vocab.bos());
        }
        // Each call into llama.cpp's tokenizer has a fixed cost that dwarfs a short
        // piece's own; a prompt of many turns repeats the same short markup pieces.
        let mut short: HashMap<&str, Vec<LlamaToken>> = HashMap::new();
        for piece in self.specials.split(text, &local) {
            match piece {
                Piece::Token(t) => tokens.push(t),
                Piece::Text(t) if t.len() <= 64 => {
                    let ids = short
                        .entry(t)
                        .or_insert_with(|| vocab.tokenize(t.as_bytes(), false, false));
                    tokens.extend_from_slice(ids);
                }
                Piece::Text(t) => tokens.extend(vocab.tokenize(t.as_bytes(), false, false)),
            }
        }
        tokens
    }

    /// Where the messages' texts are in the rendered prompt: tokenized as text there. A
    /// text the template changed is refused if it holds special-token text, which could
    /// then not be kept from acting as markup.
    fn plain_spans(&self, prompt: &str, messages: &[Message]) -> Result<Vec<Range<usize>>, Error> {
        let texts = messages.iter().flat_map(|m| {
            m.content.iter().filter_map(|p| match p {
                ContentPart::Text(t) => Some(t.as_str()),
                ContentPart::Image(_) => None,
            })
        });
        let (spans, missing) = special::content_spans(prompt, texts);
        if let Some(bad) = missing.iter().find(|t| self.specials.found_in(t)) {
            let at = messages
                .iter()
                .position(|m| {
                    m.content
                        .iter()
                        .any(|p| matches!(p, ContentPart::Text(t) if t == bad))
                })
                .unwrap_or(0);
            return Err(Error::invalid_param(
                ParamPath::message(at).then("content"),
                "the text contains a control token of this model's chat template (such as an end-of-turn marker), which this template does not keep as plain text; remove it",
            ));
        }
        Ok(spans)
    }

    /// Refuses, before any rendering or tokenizing, a request whose text alone needs
    /// more tokens than the context has: B bytes are at least B / max_piece_bytes tokens.
    pub(crate) fn check_size(&self, req: &ChatRequest, wanted: usize) -> Result<(), Error> {
        let at_least = text_bytes(req) / self.max_piece_bytes;
        let ctx = self.ctx_per_seq as usize;
        if at_least + wanted > ctx {
            return Err(context_exceeded(ctx, at_least, wanted, "at least "));
        }
        Ok(())
    }

    pub(crate) fn prepare(
        &self,
        req: &ChatRequest,
        tools_active: bool,
        wanted: usize,
    ) -> Result<Prepared, Error> {
        self.check_size(req, wanted)?;
        let (messages, images) = match &req.raw_prompt {
            None if req.messages.iter().any(Message::has_images) => {
                vision::take_images(&req.messages)?
            }
            _ => (Vec::new(), Vec::new()),
        };
        let prompt_text = match &req.raw_prompt {
            Some(raw) => raw.clone(),
            None if images.is_empty() => self.render(&req.messages, req, tools_active)?,
            None => self.render(&messages, req, tools_active)?,
        };
        let constraint = self.constrainer.for_request(req)?;
        let plain = match &req.raw_prompt {
            Some(_) => Vec::new(),
            None => self.plain_spans(&prompt_text, &req.messages)?,
        };
        let (prompt, media) = if images.is_empty() {
            (
                self.tokenize_part(&prompt_text, 0, &plain, self.adds_bos(&prompt_text)),
                Vec::new(),
            )
        } else {
            self.tokenize_with_images(&prompt_text, &plain, images)?
        };
        if prompt.is_empty() {
            return Err(Error::invalid_param("messages", "the prompt is empty"));
        }
        let ctx = self.ctx_per_seq as usize;
        if prompt.len() + wanted > ctx {
            return Err(context_exceeded(ctx, prompt.len(), wanted, ""));
        }
        let crash = self
            .crash_markers
            .iter()
            .find(|(m, _)| prompt_text.contains(m.as_str()))
            .map(|&(_, c)| c);
        Ok(Prepared {
            prompt_text,
            prompt,
            media,
            constraint,
            crash,
        })
    }
}

/// Bytes of message text: the prompt is at least this long once rendered.
pub(crate) fn text_bytes(req: &ChatRequest) -> usize {
    req.raw_prompt.as_ref().map_or(0, String::len)
        + req
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|p| match p {
                ContentPart::Text(t) => t.len(),
                ContentPart::Image(_) => 0,
            })
            .sum::<usize>()
}

pub(crate) fn context_exceeded(ctx: usize, prompt: usize, wanted: usize, qualifier: &str) -> Error {
    Error::invalid_param(
        "messages",
        format!(
            "This model's maximum context length is {ctx} tokens. However, you requested {qualifier}{} tokens ({qualifier}{prompt} in the messages, {wanted} in the completion). Please reduce the length of the messages or completion.",
            prompt + wanted,
        ),
    )
    .with_code(Code::ContextLengthExceeded)
}
impl Prep {
    /// Renders `messages` (the request's, or those with images as markers).
    pub(crate) fn render(
        &self,
        messages: &[Message],
        req: &ChatRequest,
        tools_active: bool,
    ) -> Result<String, Error> {
        let offered: &[ToolDef] = if tools_active { &req.tools } else { &[] };
        if self.template_tools {
            return self.template.render(messages, offered);
        }
        let tool_history = messages
            .iter()
            .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty());
        if tools_active || tool_history {
            let messages: Vec<Message> = tools::inline_tools(messages, offered);
            return self.template.render(&messages, &[]);
        }
        self.template.render(messages, &[])
    }

    /// Tokens of a rendered prompt whose images are markers: text between them is
    /// tokenized as mtmd would, each image becomes a span of placeholders.
    pub(crate) fn tokenize_with_images(
        &self,
        text: &str,
        plain: &[Range<usize>],
        images: Vec<ImageInput>,
    ) -> Result<(Vec<LlamaToken>, Vec<Media>), Error> {
        let marker = Vision::marker();
        let segments: Vec<&str> = text.split(marker).collect();
        let Some(vision) = self
            .vision
            .as_ref()
            .filter(|_| segments.len() == images.len() + 1)
        else {
            return Err(Error::invalid_param(
                "messages",
                format!("the text contains `{marker}`, which marks where images go for this model; remove it"),
            ));
        };
        let (first, rest) = segments.split_first().unwrap_or((&"", &[]));
        let mut tokens = self.tokenize_part(first, 0, plain, self.adds_bos(text));
        let mut media = Vec::with_capacity(images.len());
        let mut offset = first.len();
        for (image, segment) in images.into_iter().zip(rest) {
            offset += marker.len();
            let chunks = vision.image_at(&image.bytes, &image.at)?;
            let len = chunks.total_tokens();
            let wide = vision::widest_image(&chunks);
            if wide > self.image_limit {
                return Err(Error::invalid_param(
                    &image.at,
                    format!(
                        "The image takes {wide} positions, which this model evaluates together, but this server's micro-batch holds {} (-b/--batch-size; --deterministic caps it at {}).",
                        self.image_limit,
                        job::UBATCH
                    ),
                )
                .with_code(Code::InvalidImage));
            }
            media.push(Media {
                start: tokens.len(),
                len,
                chunks,
            });
            tokens.extend(vision::placeholders(&image.bytes, len));
            tokens.extend(self.tokenize_part(segment, offset, plain, false));
            offset += segment.len();
        }
        // Sampling starts from the last prompt token's logits, which an image has not.
        if media
            .last()
            .is_some_and(|m| m.start + m.len == tokens.len())
        {
            return Err(Error::invalid_param(
                "messages",
                "the prompt ends with an image; add text after it",
            ));
        }
        Ok((tokens, media))
    }
}
