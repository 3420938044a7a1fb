//! `parlance serve`: load the models, build the router, serve HTTP until a signal.

use crate::local::load_local;
pub(crate) use crate::serve_args::{LogFormat, ServeArgs};
use anyhow::{bail, Context};
use parlance_core::Router;
use parlance_gateway::catalog;
use parlance_gateway::catalog::LocalSpec;
use parlance_gateway::config::Config;
use parlance_server::listen::Limits;
use parlance_server::Builder;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the README's first command puts the default model.
pub(crate) const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
pub(crate) const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";

/// The default model, looked up in ./models and next to the binary's checkout.
fn default_model() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(DEFAULT_MODEL_FILE)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/parlance -> the checkout's models/
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(DEFAULT_MODEL_FILE));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

pub(crate) fn init_logging(verbose: bool, format: LogFormat) {
    use std::io::IsTerminal;
    let default = if verbose {
        "info,parlance=debug,parlance_server=debug,parlance_engine=debug,parlance_upstream=debug,llama-cpp-2=info"
    } else {
        "warn,llama-cpp-2=error,parlance=info,parlance_server=info,parlance_engine=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLANCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        // Colour codes only where a person reads them; files and journald get plain text.
        LogFormat::Text => {
            let colours = std::io::stderr().is_terminal();
            builder
                .with_ansi(colours)
                .with_writer(crate::logwriter::Escaping { colours })
                .try_init()
        }
    };
    // Only the first subscriber of a process is installed (tests start several servers
    // in one process): later ones log through it.
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
}

/// The template text `--chat-template` / `--chat-template-file` ask for.
fn chat_template(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.chat_template_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--chat-template-file {}", path.display()))?;
        return Ok(Some(text));
    }
    match args.chat_template.as_deref() {
        None => Ok(None),
        Some("chatml") => Ok(Some(parlance_core::template::CHATML_TEMPLATE.to_string())),
        Some(t) if t.contains("{%") || t.contains("{{") => Ok(Some(t.to_string())),
        Some(other) => bail!(
            "--chat-template {other:?}: not a Jinja template, and the only built-in name is `chatml`; \
             pass the template text or --chat-template-file FILE"
        ),
    }
}

/// The `-ngl` value for the model at position `i`: its own, or the single one for all.
pub(crate) fn ngl_at(values: &[i32], i: usize) -> Option<i32> {
    ngl_for_all(values).or_else(|| values.get(i).copied())
}

/// The `-ngl` value given once, for every model (catalog deployments included).
pub(crate) fn ngl_for_all(values: &[i32]) -> Option<i32> {
    match values {
        [one] => Some(*one),
        _ => None,
    }
}

/// A GPU build's `-ngl` for a model; negative means all (llama.cpp's default).
#[cfg_attr(
    not(feature = "local"),
    allow(dead_code, reason = "a gateway-only build loads no model")
)]
pub(crate) fn gpu_layers(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

/// Says when `-ngl` cannot take effect: no GPU backend in this build, or no GPU found.
fn note_gpu(args: &ServeArgs) {
    if args.n_gpu_layers.iter().all(|&n| n == 0) {
        return;
    }
    if !cfg!(any(feature = "cuda", feature = "vulkan", feature = "metal")) {
        let given: Vec<String> = args.n_gpu_layers.iter().map(i32::to_string).collect();
        eprintln!(
            "note: -ngl {} ignored: this build has no GPU backend (build with --features vulkan, cuda or metal); running on the CPU",
            given.join(",")
        );
        return;
    }
    #[cfg(feature = "local")]
    if parlance_engine::gpu_devices().is_empty() {
        eprintln!("note: -ngl given but no GPU device was found; running on the CPU");
    }
}

/// A server ready to answer: models loaded, state assembled, the port bound. Built
/// by `build`, run by `serve`; `parlance serve` and `parlance chat -m` both use it.
pub(crate) struct Built {
    runtime: tokio::runtime::Runtime,
    server: parlance_server::Server,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.verbose, args.log_format);
    build(args)?.serve(signals())?;
    use std::io::Write;
    // Nothing left to report a failed flush to.
    std::io::stdout().flush().ok();
    // Engine threads may still be finishing a step: leave without the C++ static
    // destructors that would run under their feet.
    exit_now(0)
}

