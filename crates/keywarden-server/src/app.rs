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
use keywarden_store::limiter::redis::{RedisConfig, RedisLimiter};
use keywarden_store::limiter::{Limiter, LocalLimiter};
use keywarden_store::pepper::{load_or_create_pepper_file, pepper_path_for};
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

/// Where the generated master key of recoverable test secrets lives: beside an embedded
/// database, as `<database file>.master_key`, when recoverable test secrets are on and
/// neither `keys.master_key_file` nor the variable `keys.master_key_env` names gives one.
fn generated_master_key_path(config: &Config) -> Option<std::path::PathBuf> {
    let k = &config.keys;
    let from_env = !k.master_key_env.is_empty()
        && std::env::var(&k.master_key_env).is_ok_and(|v| !v.trim().is_empty());
    if !k.recoverable_test_secrets || !k.master_key_file.is_empty() || from_env {
        return None;
    }
    pepper_path_for(&config.store.database_url).map(|p| p.with_extension("master_key"))
}

/// Makes sure recoverable test secrets have a master key: with none configured and the
/// embedded store, one is generated on first start and kept beside the database (mode
/// 0600, never overwritten), like the pepper, and `keys.master_key_file` names it.
pub fn resolve_master_key(config: &mut Config) -> Result<(), ConfigError> {
    if let Some(path) = generated_master_key_path(config) {
        let (_, created) = load_or_create_pepper_file(&path)
            .map_err(|e| ConfigError::new("keys.master_key_file", e.to_string()))?;
        if created {
            tracing::info!(path = %path.display(), "generated a new master key file for recoverable test secrets (mode 0600); back it up with the database");
        }
        config.keys.master_key_file = path.display().to_string();
    }
    Ok(())
}

/// Like [`resolve_master_key`], but never creates a file: for validating, which must not
/// change anything. A master key file still to be generated counts as valid.
pub fn resolve_master_key_readonly(config: &mut Config) {
    if let Some(path) = generated_master_key_path(config) {
        if path.exists() {
            config.keys.master_key_file = path.display().to_string();
        } else {
            // Generated on first start: nothing about it to check now.
            config.keys.recoverable_test_secrets = false;
        }
    }
}

/// Validates `config` as `serve` would start on it, without writing anything: the pepper
/// and the master key are read when they exist and taken as generated otherwise.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    let mut c = config.clone();
    resolve_master_key_readonly(&mut c);
    let pepper = resolve_pepper_readonly(&c)?;
    Settings::from_config(c, pepper)?;
    Ok(())
}

impl Service {
    /// Flushes pending writes without serving (for CLI commands).
    pub async fn close(self) {
        self.writer.shutdown().await;
    }

    /// Builds the service from a loaded configuration.
    pub async fn build(mut config: Config, clock: Arc<dyn Clock>) -> Result<Service, StartError> {
        // Validate everything before touching the disk, so a bad config leaves no new
        // pepper or master key file behind.
        check_config(&config)?;
        let pepper = resolve_pepper(&config)?;
        resolve_master_key(&mut config)?;
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
                decision_retention: decision_retention(st.analytics_retention_days),
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
            let front = crate::front::Front::for_public(state);
            let router = public_router(state.clone(), front.as_ref().and_then(|f| f.gateway()));
            App::new(router, front)
        };
        let admin_app = || {
            let front = crate::front::Front::for_admin(state);
            App::new(admin_router(state.clone()), Some(front))
        };
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
        let hooks =
            state.settings.config.webhooks.enabled.then(|| {
                tokio::spawn(crate::webhooks::Webhooks::new(state.clone()).run(signal(&tx)))
            });
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = tx.send(());
        let served = workers.wait().await;
        if let Some(h) = hooks {
            let _ = h.await;
        }
        self.writer.shutdown().await;
        tracing::info!("writer flushed; bye");
        served
    }
}

/// How long decision counts are kept per granularity: daily ones `days`, minute and
/// hourly ones their defaults but never longer.
fn decision_retention(days: u64) -> [Duration; 3] {
    let cap = Duration::from_secs(days.max(1).saturating_mul(86_400));
    let [minute, hour, _] = keywarden_store::writer::DEFAULT_DECISION_RETENTION;
    [minute.min(cap), hour.min(cap), cap]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let db = dir.join("kw.db");
        let text = format!(
            "[server]\nroot_keys = [\"root-key-0123456789\"]\n[store]\ndatabase_url = \"sqlite://{}\"\n[keys]\nrecoverable_test_secrets = true\nmaster_key_env = \"KEYWARDEN_UNIT_TEST_NO_SUCH_VARIABLE\"\n{extra}",
            db.display()
        );
        Config::from_parts(&text, &[]).unwrap()
    }

    #[test]
    fn a_master_key_is_generated_beside_the_database_once_and_checking_makes_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), "");
        let path = dir.path().join("kw.db.master_key");
        // Checking takes it as generated and writes nothing.
        check_config(&c).unwrap();
        assert!(!path.exists());
        resolve_master_key(&mut c).unwrap();
        assert_eq!(c.keys.master_key_file, path.display().to_string());
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // The next start reads the same key.
        let mut again = config(dir.path(), "");
        resolve_master_key(&mut again).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        check_config(&again).unwrap();
        let pepper = resolve_pepper(&again).unwrap();
        let (s, _) = Settings::from_config(again, pepper).unwrap();
        assert!(s.secretbox.is_some());
        // A configured file is used as it is.
        let mut own = config(dir.path(), "master_key_file = \"/nonexistent/key\"\n");
        resolve_master_key(&mut own).unwrap();
        assert_eq!(own.keys.master_key_file, "/nonexistent/key");
        assert!(check_config(&own).is_err());
    }

    #[test]
    fn required_applications_exclude_default_sets() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "require_app = true\ndefault_sets = true\n");
        let e = check_config(&c).unwrap_err();
        assert_eq!(e.field, "keys.default_sets", "{e}");
        let c = config(dir.path(), "require_app = true\n");
        check_config(&c).unwrap();
    }

    #[test]
    fn an_unset_global_keys_variable_means_no_global_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), "");
        c.auth.global_keys_env = "KEYWARDEN_UNIT_TEST_NO_SUCH_VARIABLE".into();
        check_config(&c).unwrap();
    }
}
