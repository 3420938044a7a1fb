//! `parlance.toml`: providers, the model catalog (deployments, metadata, defaults,
//! aliases, fallbacks, presets) and routing policy. Parsed strictly: an unknown key is an
//! error naming the key and its line; so is a reference to a provider or model that does
//! not exist.

use parlance_core::pool::Balance;
use parlance_upstream::ProviderKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `[images]`: how Parlance fetches `http(s)` images for providers that need the bytes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// Private ranges image URLs may point to (refused by default), e.g. `["10.0.0.0/8"]`.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// Largest image fetched, in bytes (default 20 MiB).
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub images: ImagesSection,
    /// `[local]`: the models-on-demand settings of `parlance serve` (`models_dir`,
    /// `keep_alive`, `max_loaded_models`, `max_memory`), read by the binary with `[serve]`.
    #[serde(default)]
    pub local: toml::Table,
    /// `[serve]`: any `parlance serve` flag by its long name, read by the binary (a flag
    /// or its environment variable wins).
    #[serde(default)]
    pub serve: toml::Table,
    #[serde(default)]
    pub accounts: crate::accounts::Settings,
    /// The file's text, for line numbers in errors found after parsing.
    #[serde(skip)]
    source: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Keys clients may use, added to `--api-key`.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// An environment variable holding more keys, comma-separated.
    pub api_keys_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub kind: ProviderKind,
    pub base_url: Option<Spanned<String>>,
    /// Name of the environment variable that holds the key (preferred).
    pub api_key_env: Option<Spanned<String>>,
    /// The key itself (for local servers that want any non-empty key).
    pub api_key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds.
    pub connect_timeout: Option<f64>,
    pub first_token_timeout: Option<f64>,
    pub total_timeout: Option<f64>,
    /// `max_tokens` (default) or `max_completion_tokens`: the name the upstream takes
    /// for the token cap (OpenAI's gpt-5 and o-series refuse `max_tokens`).
    pub max_tokens_param: Option<MaxTokensParam>,
    /// OpenAI-compatible providers: send an OpenAI-shaped caller's unrecognised fields
    /// along (default true: vLLM's and SGLang's extensions reach them); false sends
    /// only the fields Parlance knows.
    pub forward_unknown_fields: Option<bool>,
    /// Extra root certificate to trust (PEM file), e.g. GigaChat's Russian Trusted Root CA.
    pub ca_cert: Option<PathBuf>,
    /// GigaChat: token endpoint and scope.
    pub auth_url: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensParam {
    MaxTokens,
    MaxCompletionTokens,
}

