//! A caller's options that the IR has no field for, kept per provider (as TensorZero
//! scopes `extra_body`): each upstream mapper reads only its own provider's, so a field
//! meant for one provider never lands in another provider's body.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderOptions {
    /// An OpenAI-shaped request's unrecognised fields (vLLM's and SGLang's extensions,
    /// `chat_template_kwargs`...), sent as they are to OpenAI-compatible upstreams whose
    /// catalog entry allows it (`forward_unknown_fields`, on by default).
    pub openai_compatible: Map<String, Value>,
    pub anthropic: AnthropicOptions,
    pub gemini: GeminiOptions,
}

/// Anthropic Messages fields with no IR equivalent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnthropicOptions {
    /// `thinking` exactly as Anthropic takes it; wins over the IR's reasoning budget.
    pub thinking: Option<Value>,
    /// `metadata` (Anthropic's `{user_id}`); wins over the IR's `user`.
    pub metadata: Option<Value>,
    pub service_tier: Option<Value>,
    /// An Anthropic caller's other fields, for Anthropic upstreams only.
    pub fields: Map<String, Value>,
}

/// Gemini generateContent fields with no IR equivalent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeminiOptions {
    /// `generationConfig.thinkingConfig` exactly as Gemini takes it; wins over the IR's
    /// reasoning budget.
    pub thinking_config: Option<Value>,
    pub safety_settings: Option<Value>,
    /// A Gemini caller's other top-level fields (`cachedContent`, `labels`...), for
    /// Gemini upstreams only.
    pub fields: Map<String, Value>,
}

impl ProviderOptions {
    /// An OpenAI-shaped request's unrecognised fields: all of them for OpenAI-compatible
    /// upstreams, and those that name another provider's own options (`thinking`,
    /// `service_tier`, `thinking_config`, `safety_settings`, as LiteLLM's callers write
    /// them) also for that provider.
    pub fn from_unrecognised(fields: Map<String, Value>) -> ProviderOptions {
        let mut out = ProviderOptions::default();
        out.lift(&fields);
        out.openai_compatible = fields;
        out
    }

    /// Fills what the caller left unset from a catalog entry's defaults (written as an
    /// OpenAI-shaped request's extra fields).
    pub fn add_defaults(&mut self, fields: &Map<String, Value>) {
        self.lift(fields);
        for (k, v) in fields {
            self.openai_compatible
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
    }

    /// Takes the fields that name another provider's own options, where unset.
    fn lift(&mut self, fields: &Map<String, Value>) {
        let get = |k: &str| fields.get(k).cloned();
        let a = &mut self.anthropic;
        a.thinking = a.thinking.take().or_else(|| get("thinking"));
        a.service_tier = a.service_tier.take().or_else(|| get("service_tier"));
        let g = &mut self.gemini;
        g.thinking_config = g.thinking_config.take().or_else(|| get("thinking_config"));
        g.safety_settings = g.safety_settings.take().or_else(|| get("safety_settings"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn an_openai_callers_fields_go_to_compatible_upstreams_and_name_other_providers_options() {
        let o = ProviderOptions::from_unrecognised(map(json!({
            "chat_template_kwargs": {"enable_thinking": false},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT"}],
        })));
        assert_eq!(o.openai_compatible.len(), 3);
        assert_eq!(
            o.anthropic.thinking,
            Some(json!({"type": "enabled", "budget_tokens": 2048}))
        );
        assert_eq!(
            o.gemini.safety_settings,
            Some(json!([{"category": "HARM_CATEGORY_HARASSMENT"}]))
        );
        assert!(o.anthropic.fields.is_empty() && o.gemini.fields.is_empty());
        assert_eq!(o.gemini.thinking_config, None);
    }

    #[test]
    fn defaults_fill_only_what_the_caller_left_unset() {
        let mut o =
            ProviderOptions::from_unrecognised(map(json!({"top_a": 1, "thinking": "mine"})));
        o.add_defaults(&map(
            json!({"top_a": 2, "thinking": "preset", "service_tier": "auto"}),
        ));
        assert_eq!(o.openai_compatible["top_a"], json!(1));
        assert_eq!(o.anthropic.thinking, Some(json!("mine")));
        assert_eq!(o.anthropic.service_tier, Some(json!("auto")));
    }
}
