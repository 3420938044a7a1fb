//! Turns a checked [`Config`] into the router: providers, one pool per catalog model,
//! fallbacks, presets and aliases. Local GGUF deployments are loaded by the caller's
//! loader, so this crate never touches the engine.

use crate::config::{
    Config, DefaultsSection, DeploymentSection, MaxTokensParam, ModelSection, ProviderSection,
    RoutingSection,
};
use parlance_core::ir::SamplingParams;
use parlance_core::pool::{Deployment, Pool, PoolPolicy};
use parlance_core::preset::{Defaults, Preset};
use parlance_core::{Backend, Capabilities, ModelInfo, Router};
use parlance_upstream::images::{parse_ranges, ImageFetcher, ImagePolicy};
use parlance_upstream::{
    GigaChatAuth, Provider, ProviderConfig, ProviderKind, Timeouts, UpstreamModel,
};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a `gguf = "..."` deployment asks of the engine; one engine per distinct spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalSpec {
    pub path: PathBuf,
    /// The deployment's `n_gpu_layers`.
    pub n_gpu_layers: Option<i32>,
    /// The deployment's vision projector.
    pub mmproj: Option<PathBuf>,
    /// The model's `keep_alive`: loaded on its first request and unloaded after this
    /// long idle, instead of loaded at start.
    pub keep_alive: Option<String>,
}

/// Loads a GGUF file for a `gguf = "..."` deployment.
pub type LocalLoader<'a> =
    dyn FnMut(&LocalSpec) -> Result<(ModelInfo, Arc<dyn Backend>), String> + 'a;

/// The `http(s)` image fetcher `[images]` configures (defaults without a config file).
pub fn image_fetcher(cfg: Option<&Config>) -> Result<Arc<ImageFetcher>, String> {
    let mut policy = ImagePolicy::default();
    if let Some(images) = cfg.map(|c| &c.images) {
        policy.allow_private = parse_ranges(&images.allow_private)?;
        if let Some(max) = images.max_bytes {
            policy.max_bytes = max;
        }
    }
    ImageFetcher::new(policy)
}

fn secs(v: Option<f64>, default: Duration) -> Duration {
    v.filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

fn provider_config(
    name: &str,
    p: &ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
    images: &Arc<ImageFetcher>,
) -> Result<ProviderConfig, String> {
    let kind = p.kind;
    let base_url = p
        .base_url
        .as_ref()
        .map(|u| u.get_ref().clone())
        .or_else(|| kind.default_base_url().map(str::to_string))
        .ok_or_else(|| format!("provider `{name}` needs base_url"))?;
    let api_key = match (&p.api_key_env, &p.api_key) {
        (Some(var), _) => Some(
            env(var.get_ref())
                .filter(|k| !k.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "provider `{name}`: environment variable {} (api_key_env) is not set; \
                 set it, or remove the provider and the models that use it",
                        var.get_ref()
                    )
                })?,
        ),
        (None, key) => key.clone(),
    };
    let d = Timeouts::default();
    let gigachat = (kind == ProviderKind::GigaChat).then(|| GigaChatAuth {
        auth_url: p
            .auth_url
            .clone()
            .unwrap_or_else(|| "https://ngw.devices.sberbank.ru:9443/api/v2/oauth".into()),
        scope: p
            .scope
            .clone()
            .unwrap_or_else(|| "GIGACHAT_API_PERS".into()),
    });
    let ca_cert = match &p.ca_cert {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            format!(
                "provider `{name}`: cannot read ca_cert {}: {e}",
                path.display()
            )
        })?),
        None => None,
    };
    Ok(ProviderConfig {
        ca_cert,
        max_completion_tokens: p.max_tokens_param == Some(MaxTokensParam::MaxCompletionTokens),
        forward_unknown_fields: p.forward_unknown_fields.unwrap_or(true),
        name: name.to_string(),
        kind,
        base_url,
        api_key: api_key.map(|k| k.trim().to_string()),
        headers: p
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeouts: Timeouts {
            connect: secs(p.connect_timeout, d.connect),
            first_token: secs(p.first_token_timeout, d.first_token),
            total: secs(p.total_timeout, d.total),
        },
        gigachat,
        images: Some(Arc::clone(images)),
    })
}