/// Routing policy; `[routing]` sets it for every model, a model may override any field.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    pub balance: Option<Balance>,
    pub retries: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Consecutive failures that put a deployment in cooldown.
    pub cooldown_after: Option<u32>,
    pub cooldown_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A preset ("use case"): serve this other catalog model under `name`, with
    /// `system_prompt` and `defaults` added.
    pub base: Option<Spanned<String>>,
    #[serde(default)]
    pub deployments: Vec<DeploymentSection>,
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub defaults: DefaultsSection,
    // What /v1/models shows.
    pub owned_by: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub context_length: Option<u32>,
    /// Most completion tokens a request may ask for (a larger max_tokens is a 400).
    pub max_output_tokens: Option<u32>,
    /// USD per million tokens: `{ input, output, cached_input }`, for metering.
    pub price: Option<parlance_core::Price>,
    pub vision: Option<bool>,
    pub tools: Option<bool>,
    /// The length of an embedding model's vectors (`type = "embedding"`).
    pub dimensions: Option<u32>,
    /// An embedding model trained for shortened vectors (Matryoshka): callers may ask
    /// for fewer `dimensions`, cut and renormalized.
    pub matryoshka: Option<bool>,
    /// Local (`gguf`) deployments load on the first request and unload after this long
    /// idle (`5m`, `-1` keeps them once loaded), instead of loading at start.
    pub keep_alive: Option<String>,
    /// Overrides `[routing]` for this model.
    #[serde(default)]
    pub routing: RoutingSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    /// A provider from `[providers]`, with `model` its name upstream...
    pub provider: Option<Spanned<String>>,
    pub model: Option<String>,
    /// ...or a local GGUF file served by the built-in engine.
    pub gguf: Option<PathBuf>,
    /// With `gguf`: layers offloaded to a GPU (a GPU build's -ngl; -1: all).
    pub n_gpu_layers: Option<i32>,
    /// With `gguf`: its vision projector (mmproj GGUF), so it takes images.
    pub mmproj: Option<PathBuf>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSection {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Extension parameters sent upstream unless the caller sets them.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A base URL reqwest can call: http(s), a host, no query or fragment.
fn check_base_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => {
            let (name, after) = v6.split_once(']').ok_or("has an unclosed [ in its host")?;
            (name, after.strip_prefix(':'))
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if name.is_empty() {
        return Err("has no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("has a port that is not a number 0-65535");
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("must not have a query or fragment");
    }
    if rest.contains(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    Ok(())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate(text)?;
        cfg.source = text.to_string();
        Ok(cfg)
    }

    /// Every environment variable the file names that is not set, all at once, each
    /// with its line: one restart fixes them all.
    pub fn check_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        let line = |s: &Spanned<String>| line_of(&self.source, s.span().start);
        let mut missing = Vec::new();
        for (name, p) in &self.providers {
            if let Some(var) = &p.api_key_env {
                if env(var.get_ref()).is_none_or(|v| v.trim().is_empty()) {
                    missing.push(format!(
                        "line {}: provider `{name}`: api_key_env {} is not set",
                        line(var),
                        var.get_ref()
                    ));
                }
            }
        }
        if let Some(var) = &self.server.api_keys_env {
            if env(var.get_ref()).is_none() {
                missing.push(format!(
                    "line {}: [server] api_keys_env {} is not set",
                    line(var),
                    var.get_ref()
                ));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} environment variable(s) missing; set them, or remove what uses them:\n  {}",
            missing.len(),
            missing.join("\n  ")
        ))
    }

    fn validate(&self, text: &str) -> Result<(), String> {
        self.check_names(text)?;
        self.check_providers(text)?;
        for m in &self.models {
            self.check_base(text, m)?;
            self.check_deployments(text, m)?;
            self.check_fallbacks(text, m)?;
        }
        Ok(())
    }

    /// Model names and aliases are unique.
    fn check_names(&self, text: &str) -> Result<(), String> {
        let at = |s: &std::ops::Range<usize>| at(text, s);
        let mut names: Vec<&str> = Vec::new();
        for m in &self.models {
            for n in std::iter::once(m.name.get_ref()).chain(m.aliases.iter()) {
                if names.contains(&n.as_str()) {
                    return Err(format!(
                        "{}: the model name `{n}` is used twice",
                        at(&m.name.span())
                    ));
                }
                names.push(n);
            }
        }
        Ok(())
    }

    fn check_providers(&self, text: &str) -> Result<(), String> {
        let at = |s: &std::ops::Range<usize>| at(text, s);
        for (name, p) in &self.providers {
            if p.kind != ProviderKind::GigaChat && (p.auth_url.is_some() || p.scope.is_some()) {
                return Err(format!(
                    "provider `{name}`: auth_url and scope are for kind = \"gigachat\" only"
                ));
            }
            if p.kind != ProviderKind::OpenAi && p.max_tokens_param.is_some() {
                return Err(format!(
                    "provider `{name}`: max_tokens_param is for kind = \"openai\" only"
                ));
            }
            if let Some(url) = &p.base_url {
                check_base_url(url.get_ref()).map_err(|why| {
                    format!(
                        "{}: provider `{name}`: base_url {:?} {why}",
                        at(&url.span()),
                        url.get_ref()
                    )
                })?;
            }
            if p.kind == ProviderKind::OpenAi && p.base_url.is_none() {
                return Err(format!(
                    "provider `{name}`: kind = \"openai\" needs base_url (e.g. \"http://localhost:8000/v1\")"
                ));
            }
        }
        Ok(())
    }

    /// A model has deployments or is a preset (`base`) of a model that is not one.
    fn check_base(&self, text: &str, m: &ModelSection) -> Result<(), String> {
        let at = |s: &std::ops::Range<usize>| at(text, s);
        let name = m.name.get_ref();
        let here = at(&m.name.span());
        match (&m.base, m.deployments.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "{here}: model `{name}` has both `base` (a preset) and deployments: pick one"
                ))
            }
            (None, true) => {
                return Err(format!(
                    "{here}: model `{name}` needs deployments, or `base` to be a preset of another model"
                ))
            }
            (Some(base), true) => {
                let target = self.models.iter().find(|o| o.name.get_ref() == base.get_ref());
                match target {
                    None => {
                        return Err(format!(
                            "{}: model `{name}`: base `{}` is not a model in this file",
                            at(&base.span()),
                            base.get_ref()
                        ))
                    }
                    Some(t) if t.base.is_some() => {
                        return Err(format!(
                            "{}: model `{name}`: base `{}` is itself a preset; point at the model it is based on",
                            at(&base.span()),
                            base.get_ref()
                        ))
                    }
                    _ => {}
                }
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// Each deployment is a provider's model or a GGUF, with the settings its kind takes.
    fn check_deployments(&self, text: &str, m: &ModelSection) -> Result<(), String> {
        let at = |s: &std::ops::Range<usize>| at(text, s);
        let name = m.name.get_ref();
        let here = at(&m.name.span());
        for d in &m.deployments {
            match (&d.provider, &d.gguf) {
                (Some(p), None) => {
                    if !self.providers.contains_key(p.get_ref()) {
                        return Err(format!(
                            "{}: model `{name}`: provider `{}` is not defined under [providers]",
                            at(&p.span()),
                            p.get_ref()
                        ));
                    }
                    if d.model.as_deref().is_none_or(str::is_empty) {
                        return Err(format!(
                            "{}: model `{name}`: a provider deployment needs `model`, its name upstream",
                            at(&p.span())
                        ));
                    }
                    if d.n_gpu_layers.is_some() {
                        return Err(format!(
                            "{}: model `{name}`: `n_gpu_layers` is for gguf deployments (a provider places its own layers)",
                            at(&p.span())
                        ));
                    }
                    if d.mmproj.is_some() {
                        return Err(format!(
                            "{}: model `{name}`: `mmproj` is for gguf deployments (a provider brings its own vision)",
                            at(&p.span())
                        ));
                    }
                }
                (None, Some(_)) => {
                    if d.model.is_some() {
                        return Err(format!(
                            "{here}: model `{name}`: a gguf deployment takes no `model`"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "{here}: model `{name}`: each deployment needs exactly one of `provider` or `gguf`"
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_fallbacks(&self, text: &str, m: &ModelSection) -> Result<(), String> {
        let at = |s: &std::ops::Range<usize>| at(text, s);
        let name = m.name.get_ref();
        let here = at(&m.name.span());
        for f in &m.fallbacks {
            let target = self.models.iter().find(|o| o.name.get_ref() == f.get_ref());
            match target {
                Some(t) if t.base.is_some() => {
                    return Err(format!(
                    "{}: model `{name}`: fallback `{}` is a preset; name the model it is based on",
                    at(&f.span()),
                    f.get_ref()
                ))
                }
                Some(t) if t.name.get_ref() != name => {}
                _ => {
                    return Err(format!(
                        "{}: model `{name}`: fallback `{}` must be another model in this file",
                        at(&f.span()),
                        f.get_ref()
                    ))
                }
            }
        }
        if m.base.is_some() && !m.fallbacks.is_empty() {
            return Err(format!(
                "{here}: model `{name}` is a preset: it uses its base model's fallbacks"
            ));
        }
        Ok(())
    }
}

/// Where a span starts, for error messages: `line N`.
fn at(text: &str, s: &std::ops::Range<usize>) -> String {
    format!("line {}", line_of(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../parlance.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert!(cfg.models.len() >= 4);
        assert!(cfg.providers.contains_key("gigachat"));
        let minimal = Config::parse(include_str!("../../../parlance.minimal.toml")).unwrap();
        assert_eq!(minimal.models.len(), 1);
        // No secrets: it starts with an empty environment.
        minimal.check_env(&|_| None).unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse("[[models]]\nname = \"a\"\ntemprature = 1\n").unwrap_err();
        assert!(e.contains("temprature") && e.contains("line 3"), "{e}");
        let e = Config::parse(
            "[providers.x]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\napikey = \"k\"\n",
        )
        .unwrap_err();
        assert!(e.contains("apikey") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn dangling_references_name_their_line() {
        let text =
            "[[models]]\nname = \"a\"\ndeployments = [{ provider = \"nope\", model = \"m\" }]\n";
        let e = Config::parse(text).unwrap_err();
        assert!(e.contains("`nope`") && e.contains("line 3"), "{e}");
        let text = "[[models]]\nname = \"a\"\ndeployments = [{ gguf = \"x.gguf\" }]\nfallbacks = [\"b\"]\n";
        let e = Config::parse(text).unwrap_err();
        assert!(e.contains("fallback `b`") && e.contains("line 4"), "{e}");
        let text = "[[models]]\nname = \"p\"\nbase = \"zzz\"\n";
        assert!(Config::parse(text).unwrap_err().contains("base `zzz`"));
        let text = "[[models]]\nname = \"a\"\ndeployments = [{ gguf = \"x.gguf\" }]\n[[models]]\nname = \"a\"\nbase = \"a\"\n";
        assert!(Config::parse(text).unwrap_err().contains("used twice"));
        let text = "[[models]]\nname = \"a\"\ndeployments = [{ gguf = \"x.gguf\" }]\nfallbacks = [\"p\"]\n[[models]]\nname = \"b\"\ndeployments = [{ gguf = \"y.gguf\" }]\n[[models]]\nname = \"p\"\nbase = \"b\"\n";
        let e = Config::parse(text).unwrap_err();
        assert!(
            e.contains("fallback `p` is a preset") && e.contains("line 4"),
            "{e}"
        );
    }

    #[test]
    fn gpu_layers_belong_to_gguf_deployments() {
        let ok = Config::parse(
            "[[models]]\nname = \"a\"\ndeployments = [{ gguf = \"x.gguf\", n_gpu_layers = 20 }]\n",
        )
        .unwrap();
        assert_eq!(ok.models[0].deployments[0].n_gpu_layers, Some(20));
        let e = Config::parse(
            "[providers.x]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\n\n[[models]]\nname = \"a\"\n\
             deployments = [{ provider = \"x\", model = \"m\", n_gpu_layers = 20 }]\n",
        )
        .unwrap_err();
        assert!(e.contains("n_gpu_layers") && e.contains("line 7"), "{e}");
    }

    #[test]
    fn a_projector_belongs_to_gguf_deployments() {
        let ok = Config::parse(
            "[[models]]\nname = \"a\"\ndeployments = [{ gguf = \"x.gguf\", mmproj = \"p.gguf\" }]\n",
        )
        .unwrap();
        assert_eq!(
            ok.models[0].deployments[0].mmproj.as_deref(),
            Some(std::path::Path::new("p.gguf"))
        );
        let e = Config::parse(
            "[providers.x]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\n\n[[models]]\nname = \"a\"\n\
             deployments = [{ provider = \"x\", model = \"m\", mmproj = \"p.gguf\" }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("`mmproj` is for gguf") && e.contains("line 7"),
            "{e}"
        );
    }

    #[test]
    fn every_missing_env_var_is_reported_at_once_with_its_line() {
        let cfg = Config::parse(
            "[providers.a]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\napi_key_env = \"A_KEY\"\n\n\
             [providers.b]\nkind = \"anthropic\"\napi_key_env = \"B_KEY\"\n\n\
             [server]\napi_keys_env = \"KEYS\"\n",
        )
        .unwrap();
        let e = cfg.check_env(&|_| None).unwrap_err();
        assert!(e.contains("3 environment variable"), "{e}");
        assert!(e.contains("line 4: provider `a`: api_key_env A_KEY"), "{e}");
        assert!(e.contains("line 8: provider `b`: api_key_env B_KEY"), "{e}");
        assert!(e.contains("line 11: [server] api_keys_env KEYS"), "{e}");
        assert!(cfg.check_env(&|_| Some("x".into())).is_ok());
    }

    #[test]
    fn base_urls_are_checked_at_startup() {
        for (url, why) in [
            ("localhost:8000/v1", "http://"),
            ("http:///v1", "no host"),
            ("https://h:99999/v1", "port"),
            ("http://h/v1?x=1", "query"),
        ] {
            let e = Config::parse(&format!(
                "[providers.p]\nkind = \"openai\"\nbase_url = \"{url}\"\n"
            ))
            .unwrap_err();
            assert!(e.contains("line 3") && e.contains(why), "{url}: {e}");
        }
        for ok in [
            "http://127.0.0.1:8000/v1",
            "https://api.example.com/v1",
            "http://[::1]:8080/v1",
            "http://h",
        ] {
            Config::parse(&format!(
                "[providers.p]\nkind = \"openai\"\nbase_url = \"{ok}\"\n"
            ))
            .unwrap();
        }
    }
}