/// Loads what `args` name and binds the port (before loading anything: a busy port is
/// known in milliseconds, not after a model has loaded).
pub(crate) fn build(args: ServeArgs) -> anyhow::Result<Built> {
    note_gpu(&args);
    let template = chat_template(&args)?;
    let config = match &args.config {
        Some(path) => Some(Config::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let addr = format!("{}:{}", args.host, args.port);
    let listener =
        std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;

    let models = local_specs(&args, config.is_some())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // reqwest clients are built inside the runtime they will run on.
    let entered = runtime.enter();
    let mut router = Router::new();
    let mut keys = args.api_key.clone();
    // Local vision models fetch http(s) images with the same SSRF rules as providers.
    let images: Arc<dyn parlance_core::InlineImages> =
        catalog::image_fetcher(config.as_ref()).map_err(anyhow::Error::msg)?;
    // Made on first need: models on demand change how freed memory is given back.
    let shelf: std::cell::OnceCell<Arc<parlance_core::lazy::Shelf>> = std::cell::OnceCell::new();
    let settings: crate::models_dir::Settings =
        Arc::new((args.clone(), template.clone(), Arc::clone(&images)));
    if let Some(cfg) = &config {
        add_catalog(cfg, &settings, &shelf, &mut router, &mut keys)?;
    }
    for (spec, alias) in models {
        let (info, backend) = load_local(&args, &template, &spec, alias, &images, None)
            .map_err(anyhow::Error::msg)?;
        router.add(info, backend).map_err(anyhow::Error::msg)?;
    }
    let folder = match &args.models_dir {
        Some(dir) => Some(crate::models_dir::serve(
            dir,
            shelf.get_or_init(|| crate::models_dir::shelf(&args)),
            &settings,
            &mut router,
        )?),
        None => None,
    };
    let models = router.models();
    // An empty --models-dir is a start: models come with /api/pull.
    if models.is_empty() && args.models_dir.is_none() {
        bail!("nothing to serve: the config file names no models, no -m was given and --models-dir holds no GGUF");
    }
    let names: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    println!("serving {} model names: {}", names.len(), names.join(", "));

    let (accounts, mailer, oidc) = accounts(&args, config.as_ref())?;
    let mut server = Builder::new(router)
        .models_dir(folder.map(|f| f as Arc<dyn parlance_core::lazy::ModelFolder>))
        .api_keys(keys)
        .body_limit(args.body_limit)
        .cors_origins(args.cors_origin.clone())
        .accounts(accounts, mailer, oidc)
        .metrics(parlance_server::observe::install().map_err(anyhow::Error::msg)?)
        .limits(Limits {
            header_timeout: secs(args.header_timeout, "--header-timeout")?,
            max_connections: args.max_connections.max(1),
            shutdown_timeout: secs(args.shutdown_timeout, "--shutdown-timeout")?,
        });
    if let Some(tenancy) = open_store(&runtime, &args)? {
        server = server.tenancy(tenancy);
    }
    let server = server.build(listener);
    drop(entered);
    Ok(Built { runtime, server })
}

impl Built {
    /// The address the server listens on (the port, when 0 was asked for).
    pub(crate) fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.server.local_addr()
    }

    /// Serves until `stop` resolves, then finishes running requests and stores the
    /// usage rows still queued.
    pub(crate) fn serve(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        Ok(self.runtime.block_on(self.server.serve(stop))?)
    }
}

/// What to load and the public name of each -m / -hf model (the default model when
/// nothing else is given).
fn local_specs(
    args: &ServeArgs,
    has_config: bool,
) -> anyhow::Result<Vec<(LocalSpec, Option<String>)>> {
    let mut models: Vec<(LocalSpec, Option<String>)> = Vec::new();
    let hf_models = args
        .hf_repo
        .iter()
        .map(|r| crate::hub::download(r))
        .collect::<anyhow::Result<Vec<PathBuf>>>()?;
    if args.model.is_empty() && hf_models.is_empty() && !has_config && args.models_dir.is_none() {
        let Some(path) = default_model() else {
            bail!(
                "no model given (-m) and the default model is not at {DEFAULT_MODEL_FILE}; \
                 fetch it with `scripts/fetch-models.sh` or pass -m PATH.gguf"
            );
        };
        let alias = args
            .alias
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_MODEL_NAME.to_string());
        let spec = LocalSpec {
            path,
            n_gpu_layers: ngl_at(&args.n_gpu_layers, 0),
            mmproj: args.mmproj.first().cloned(),
            keep_alive: None,
        };
        models.push((spec, Some(alias)));
    } else {
        let given: Vec<PathBuf> = args.model.iter().cloned().chain(hf_models).collect();
        if args.alias.len() > given.len() {
            bail!(
                "{} --alias given for {} -m: each alias names the model at its position",
                args.alias.len(),
                given.len()
            );
        }
        if args.n_gpu_layers.len() > given.len().max(1) {
            bail!(
                "{} --n-gpu-layers values given for {} -m: give one for all, or one per model in order",
                args.n_gpu_layers.len(),
                given.len()
            );
        }
        if args.mmproj.len() > given.len().max(1) {
            bail!(
                "{} --mmproj given for {} -m: each projector belongs to the model at its position",
                args.mmproj.len(),
                given.len()
            );
        }
        for (i, path) in given.into_iter().enumerate() {
            let spec = LocalSpec {
                path,
                n_gpu_layers: ngl_at(&args.n_gpu_layers, i),
                mmproj: args.mmproj.get(i).cloned(),
                keep_alive: None,
            };
            models.push((spec, args.alias.get(i).cloned()));
        }
    }
    Ok(models)
}

