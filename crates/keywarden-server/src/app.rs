//! Building and running the service: configuration → store → verifier → two listeners,
//! with graceful shutdown (in-flight requests finish, then the writer flushes).

use crate::config::{Config, ConfigError};
use crate::routes::{admin_router, public_router};
use crate::settings::Settings;
use crate::state::AppState;
use crate::workers::{fit_open_files, App, ConnLimits, Workers};
use keywarden_core::hashing::generate_pepper;
use keywarden_core::model::HashScheme;
use keywarden_core::{Clock, Secret};
use keywarden_store::cache::{CacheConfig, KeyCache};
use keywarden_store::limiter::{Limiter, LocalLimiter};
use keywarden_store::pepper::{load_or_create_pepper_file, pepper_path_for};
use keywarden_store::redis_limiter::{RedisConfig, RedisLimiter};
use keywarden_store::verifier::Verifier;
use keywarden_store::writer::{Writer, WriterConfig, WriterHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A built service, ready to serve.
#[derive(Debug)]
pub struct Service {
    /// The shared state.
    pub state: AppState,
    writer: WriterHandle,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] keywarden_store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Resolves the pepper: configured, from `pepper_file`, or generated beside an embedded
/// database on first start. Fast schemes other than HMAC do not need one.
pub fn resolve_pepper(config: &Config) -> Result<Option<Secret>, ConfigError> {
    let st = &config.store;
    if !st.pepper.is_empty() {
        return Ok(Some(Secret::new(st.pepper.as_str())));
    }
    let needs = config.keys.hash == HashScheme::HmacSha256.as_str()
        || !config.auth.app_secret_header.is_empty();
    if !st.pepper_file.is_empty() {
        let (p, _) = load_or_create_pepper_file(Path::new(&st.pepper_file))
            .map_err(|e| ConfigError::new("store.pepper_file", e.to_string()))?;
        return Ok(Some(p));
    }
    if st.database_url.contains(":memory:") {
        return Ok(Some(generate_pepper()));
    }
    match pepper_path_for(&st.database_url) {
        Some(path) => {
            let (p, created) = load_or_create_pepper_file(&path)
                .map_err(|e| ConfigError::new("store.pepper_file", e.to_string()))?;
            if created {
                tracing::info!(path = %path.display(), "generated a new pepper file (mode 0600); back it up with the database");
            }
            Ok(Some(p))
        }
        None if needs => Err(ConfigError::new(
            "store.pepper",
            "hmac-sha256 with PostgreSQL needs a pepper: set KEYWARDEN_PEPPER or store.pepper_file",
        )),
        None => Ok(Some(generate_pepper())),
    }
}

/// Like [`resolve_pepper`], but never creates a file: for `config check`, which must not
/// change anything. A missing pepper file is reported as one that would be generated.
pub fn resolve_pepper_readonly(config: &Config) -> Result<Option<Secret>, ConfigError> {
    let st = &config.store;
    if !st.pepper.is_empty() {
        return Ok(Some(Secret::new(st.pepper.as_str())));
    }
    let file = if st.pepper_file.is_empty() {
        pepper_path_for(&st.database_url)
    } else {
        Some(std::path::PathBuf::from(&st.pepper_file))
    };
    match file {
        Some(path) if path.exists() => load_or_create_pepper_file(&path)
            .map(|(p, _)| Some(p))
            .map_err(|e| ConfigError::new("store.pepper_file", e.to_string())),
        _ => Ok(Some(generate_pepper())),
    }
}

impl Service {
    /// Flushes pending writes without serving (for CLI commands).
    pub async fn close(self) {
        self.writer.shutdown().await;
    }

    /// Builds the service from a loaded configuration.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Service, StartError> {
        // Validate everything before touching the disk, so a bad config leaves no new
        // pepper file behind.
        Settings::from_config(config.clone(), resolve_pepper_readonly(&config)?)?;
        let pepper = resolve_pepper(&config)?;
        let (settings, vcfg) = Settings::from_config(config, pepper)?;
        let store = keywarden_store::open_with(
            &settings.config.store.database_url,
            Duration::from_millis(settings.config.store.timeout_ms),
        )
        .await?;
        let st = &settings.config.store;
        let (usage_flush_interval, usage_durability) = crate::settings::usage_writer(st)?;
        let cache = KeyCache::new(CacheConfig {
            max_keys: st.cache_max_keys.max(1),
            ttl: Duration::from_secs(st.cache_ttl_seconds.max(1)),
            ..CacheConfig::default()
        });
        let (writer, handle) = Writer::spawn(
            store.clone(),
            WriterConfig {
                activity_retain_per_key: st.activity_retain_per_key,
                usage_flush_interval,
                usage_durability,
                ..WriterConfig::default()
            },
        );
        let local = LocalLimiter::new(settings.lockout);
        let limiter = if st.redis_url.is_empty() {
            Limiter::local(local)
        } else {
            let cfg = RedisConfig {
                timeout: Duration::from_millis(st.redis_timeout_ms.clamp(1, 60_000)),
                ..RedisConfig::new(st.redis_url.as_str(), st.redis_prefix.as_str())
            };
            let redis = RedisLimiter::connect(cfg)
                .await
                .map_err(|e| ConfigError::new("store.redis_url", e.to_string()))?;
            Limiter::shared(local, redis)
        };
        let verifier = Arc::new(Verifier::new(
            vcfg,
            store,
            cache,
            limiter,
            writer,
            clock.clone(),
        ));
        Ok(Service {
            state: AppState::new(settings, verifier, clock),
            writer: handle,
        })
    }

    /// Binds both listeners from the configuration.
    pub async fn bind(&self) -> Result<(TcpListener, TcpListener), StartError> {
        let s = &self.state.settings;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        Ok((bind(s.public_listen).await?, bind(s.admin_listen).await?))
    }

    /// Serves on already-bound listeners until `shutdown` resolves, then lets in-flight
    /// requests finish and flushes the writer.
    pub async fn run(
        self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if self.state.settings.root_keys.is_empty() {
            tracing::warn!(
                "no root key is configured: the admin API refuses every call. Set KEYWARDEN_ROOT_KEY (at least 16 characters) to use it"
            );
        }
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let signal = |tx: &tokio::sync::broadcast::Sender<()>| {
            let mut rx = tx.subscribe();
            async move {
                let _ = rx.recv().await;
            }
        };
        tracing::info!(
            public = %public.local_addr()?,
            admin = %admin.local_addr()?,
            "keywarden listening"
        );
        let state = &self.state;
        // Each worker its own gateway (and so its own upstream connections), shared by the
        // front that takes the gateway's requests and the router's fallback.
        let public_app = || {
            let front = crate::gateway::Front::for_state(state);
            let router = public_router(state.clone(), front.as_ref().map(|f| f.gateway()));
            App::new(router, front)
        };
        let admin_app = || App::from(admin_router(state.clone()));
        let server = &state.settings.config.server;
        let (public_max, admin_max) =
            fit_open_files(server.max_connections, server.admin_max_connections);
        let limits = |max_connections| ConnLimits {
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            max_connections,
        };
        let workers = Workers::start(
            vec![
                (public, &public_app, limits(public_max)),
                (admin, &admin_app, limits(admin_max)),
            ],
            crate::workers::default_workers(),
            || signal(&tx),
        )?;
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = tx.send(());
        let served = workers.wait().await;
        self.writer.shutdown().await;
        tracing::info!("writer flushed; bye");
        served
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
