//! Assembles a server from its models and settings: the state every handler shares, the
//! background task that keeps it current, the routes, the bound listener and its
//! connection limits. `parlance serve` and `parlance chat -m` both build through it.

use crate::account::mail::Mailer;
use crate::account::oidc::Oidc;
use crate::listen::{self, Limits};
use crate::{build_router, AccountSettings, AppState, Shutdown};
use parlance_core::lazy::ModelFolder;
use parlance_core::Router;
use parlance_tenancy::Tenancy;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often a server re-reads whether its store holds keys (the CLI or another replica
/// may have made the first one).
const KEYS_REFRESH: Duration = Duration::from_secs(2);

/// A server's parts before it is bound; see [`Builder::build`].
pub struct Builder {
    state: AppState,
    limits: Limits,
}

impl Builder {
    /// A server of `router`'s models: open, no store, default limits.
    pub fn new(router: Router) -> Self {
        Builder {
            state: AppState::new(router),
            limits: Limits::default(),
        }
    }

    /// Static keys (`--api-key`, the config file's); blank ones are dropped.
    pub fn api_keys(mut self, keys: impl IntoIterator<Item = String>) -> Self {
        self.state.api_keys = keys
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        self
    }

    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.state.body_limit = bytes;
        self
    }

    /// Origins browsers may call from; `*` for any.
    pub fn cors_origins(mut self, origins: Vec<String>) -> Self {
        self.state.cors_origins = origins;
        self
    }

    /// The folder Ollama's `/api/pull` and `/api/delete` add to and take from.
    pub fn models_dir(mut self, folder: Option<Arc<dyn ModelFolder>>) -> Self {
        self.state.models_dir = folder;
        self
    }

    /// Keys, limits, budgets and the usage meter.
    pub fn tenancy(mut self, tenancy: Arc<Tenancy>) -> Self {
        self.state.tenancy = Some(tenancy);
        self
    }

    /// Sign-up, the self-service plan, mail and single sign-on.
    pub fn accounts(
        mut self,
        settings: AccountSettings,
        mailer: Option<Arc<Mailer>>,
        oidc: Option<Arc<Oidc>>,
    ) -> Self {
        self.state.accounts = settings;
        self.state.mailer = mailer;
        self.state.oidc = oidc;
        self
    }

    /// Renders `/metrics` (the process-wide recorder, see `observe::install`).
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.state.metrics = Some(handle);
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The server on `listener` (bound by the caller before models load, so a busy port
    /// is known in milliseconds). Starts the store's background task, so it runs inside
    /// the Tokio runtime that will serve.
    pub fn build(self, listener: std::net::TcpListener) -> Server {
        let Builder { state, limits } = self;
        if let Some(t) = &state.tenancy {
            t.set_prepaid(state.accounts.prepaid);
            // Keys made by the CLI or another replica close an open server within seconds.
            let refresh = Arc::clone(t);
            parlance_core::task::spawn("refresh whether keys exist", async move {
                loop {
                    tokio::time::sleep(KEYS_REFRESH).await;
                    refresh.refresh_has_keys().await;
                }
            });
        }
        let shutdown = state.shutdown.clone();
        let tenancy = state.tenancy.clone();
        Server {
            listener,
            app: build_router(Arc::new(state)),
            limits,
            shutdown,
            tenancy,
        }
    }
}

/// A server ready to answer: state assembled, routes built, the port bound.
pub struct Server {
    listener: std::net::TcpListener,
    app: crate::App,
    limits: Limits,
    shutdown: Shutdown,
    tenancy: Option<Arc<Tenancy>>,
}

impl Server {
    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then lets running requests finish and stores the
    /// usage rows still queued.
    pub async fn serve(self, stop: impl Future<Output = ()>) -> std::io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        println!("listening on http://{}", listener.local_addr()?);
        listen::serve(listener, self.app, self.limits, self.shutdown, stop).await;
        if let Some(t) = self.tenancy {
            // Rows of requests that just ended (cancelled by the deadline) are stored.
            if tokio::time::timeout(Duration::from_secs(5), t.recorder.flush())
                .await
                .is_err()
            {
                eprintln!("usage rows still unwritten after 5 s; stopping without them");
            }
        }
        println!("stopped");
        Ok(())
    }
}