/// Sign-up, prepaid balances, mail and single sign-on, from the config and the flags.
fn accounts(args: &ServeArgs, config: Option<&Config>) -> anyhow::Result<Accounts> {
    let mut settings = config.map(|c| c.accounts.clone()).unwrap_or_default();
    if let Some(mode) = args.signup {
        settings.signup = Some(mode);
    }
    if args.prepaid {
        settings.prepaid = true;
    }
    if args.public_url.is_some() {
        settings.public_url = args.public_url.clone();
    }
    let mut mailer = None;
    if let Some(smtp) = &settings.smtp {
        if settings.public_url.is_none() {
            bail!("[accounts.smtp] needs --public-url: links in mail must be whole addresses");
        }
        mailer = Some(Arc::new(
            parlance_server::Mailer::new(smtp).map_err(anyhow::Error::msg)?,
        ));
    }
    let mut oidc = None;
    if let Some(o) = settings.oidc.clone() {
        if args.db == "none" {
            bail!("[accounts.oidc] needs a store: drop --db none");
        }
        oidc = Some(Arc::new(
            parlance_server::Oidc::new(o).map_err(anyhow::Error::msg)?,
        ));
    }
    if args.db == "none" && settings.signup() != parlance_tenancy::accounts::SignupMode::Closed {
        bail!("--signup needs a store: drop --db none");
    }
    Ok((settings, mailer, oidc))
}

/// The accounts' settings, mailer and single sign-on provider.
type Accounts = (
    parlance_server::AccountSettings,
    Option<Arc<parlance_server::Mailer>>,
    Option<Arc<parlance_server::Oidc>>,
);

