//! The service on a fresh PostgreSQL database, for suites that must hold on both stores.
//! Needs `KEYWARDEN_TEST_DATABASE_URL` (a server the tests may create databases on).

use super::{spawn_config, TestApp, ROOT};
use keywarden_server::config::Config;

/// A service on its own PostgreSQL database; drop it with [`PgApp::stop`].
pub struct PgApp {
    /// The running service.
    pub app: TestApp,
    admin_url: String,
    database: String,
}

/// Starts the service on a fresh PostgreSQL database, or `None` when
/// `KEYWARDEN_TEST_DATABASE_URL` is not set.
pub async fn spawn_pg_app() -> Option<PgApp> {
    spawn_pg_app_with("").await
}

/// [`spawn_pg_app`] with extra TOML laid over the defaults.
pub async fn spawn_pg_app_with(toml: &str) -> Option<PgApp> {
    let admin_url = std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let database = format!("kw_srv_{}", ulid::Ulid::new().to_string().to_lowercase());
    let pool = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            with_database(&admin_url, &database),
        ),
        ("KEYWARDEN_PEPPER".to_string(), "ab".repeat(32)),
    ];
    let mut config = Config::from_parts(toml, &vars).expect("test config");
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let app = spawn_config(config, tempfile::tempdir().unwrap()).await;
    Some(PgApp {
        app,
        admin_url,
        database,
    })
}

impl PgApp {
    /// Stops the service and drops its database.
    pub async fn stop(self) {
        self.app.stop().await;
        if let Ok(pool) = sqlx::PgPool::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .execute(&pool)
            .await;
            pool.close().await;
        }
    }
}

/// `postgres://user@host:port/db?query` with the database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = base[authority..]
        .find('/')
        .map_or(base, |slash| &base[..authority + slash]);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
