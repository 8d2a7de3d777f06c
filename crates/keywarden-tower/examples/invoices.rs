//! An axum API protected by Keywarden in process.
//!
//! ```text
//! cargo run -p keywarden-tower --example invoices [-- --database-url URL] [--listen ADDR]
//! ```
//!
//! Without `--database-url` it runs on a SQLite file in a temporary directory, removed on
//! exit. At startup it creates an account with three test keys, prints them (once, as the
//! admin API would) with `curl` lines to try, and serves until Ctrl-C.

#[path = "invoices/app.rs"]
mod app;

use app::NewKey;
use keywarden_core::model::{KeyType, Mode};
use std::error::Error;
use std::net::SocketAddr;

const USAGE: &str = "usage: invoices [--database-url URL] [--listen ADDR]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut database_url = None;
    let mut listen = "127.0.0.1:3000".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => database_url = Some(args.next().ok_or(USAGE)?),
            "--listen" => listen = args.next().ok_or(USAGE)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    // The temporary directory lives until the end of `main`; dropping it removes it.
    let (database_url, _temp) = match database_url {
        Some(url) => (url, None),
        None => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("keywarden.db").display());
            (url, Some(dir))
        }
    };

    let kw = app::keywarden(&database_url).await?;
    let account = app::create_account(&kw, "Acme Corp").await?;
    let key = |name: &str, key_type: KeyType, scopes: &[&str]| NewKey {
        name: name.into(),
        mode: Mode::Test,
        key_type,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        rate_limit: None,
        ip_allowlist: Vec::new(),
        app_id: None,
    };
    let reader = app::issue_key(
        &kw,
        &account,
        key("reader", KeyType::Secret, &["invoices:read"]),
    )
    .await?;
    let writer = app::issue_key(
        &kw,
        &account,
        key("writer", KeyType::Secret, &["invoices:write"]),
    )
    .await?;
    let public = app::issue_key(&kw, &account, key("browser", KeyType::Publishable, &[])).await?;

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (r, w, p) = (
        reader.token.expose(),
        writer.token.expose(),
        public.token.expose(),
    );
    println!("Keywarden invoices example on {base} (database {database_url})");
    println!(
        "Account {} has three test keys, shown this once:",
        account.id
    );
    for (issued, note) in [
        (&reader, "invoices:read"),
        (&writer, "invoices:write (includes invoices:read)"),
        (&public, "publishable: no secret scopes"),
    ] {
        let (id, name) = (&issued.record.id, &issued.record.name);
        println!("  {name:<8} {id}  {}  {note}", issued.token.expose());
    }
    println!();
    println!("Try:");
    println!("  curl -i {base}/");
    println!("  curl -i {base}/me -H 'X-API-Key: {p}'");
    println!("  curl -i {base}/invoices -H 'Authorization: Bearer {r}'");
    println!(
        "  curl -i -X POST {base}/invoices -H 'Authorization: Bearer {w}' \
         -H 'Content-Type: application/json' -d '{{\"customer\":\"Globex\",\"amount_cents\":12500}}'"
    );
    println!("  curl -i -X POST {base}/invoices -H 'Authorization: Bearer {r}'   # 403 insufficient_scope");
    println!(
        "  curl -i {base}/invoices                                          # 401 missing_api_key"
    );

    let router = app::app(&kw)?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Last use and activity are written in batches; flush what is pending before exiting.
    kw.shutdown().await;
    Ok(())
}
