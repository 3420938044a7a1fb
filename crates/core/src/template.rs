//! Chat templates: the model's own Jinja template (as shipped in the GGUF or on the
//! hub), rendered with minijinja plus the Python-isms Hugging Face templates rely on.

use crate::error::Error;
use crate::ir::{ContentPart, Message, ToolDef};
use minijinja::{context, Environment, ErrorKind as JinjaErrorKind};
use serde_json::{json, Value};

/// Used when a model ships no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format (Gemma 2 and 3, BgGPT), for GGUFs that ship no template: no
/// system role, so a system message opens the first user turn, as Google's own
/// template does; the assistant's role is `model`.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}\
{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}\
{%- if message['content'] is string -%}{{ message['content'] | trim }}\
{%- else -%}{%- for item in message['content'] -%}\
{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- else -%}{{ item['text'] | trim }}{%- endif -%}\
{%- endfor -%}{%- endif -%}\
{{ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// The built-in template for a model that ships none, by its GGUF architecture.
pub fn fallback_template(architecture: &str) -> &'static str {
    if architecture.starts_with("gemma") {
        GEMMA_TEMPLATE
    } else {
        CHATML_TEMPLATE
    }
}

/// Prefix that marks errors raised by the template itself via `raise_exception`:
/// those are about the caller's messages (a 400), anything else is a template bug.
const RAISED: &str = "template raised: ";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// A chat template that does not parse as Jinja.
#[derive(Debug, thiserror::Error)]
#[error("the chat template does not parse: {0}")]
pub struct TemplateError(#[source] minijinja::Error);

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face renders with these two on; templates are written for them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    JinjaErrorKind::InvalidOperation,
                    format!("{RAISED}{msg}"),
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(TemplateError)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders the conversation with the generation prompt appended.
    pub fn render(&self, messages: &[Message], tools: &[ToolDef]) -> Result<String, Error> {
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        let tools: Option<Vec<Value>> = (!tools.is_empty()).then(|| {
            tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name,
                        "description": t.description.clone().unwrap_or_default(),
                        "parameters": t.parameters,
                    }})
                })
                .collect()
        });
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::internal(format!("chat template: {e}")))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| {
            let text = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            match text.strip_prefix(RAISED) {
                Some(reason) => Error::invalid_param(
                    "messages",
                    format!("this model's chat template does not accept these messages: {reason}"),
                ),
                None => Error::internal(format!("the model's chat template failed: {e}")),
            }
        })
    }
}

/// The message as Hugging Face templates expect it: `content` is a string unless the
/// message carries images, tool-call arguments are objects, not JSON text.
fn message_value(m: &Message) -> Value {
    let content = if m.has_images() {
        Value::Array(
            m.content
                .iter()
                .map(|p| match p {
                    ContentPart::Text(t) => json!({"type": "text", "text": t}),
                    ContentPart::Image(_) => json!({"type": "image"}),
                })
                .collect(),
        )
    } else {
        Value::String(m.joined_text())
    };
    let mut v = serde_json::Map::new();
    v.insert("role".into(), json!(m.role.as_str()));
    v.insert("content".into(), content);
    if let Some(name) = &m.name {
        v.insert("name".into(), json!(name));
    }
    if let Some(id) = &m.tool_call_id {
        v.insert("tool_call_id".into(), json!(id));
    }
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|c| {
                let args = serde_json::from_str::<Value>(&c.arguments)
                    .unwrap_or_else(|_| Value::String(c.arguments.clone()));
                json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
            })
            .collect();
        v.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Role;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "", "<|im_end|>").unwrap();
        let out = t
            .render(&[Message::text(Role::User, "Здравей")], &[])
            .unwrap();
        assert!(out.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
        assert!(out.ends_with("<|im_start|>user\nЗдравей<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn gemma_fallback_folds_the_system_prompt_into_the_first_user_turn() {
        assert_eq!(fallback_template("gemma3"), GEMMA_TEMPLATE);
        assert_eq!(fallback_template("llama"), CHATML_TEMPLATE);
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let out = t
            .render(
                &[
                    Message::text(Role::System, "Be brief."),
                    Message::text(Role::User, " Hi "),
                    Message::text(Role::Assistant, "Hello!"),
                    Message::text(Role::User, "Bye"),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn raise_exception_is_a_400_naming_messages() {
        let src = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "<bos>", "<eos>").unwrap();
        let err = t
            .render(&[Message::text(Role::Assistant, "x")], &[])
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.message.contains("roles must alternate"),
            "{}",
            err.message
        );
        assert_eq!(err.param.as_deref(), Some("messages"));
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{{ messages[0]['content'].strip().upper() }}{{ bos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[Message::text(Role::User, "  hi ")], &[])
                .unwrap(),
            "HI<s>"
        );
    }

    #[test]
    fn tool_call_arguments_are_objects() {
        let src = "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.arguments.city }}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let mut m = Message::text(Role::Assistant, "");
        m.tool_calls.push(crate::ir::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Sofia\"}".into(),
        });
        assert_eq!(t.render(&[m], &[]).unwrap(), "Sofia");
    }

    #[test]
    fn broken_template_is_reported_at_load() {
        assert!(ChatTemplate::new("{% for x in %}", "", "").is_err());
    }
}