fn policy(global: &RoutingSection, own: &RoutingSection) -> PoolPolicy {
    let d = PoolPolicy::default();
    PoolPolicy {
        balance: own.balance.or(global.balance).unwrap_or_default(),
        retries: own.retries.or(global.retries).unwrap_or(d.retries),
        backoff: own
            .backoff_ms
            .or(global.backoff_ms)
            .map_or(d.backoff, Duration::from_millis),
        backoff_max: own
            .backoff_max_ms
            .or(global.backoff_max_ms)
            .map_or(d.backoff_max, Duration::from_millis),
        failure_threshold: own
            .cooldown_after
            .or(global.cooldown_after)
            .unwrap_or(d.failure_threshold),
        cooldown: secs(own.cooldown_secs.or(global.cooldown_secs), d.cooldown),
    }
}

fn defaults(d: &DefaultsSection) -> Defaults {
    Defaults {
        sampling: SamplingParams {
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            min_p: d.min_p,
            presence_penalty: d.presence_penalty,
            frequency_penalty: d.frequency_penalty,
            repetition_penalty: d.repetition_penalty,
            logit_bias: Vec::new(),
            seed: d.seed,
        },
        max_tokens: d.max_tokens,
        stop: d.stop.clone(),
        extra: d.extra.clone(),
    }
}

/// `/v1/models` metadata: what the config says, else what the first local model knows.
fn info(m: &ModelSection, local: Option<&ModelInfo>, first_provider: Option<&str>) -> ModelInfo {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let caps = local
        .map(|l| l.capabilities.clone())
        .unwrap_or(Capabilities {
            chat: true,
            vision: false,
            tools: true,
            json_schema: true,
            logprobs: false,
            embeddings: false,
            rerank: false,
        });
    ModelInfo {
        id: m.name.get_ref().clone(),
        owned_by: m
            .owned_by
            .clone()
            .or_else(|| first_provider.map(str::to_string))
            .or_else(|| local.map(|l| l.owned_by.clone()))
            .unwrap_or_else(|| "parlance".into()),
        created,
        kind: m
            .kind
            .clone()
            .or_else(|| local.map(|l| l.kind.clone()))
            .unwrap_or_else(|| "chat".into()),
        context_length: m
            .context_length
            .or(local.map(|l| l.context_length))
            .unwrap_or(0),
        max_output_tokens: m
            .max_output_tokens
            .or(local.and_then(|l| l.max_output_tokens)),
        price: m.price,
        dimensions: m.dimensions.or(local.and_then(|l| l.dimensions)),
        matryoshka: m.matryoshka.unwrap_or(local.is_some_and(|l| l.matryoshka)),
        capabilities: Capabilities {
            vision: m.vision.unwrap_or(caps.vision),
            tools: m.tools.unwrap_or(caps.tools),
            embeddings: caps.embeddings || m.kind.as_deref() == Some("embedding"),
            rerank: caps.rerank || m.kind.as_deref() == Some("rerank"),
            ..caps
        },
        file_metadata: local.and_then(|l| l.file_metadata.clone()),
    }
}

fn with_preset(
    backend: Arc<dyn Backend>,
    system_prompt: &Option<String>,
    d: &DefaultsSection,
) -> Arc<dyn Backend> {
    let defaults = defaults(d);
    if system_prompt.is_none() && defaults.is_empty() {
        backend
    } else {
        Arc::new(Preset::new(backend, system_prompt.clone(), defaults))
    }
}

type Loaded = (ModelInfo, Arc<dyn Backend>);

/// The engine for a local deployment: one per file, offload and projector, shared by
/// every model naming them (loaded on first use).
fn local_engine(
    m: &ModelSection,
    d: &DeploymentSection,
    path: &std::path::Path,
    locals: &mut HashMap<LocalSpec, Loaded>,
    load_local: &mut LocalLoader<'_>,
) -> Result<Loaded, String> {
    let k = LocalSpec {
        path: path.to_path_buf(),
        n_gpu_layers: d.n_gpu_layers,
        mmproj: d.mmproj.clone(),
        keep_alive: m.keep_alive.clone(),
    };
    let (info, backend) = match locals.entry(k) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let loaded = load_local(e.key()).map_err(|err| {
                format!("model `{}`: {}: {err}", m.name.get_ref(), path.display())
            })?;
            e.insert(loaded)
        }
    };
    Ok((info.clone(), Arc::clone(backend)))
}