/// The key, limit and usage store (`--db`); `None` for `--db none`.
fn open_store(
    runtime: &tokio::runtime::Runtime,
    args: &ServeArgs,
) -> anyhow::Result<Option<Arc<parlance_tenancy::Tenancy>>> {
    if args.db != "none" {
        let admin_key = args.admin_key.clone().filter(|k| !k.trim().is_empty());
        // The default store lives beside the config file when there is one.
        let db = match (&args.config, args.db == crate::tenancy_cli::DEFAULT_DB) {
            (Some(cfg), true) => {
                let dir = cfg
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                format!("sqlite://{}", dir.join("parlance.db").display())
            }
            _ => args.db.clone(),
        };
        let tenancy = runtime
            .block_on(parlance_tenancy::Tenancy::open_with(
                &db,
                admin_key,
                args.redis.as_deref(),
                args.secret.clone().filter(|s| !s.trim().is_empty()),
            ))
            .map_err(anyhow::Error::msg)?;
        runtime.block_on(tenancy.refresh_has_keys());
        Ok(Some(tenancy))
    } else if args.admin_key.is_some() {
        bail!("--admin-key needs a store: drop --db none");
    } else {
        Ok(None)
    }
}

/// The config file's models, local ones loaded now (or on demand with a keep_alive),
/// and its API keys.
fn add_catalog(
    cfg: &Config,
    settings: &crate::models_dir::Settings,
    shelf: &std::cell::OnceCell<Arc<parlance_core::lazy::Shelf>>,
    router: &mut Router,
    keys: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (args, template, images) = (&settings.0, &settings.1, &settings.2);
    let env = |name: &str| std::env::var(name).ok();
    // A deployment's own n_gpu_layers, else the one -ngl given for all.
    let all = ngl_for_all(&args.n_gpu_layers);
    let mut loader = |spec: &LocalSpec| {
        let spec = LocalSpec {
            n_gpu_layers: spec.n_gpu_layers.or(all),
            ..spec.clone()
        };
        let Some(keep) = &spec.keep_alive else {
            return load_local(args, template, &spec, None, images, None);
        };
        let keep: parlance_core::lazy::KeepAlive =
            keep.parse().map_err(|e| format!("keep_alive: {e}"))?;
        let name = spec
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shelf = shelf.get_or_init(|| crate::models_dir::shelf(args));
        let files = [spec.path.clone()];
        let (info, lazy) =
            crate::models_dir::lazy_local(shelf, settings, &name, spec.clone(), &files, keep, None);
        Ok((info, Arc::new(lazy) as Arc<dyn parlance_core::Backend>))
    };
    catalog::build(cfg, &env, &mut loader, router).map_err(anyhow::Error::msg)?;
    keys.extend(cfg.server.api_keys.iter().cloned());
    if let Some(var) = &cfg.server.api_keys_env {
        let v = std::env::var(var.get_ref())
            .with_context(|| format!("[server] api_keys_env: {} is not set", var.get_ref()))?;
        keys.extend(v.split(',').map(str::to_string));
    }
    Ok(())
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(unix)]
type Term = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Term = Option<()>;

/// The next Ctrl-C or SIGTERM.
async fn next_signal(term: &mut Term) {
    #[cfg(unix)]
    let term_fut = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term_fut = {
        let _ = term;
        std::future::pending::<()>()
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term_fut => {},
    }
}

/// Ends the process without running exit handlers: `exit` would run llama.cpp's static
/// destructors while an engine thread is still decoding, which can crash (measured: a
/// SIGSEGV now and then instead of the exit code).
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` takes no pointers and does not return; skipping atexit handlers
    // and destructors is the point.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    #[allow(
        clippy::disallowed_methods,
        reason = "as above, where `_exit` is missing"
    )]
    std::process::exit(code)
}

/// Resolves at the first Ctrl-C or SIGTERM; a second one exits the process at once.
async fn signals() {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    parlance_core::task::spawn("signals", async move {
        #[cfg(unix)]
        let mut term: Term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        #[cfg(not(unix))]
        let mut term: Term = None;
        next_signal(&mut term).await;
        eprintln!(
            "shutdown requested: finishing running requests (send the signal again to exit now)"
        );
        // The receiver lives until the server stops: nothing to handle.
        first_tx.send(()).ok();
        next_signal(&mut term).await;
        eprintln!("second signal: exiting now");
        exit_now(130);
    });
    // An error only if the signal task ended without a signal: stop then too.
    first_rx.await.ok();
}