/// An upstream deployment: its provider's name, its label (`provider/model`) and backend.
fn upstream_deployment<'c>(
    name: &str,
    d: &'c DeploymentSection,
    providers: &HashMap<&str, Arc<Provider>>,
) -> Result<(&'c str, String, Arc<dyn Backend>), String> {
    let pname = d
        .provider
        .as_ref()
        .map(|p| p.get_ref().as_str())
        .unwrap_or_default();
    let upstream = d.model.clone().unwrap_or_default();
    let provider = Arc::clone(
        providers
            .get(pname)
            .ok_or_else(|| format!("model `{name}`: no provider `{pname}`"))?,
    );
    let label = format!("{pname}/{upstream}");
    Ok((
        pname,
        label,
        Arc::new(UpstreamModel::new(provider, upstream)),
    ))
}

/// Adds every catalog model (and its aliases) to `router`.
pub fn build(
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    load_local: &mut LocalLoader<'_>,
    router: &mut Router,
) -> Result<(), String> {
    cfg.check_env(env)?;
    let images = image_fetcher(Some(cfg))?;
    let mut providers: HashMap<&str, Arc<Provider>> = HashMap::new();
    for (name, p) in &cfg.providers {
        providers.insert(
            name,
            Provider::new(provider_config(name, p, env, &images)?)?,
        );
    }
    // One engine per file, offload and projector, shared by every model naming them.
    let mut locals: HashMap<LocalSpec, Loaded> = HashMap::new();
    let mut pools: HashMap<&str, Arc<Pool>> = HashMap::new();
    let mut routes: HashMap<&str, (ModelInfo, Arc<dyn Backend>)> = HashMap::new();

    for m in cfg.models.iter().filter(|m| m.base.is_none()) {
        let name = m.name.get_ref().as_str();
        let mut deployments = Vec::new();
        let mut local_info = None;
        let mut first_provider = None;
        for d in &m.deployments {
            let (label, backend) = if let Some(path) = &d.gguf {
                let (li, b) = local_engine(m, d, path, &mut locals, load_local)?;
                local_info.get_or_insert(li);
                (format!("local/{}", path.display()), b)
            } else {
                let (pname, label, b) = upstream_deployment(name, d, &providers)?;
                first_provider.get_or_insert(pname);
                (label, b)
            };
            deployments.push(Deployment {
                name: label,
                backend,
                weight: d.weight,
            });
        }
        let pool = Arc::new(Pool::new(
            name,
            deployments,
            policy(&cfg.routing, &m.routing),
        ));
        pools.insert(name, Arc::clone(&pool));
        let backend = with_preset(pool, &m.system_prompt, &m.defaults);
        routes.insert(
            name,
            (info(m, local_info.as_ref(), first_provider), backend),
        );
    }
    let pool_of = |name: &str| {
        pools
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no model `{name}` to fall back to"))
    };
    for m in cfg.models.iter().filter(|m| m.base.is_none()) {
        let fallbacks = m
            .fallbacks
            .iter()
            .map(|f| pool_of(f.get_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        pool_of(m.name.get_ref())?.set_fallbacks(fallbacks);
    }
    let route_of = |name: &str| {
        routes
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no model `{name}`"))
    };
    for m in &cfg.models {
        let name = m.name.get_ref().as_str();
        let (info, backend) = match &m.base {
            None => route_of(name)?,
            Some(base) => {
                let (base_info, base_backend) = route_of(base.get_ref())?;
                preset(m, &base_info, &base_backend)
            }
        };
        for id in std::iter::once(name).chain(m.aliases.iter().map(String::as_str)) {
            let mut i = info.clone();
            i.id = id.to_string();
            router
                .add(i, Arc::clone(&backend))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A preset model: its base's backend under its own name, system prompt and defaults
/// (and its own owner, kind and price where it sets them).
fn preset(
    m: &ModelSection,
    base_info: &ModelInfo,
    base_backend: &Arc<dyn Backend>,
) -> (ModelInfo, Arc<dyn Backend>) {
    let mut i = base_info.clone();
    i.id = m.name.get_ref().clone();
    if let Some(o) = &m.owned_by {
        i.owned_by = o.clone();
    }
    if let Some(k) = &m.kind {
        i.kind = k.clone();
    }
    // A preset may be sold at its own price (it was silently its base's).
    if m.price.is_some() {
        i.price = m.price;
    }
    let backend = with_preset(Arc::clone(base_backend), &m.system_prompt, &m.defaults);
    (i, backend)
}
