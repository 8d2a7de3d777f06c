//! Command-line parsing and the commands themselves. Management commands work on the
//! configured store directly, print human-readable tables by default and JSON with `--json`.

use crate::profiles::{Profile, PROFILES};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use keywarden_core::model::{AccountStatus, AppEnvironment, KeyType, Mode, Role};
use keywarden_core::SystemClock;
use keywarden_server::app::{shutdown_signal, Service};
use keywarden_server::config::{self, Config, INIT_TEMPLATE};
use keywarden_server::manage::{Actor, Manager, NewKey};
use keywarden_server::manage_apps::{AppManager, AppPatch, IssuedKey, NewApp};
use keywarden_server::manage_webhooks::{NewWebhook, Owner, WebhookManager, WebhookPatch};
use keywarden_server::views;
use keywarden_server::views::{Webhook as WebhookView, WebhookWithSecret};
use keywarden_store::verifier::VerifyRequest;
use keywarden_store::{EventFilter, Page};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// Keywarden: a self-hosted API-key service.
#[derive(Debug, Parser)]
#[command(name = "keywarden", version, about)]
pub struct Args {
    /// The config file (default: $KEYWARDEN_CONFIG, else ./keywarden.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Run on a built-in profile instead of a config file (`keywarden profiles` lists
    /// them); environment overrides still apply.
    #[arg(long, global = true, conflicts_with = "config")]
    pub profile: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the public and admin listeners.
    Serve,
    /// Write a commented starting config (with --profile, that profile's file).
    Init {
        /// Where to write it.
        #[arg(default_value = "keywarden.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// List the built-in profiles, one per line.
    Profiles,
    /// Apply database migrations.
    Migrate,
    /// Configuration tools.
    Config {
        /// What to do with the config.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage accounts.
    Accounts {
        /// What to do.
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Manage keys.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage third-party applications.
    Apps {
        /// What to do.
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage webhook endpoints (docs/webhooks.md).
    Webhooks {
        /// What to do.
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// List audit events, newest first.
    Events {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        /// Only this type (or family like `key.*`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Find this deployment's keys (the configured template and the legacy ones) in files
    /// and directories, offline, each verified by its checksum. Prints file:line:column and
    /// the key's displayable start, never the key. Exits 1 when it finds one, 0 otherwise:
    /// usable as a pre-commit hook or a CI step (docs/leaked-keys.md).
    Scan {
        /// Files and directories to search (`.git` directories and binary files are skipped).
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Also hand what was found to the configured store's leak policy (revoke or
        /// notify, as `leaks.action_live` / `leaks.action_test` say).
        #[arg(long)]
        report: bool,
        /// Threads to search with (default: one per CPU).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Check a key as the service would.
    Verify {
        /// The key.
        token: String,
        /// Required scopes.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The client IP.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
    },
}

/// `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; its signing secret is printed once.
    Create {
        /// Where events are POSTed.
        #[arg(long)]
        url: String,
        /// Event types (repeat or comma-separate; `key.*` for a family). Default: all.
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
        /// Only this account's events.
        #[arg(long)]
        account: Option<String>,
        /// Only this mode's events.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List endpoints.
    List,
    /// Show one endpoint.
    Show {
        /// Its id.
        id: String,
    },
    /// Change an endpoint.
    Update {
        /// Its id.
        id: String,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        /// New event types (repeat or comma-separate).
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
        /// Receive every event type again.
        #[arg(long, conflicts_with = "events")]
        all_events: bool,
        /// Enable (true) or disable (false).
        #[arg(long)]
        enabled: Option<bool>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an endpoint and its delivery log.
    Delete {
        /// Its id.
        id: String,
    },
    /// A new signing secret, printed once; the previous one keeps signing for
    /// `webhooks.secret_overlap_hours`.
    RotateSecret {
        /// Its id.
        id: String,
    },
    /// The delivery log, newest first.
    Deliveries {
        /// The endpoint's id.
        id: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Send a delivery again.
    Redeliver {
        /// The endpoint's id.
        id: String,
        /// The delivery's id.
        delivery: String,
    },
    /// Queue a `webhook.test` event for the endpoint (sent by the running service).
    Test {
        /// Its id.
        id: String,
    },
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and print the effective one, secrets redacted.
    Check,
}

/// `accounts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// Its plan.
        #[arg(long)]
        plan: Option<String>,
        /// pending, active or suspended.
        #[arg(long)]
        status: Option<AccountStatus>,
    },
    /// List accounts.
    List {
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one account.
    Show {
        /// Its id.
        id: String,
    },
    /// Mark an account active.
    Approve {
        /// Its id.
        id: String,
    },
    /// Change an account's plan.
    SetPlan {
        /// Its id.
        id: String,
        /// The plan.
        plan: String,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// The account.
        #[arg(long)]
        account: String,
        /// live or test.
        #[arg(long)]
        mode: Mode,
        /// A label.
        #[arg(long)]
        name: String,
        /// secret or publishable.
        #[arg(long = "type", default_value = "secret")]
        key_type: KeyType,
        /// owner, admin, developer or member.
        #[arg(long, default_value = "owner")]
        role: Role,
        /// Scopes (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// IPs or CIDRs allowed (repeat or comma-separate).
        #[arg(long = "ip", value_delimiter = ',')]
        ips: Vec<String>,
        /// Expiry, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        /// Where the key will be stored.
        #[arg(long, default_value = "")]
        description: String,
        /// The application the key belongs to, under the account's grant to it (its
        /// scopes default to, and stay within, the granted ones).
        #[arg(long = "app")]
        app_id: Option<String>,
    },
    /// List an account's keys.
    List {
        /// The account.
        #[arg(long)]
        account: String,
        /// Only this mode.
        #[arg(long)]
        mode: Option<Mode>,
    },
    /// Show a key.
    Show {
        /// Id or key_hash.
        id: String,
    },
    /// Rotate a key; the new secret is printed once.
    Rotate {
        /// Id or key_hash.
        id: String,
        /// Seconds the old secret keeps working.
        #[arg(long, default_value_t = 0)]
        grace: u64,
    },
    /// Revoke a key at once.
    Revoke {
        /// Id or key_hash.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the regular expression of the configured key template, for registering with
    /// secret-scanning programs (docs/leaked-keys.md).
    Pattern,
    /// Print a test key's secret again (needs keys.recoverable_test_secrets; live secrets
    /// are never recoverable).
    Reveal {
        /// Id or key_hash.
        id: String,
    },
}

/// `apps` subcommands.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an application; its production and sandbox secrets are printed once.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// What the integration does.
        #[arg(long, default_value = "")]
        description: String,
        /// A public page about it.
        #[arg(long)]
        url: Option<String>,
        /// Requested scopes (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List applications.
    List {
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one application.
    Show {
        /// Its id.
        id: String,
    },
    /// Change an application.
    Update {
        /// Its id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// A new URL (an empty one removes it).
        #[arg(long)]
        url: Option<String>,
        /// New requested scopes (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Replace one of an application's secrets; the new one is printed once and the old
    /// one stops working at once.
    RotateSecret {
        /// Its id.
        id: String,
        /// production or sandbox.
        #[arg(long)]
        environment: AppEnvironment,
    },
}

/// Sets up logging to stderr.
pub fn init_logging(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let default = if matches!(args.command, Command::Serve) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let profile = args.profile.as_deref().map(Profile::find).transpose()?;
    let path = config::locate(args.config.as_deref());
    let load = || -> anyhow::Result<Config> {
        Ok(match profile {
            Some(p) => Config::load_text(p.text)
                .with_context(|| format!("the built-in profile {}", p.name))?,
            None => Config::load(path.as_deref())?,
        })
    };
    let json_out = args.json;
    match args.command {
        Command::Init { path, force } => {
            if path.exists() && !force {
                bail!("{} exists; pass --force to overwrite it", path.display());
            }
            let text = profile.map_or(INIT_TEMPLATE, |p| p.text);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Command::Profiles => {
            if json_out {
                let list: Vec<Value> = PROFILES
                    .iter()
                    .map(|p| json!({ "name": p.name, "summary": p.summary() }))
                    .collect();
                println!("{}", Value::Array(list));
            } else {
                let w = PROFILES.iter().map(|p| p.name.len()).max().unwrap_or(0);
                for p in PROFILES {
                    println!("{:<w$}  {}", p.name, p.summary());
                }
            }
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let cfg = load()?;
            keywarden_server::app::check_config(&cfg)?;
            println!("# config is valid");
            print!("{}", cfg.redacted_toml());
            Ok(())
        }
        Command::Migrate => {
            let cfg = load()?;
            keywarden_store::migrate(&cfg.store.database_url).await?;
            println!("migrations applied to {}", redact(&cfg.store.database_url));
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Pattern,
        } => {
            let cfg = load()?;
            print_pattern(&cfg, json_out)
        }
        Command::Scan {
            paths,
            report,
            threads,
        } => {
            let cfg = load()?;
            let found = run_scan(cfg, &paths, report, threads, json_out).await?;
            if found {
                std::io::Write::flush(&mut std::io::stdout())?;
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve => {
            let cfg = load()?;
            let service = Service::build(cfg, Arc::new(SystemClock)).await?;
            let (public, admin) = service.bind().await?;
            service.run(public, admin, shutdown_signal()).await?;
            Ok(())
        }
        other => {
            let cfg = load()?;
            let service = Service::build(cfg, Arc::new(SystemClock)).await?;
            // Timestamps are written as the configuration says, as the API writes them.
            let style = service.state.settings.timestamps;
            let result =
                views::with_timestamp_style(style, manage(&service, other, json_out)).await;
            service.close().await;
            result
        }
    }
}

/// `keywarden keys pattern`.
fn print_pattern(cfg: &Config, json_out: bool) -> anyhow::Result<()> {
    let templates = keywarden_server::leaks::templates(cfg)?;
    let pattern = templates[0].regex();
    if json_out {
        println!(
            "{}",
            json!({ "template": templates[0].source(), "pattern": pattern })
        );
    } else {
        println!("{pattern}");
    }
    Ok(())
}

/// One finding as printed.
#[derive(serde::Serialize)]
struct FindingView {
    path: String,
    line: usize,
    column: usize,
    start: String,
    mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<keywarden_server::leaks::Label>,
}

/// `keywarden scan`: whether anything was found.
async fn run_scan(
    cfg: Config,
    paths: &[PathBuf],
    report: bool,
    threads: usize,
    json_out: bool,
) -> anyhow::Result<bool> {
    for p in paths {
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let finder = keywarden_core::leaks::KeyFinder::new(keywarden_server::leaks::templates(&cfg)?);
    let started = std::time::Instant::now();
    let scan = tokio::task::block_in_place(|| crate::scan::scan(&finder, paths, threads));
    let elapsed = started.elapsed();
    for e in &scan.errors {
        eprintln!("warning: {e}");
    }
    let mut views: Vec<FindingView> = scan
        .findings
        .iter()
        .map(|f| FindingView {
            path: f.path.display().to_string(),
            line: f.found.line,
            column: f.found.column,
            start: f.found.start.clone(),
            mode: f.found.mode,
            label: None,
        })
        .collect();
    if report && !scan.findings.is_empty() {
        use keywarden_server::leaks::{Leak, Leaks, Reporter};
        let service = Service::build(cfg, Arc::new(SystemClock)).await?;
        let leaks = Leaks::new(&service.state);
        let result = async {
            let mut to_act = Vec::new();
            for (f, view) in scan.findings.iter().zip(views.iter_mut()) {
                let c = leaks.classify(f.found.token.expose()).await?;
                view.label = Some(c.label());
                if let Some(key) = c.key {
                    to_act.push(Leak {
                        key,
                        source: Some(format!("{}:{}", view.path, view.line)),
                    });
                }
            }
            leaks.act(&Actor::root(None), Reporter::Scan, to_act).await
        }
        .await;
        service.close().await;
        let acted = result.map_err(|e| anyhow::anyhow!("{}: {:?}", e.code, e.detail))?;
        eprintln!("reported: {acted} active key(s) handed to the leak policy");
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        for v in &views {
            let mode = v.mode.map(|m| format!(" ({m})")).unwrap_or_default();
            let label = match v.label {
                Some(keywarden_server::leaks::Label::TruePositive) => " [active key]",
                Some(keywarden_server::leaks::Label::FalsePositive) => " [not an active key]",
                None => "",
            };
            println!(
                "{}:{}:{}: {}…{mode}{label}",
                v.path, v.line, v.column, v.start
            );
        }
    }
    eprintln!(
        "{} key(s) found in {} file(s) searched ({} binary skipped) in {:.2} s",
        views.len(),
        scan.files,
        scan.binary,
        elapsed.as_secs_f64()
    );
    Ok(!views.is_empty())
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((head, tail)) => match head.rsplit_once(':') {
            Some((user, _)) if user.contains("://") => format!("{user}:<redacted>@{tail}"),
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

async fn manage(service: &Service, cmd: Command, json_out: bool) -> anyhow::Result<()> {
    let state = &service.state;
    let m = Manager::new(state);
    let apps = AppManager::new(state);
    let actor = Actor::root(None);
    let fail = |e: keywarden_server::errors::ApiError| {
        anyhow::anyhow!(
            "{}: {}",
            e.code,
            e.detail
                .clone()
                .unwrap_or_else(|| e.code.message(Default::default()).to_string())
        )
    };
    match cmd {
        Command::Accounts { command } => match command {
            AccountsCommand::Create { name, plan, status } => {
                let (a, keys) = apps
                    .create_account(&actor, &name, plan, status, None)
                    .await
                    .map_err(fail)?;
                print_account(json_out, &a, &keys);
            }
            AccountsCommand::List { limit } => {
                let list = state
                    .store
                    .list_accounts(&Page {
                        after_id: None,
                        limit,
                    })
                    .await?;
                let rows: Vec<Value> = list.iter().map(|x| view(views::Account::from(x))).collect();
                print_many(json_out, &rows, &ACCOUNT_COLS);
            }
            AccountsCommand::Show { id } => {
                let a = m.account(&id).await.map_err(fail)?;
                print_one(json_out, &view(views::Account::from(&a)), &ACCOUNT_COLS);
            }
            AccountsCommand::Approve { id } => {
                let (a, keys) = apps
                    .set_status(&actor, &id, AccountStatus::Active)
                    .await
                    .map_err(fail)?;
                print_account(json_out, &a, &keys);
            }
            AccountsCommand::SetPlan { id, plan } => {
                let a = m
                    .update_account(
                        &actor,
                        &id,
                        keywarden_server::manage::AccountPatch {
                            plan: Some(plan),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(fail)?;
                print_one(json_out, &view(views::Account::from(&a)), &ACCOUNT_COLS);
            }
        },
        Command::Keys { command } => match command {
            KeysCommand::Create {
                account,
                mode,
                name,
                key_type,
                role,
                scopes,
                ips,
                expires_at,
                description,
                app_id,
            } => {
                let acc = m.account(&account).await.map_err(fail)?;
                let expires_at = expires_at
                    .as_deref()
                    .map(views::parse_ts)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--expires-at: {e}"))?;
                let mut new = NewKey {
                    key_type,
                    role,
                    scopes: (!scopes.is_empty()).then_some(scopes),
                    ip_allowlist: ips,
                    expires_at,
                    description,
                    ..NewKey::named(mode, &name)
                };
                if let Some(app) = &app_id {
                    apps.bind_to_grant(&acc, app, &mut new)
                        .await
                        .map_err(fail)?;
                }
                let (rec, token) = m.create_key(&actor, &acc, new, None).await.map_err(fail)?;
                print_secret(json_out, view(views::ApiKey::from(&rec)), token.expose());
            }
            KeysCommand::List { account, mode } => {
                m.account(&account).await.map_err(fail)?;
                let keys = state
                    .store
                    .list_keys(
                        &account,
                        mode,
                        &Page {
                            after_id: None,
                            limit: 1000,
                        },
                    )
                    .await?;
                let rows: Vec<Value> = keys.iter().map(|x| view(views::ApiKey::from(x))).collect();
                print_many(json_out, &rows, &KEY_COLS);
            }
            KeysCommand::Show { id } => {
                let k = m.key_of(None, None, &id).await.map_err(fail)?;
                print_one(json_out, &view(views::ApiKey::from(&k)), &KEY_COLS);
            }
            KeysCommand::Rotate { id, grace } => {
                let k = m.key_of(None, None, &id).await.map_err(fail)?;
                let (rec, token) = m.rotate_key(&actor, k, grace).await.map_err(fail)?;
                print_secret(json_out, view(views::ApiKey::from(&rec)), token.expose());
            }
            KeysCommand::Revoke { id, reason } => {
                let k = m.key_of(None, None, &id).await.map_err(fail)?;
                let k = m.revoke_key(&actor, k, reason).await.map_err(fail)?;
                print_one(json_out, &view(views::ApiKey::from(&k)), &KEY_COLS);
            }
            KeysCommand::Pattern => print_pattern(&state.settings.config, json_out)?,
            KeysCommand::Reveal { id } => {
                let k = m.key_of(None, None, &id).await.map_err(fail)?;
                let token = apps.reveal(&actor, &k).await.map_err(fail)?;
                print_secret(json_out, view(views::ApiKey::from(&k)), token.expose());
            }
        },
        Command::Apps { command } => match command {
            AppsCommand::Create {
                name,
                description,
                url,
                scopes,
            } => {
                let new = NewApp {
                    name,
                    description,
                    url,
                    scopes,
                };
                let (app, secrets) = apps.create_app(&actor, new).await.map_err(fail)?;
                let mut v = view(views::Application::from(&app));
                if json_out {
                    v["secrets"] = json!({
                        "production": secrets.production.expose(),
                        "sandbox": secrets.sandbox.expose(),
                    });
                    println!("{v}");
                } else {
                    print_one(false, &v, &APP_COLS);
                    println!();
                    println!(
                        "APP SECRETS (shown once, store them now; they cannot be shown again):"
                    );
                    println!("  production  {}", secrets.production.expose());
                    println!("  sandbox     {}", secrets.sandbox.expose());
                }
            }
            AppsCommand::List { limit } => {
                let list = apps
                    .list_apps(&Page {
                        after_id: None,
                        limit,
                    })
                    .await
                    .map_err(fail)?;
                let rows: Vec<Value> = list
                    .iter()
                    .map(|x| view(views::Application::from(x)))
                    .collect();
                print_many(json_out, &rows, &APP_COLS);
            }
            AppsCommand::Show { id } => {
                let app = apps.app(&id).await.map_err(fail)?;
                print_one(json_out, &view(views::Application::from(&app)), &APP_COLS);
            }
            AppsCommand::Update {
                id,
                name,
                description,
                url,
                scopes,
            } => {
                let patch = AppPatch {
                    name,
                    description,
                    url: url.map(|u| (!u.is_empty()).then_some(u)),
                    scopes: (!scopes.is_empty()).then_some(scopes),
                };
                let app = apps.update_app(&actor, &id, patch).await.map_err(fail)?;
                print_one(json_out, &view(views::Application::from(&app)), &APP_COLS);
            }
            AppsCommand::RotateSecret { id, environment } => {
                let (app, secret) = apps
                    .rotate_app_secret(&actor, &id, environment)
                    .await
                    .map_err(fail)?;
                let mut v = view(views::Application::from(&app));
                if json_out {
                    v["environment"] = json!(environment);
                    v["secret"] = json!(secret.expose());
                    println!("{v}");
                } else {
                    print_one(false, &v, &APP_COLS);
                    println!();
                    println!(
                        "NEW {} SECRET (shown once, store it now; it cannot be shown again):",
                        environment.as_str().to_ascii_uppercase()
                    );
                    println!("  {}", secret.expose());
                }
            }
        },
        Command::Webhooks { command } => webhooks(state, &actor, command, json_out)
            .await
            .map_err(fail)?,
        Command::Events {
            account,
            kind,
            limit,
        } => {
            let evs = state
                .store
                .list_events(&EventFilter {
                    account_id: account,
                    kind,
                    limit: limit.clamp(1, 1000),
                    include_modeless: true,
                    ..EventFilter::default()
                })
                .await?;
            let rows: Vec<Value> = evs
                .iter()
                .map(|x| view(views::AuditEvent::from(x)))
                .collect();
            print_many(json_out, &rows, &EVENT_COLS);
        }
        Command::Verify { token, scopes, ip } => {
            let required = if scopes.is_empty() {
                None
            } else {
                Some(
                    state
                        .settings
                        .catalog
                        .required(&scopes)
                        .map_err(|e| anyhow::anyhow!("--scope: {e}"))?,
                )
            };
            let out = state
                .verifier
                .verify(&VerifyRequest {
                    token: Some(&token),
                    client_ip: ip.map(keywarden_core::ip::ClientAddr::from),
                    scopes_all: required.as_ref(),
                    method: "CLI",
                    path: "-",
                    ..VerifyRequest::default()
                })
                .await;
            let v = json!({
                "valid": out.is_valid(),
                "code": out.code.as_str(),
                "status": out.code.status(),
                "key_id": out.key.as_ref().map(|k| k.id()),
                "account_id": out.key.as_ref().map(|k| k.account_id()),
            });
            print_one(
                json_out,
                &v,
                &["valid", "code", "status", "key_id", "account_id"],
            );
            if !out.is_valid() {
                bail!("the key is not valid: {}", out.code);
            }
        }
        Command::Serve
        | Command::Init { .. }
        | Command::Profiles
        | Command::Migrate
        | Command::Config { .. }
        | Command::Scan { .. } => {}
    }
    Ok(())
}

const ACCOUNT_COLS: [&str; 5] = ["id", "name", "plan", "status", "created_at"];
const KEY_COLS: [&str; 8] = [
    "id",
    "name",
    "mode",
    "type",
    "start",
    "scopes",
    "created_at",
    "revoked_at",
];
const WEBHOOK_COLS: [&str; 6] = ["id", "url", "account_id", "mode", "enabled", "events"];
const DELIVERY_COLS: [&str; 6] = [
    "id",
    "type",
    "status",
    "attempts",
    "last_status",
    "created_at",
];

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `keywarden webhooks …`: the same rules as the admin API, as the operator.
async fn webhooks(
    state: &keywarden_server::state::AppState,
    actor: &Actor,
    cmd: WebhooksCommand,
    json_out: bool,
) -> Result<(), keywarden_server::errors::ApiError> {
    let m = WebhookManager::new(state);
    let root = Owner::Root;
    let with_secret = |e: &keywarden_store::webhooks::WebhookEndpoint| {
        let v = WebhookWithSecret {
            endpoint: WebhookView::from(e),
            secret: e.secret.clone(),
        };
        if json_out {
            println!("{}", to_value(&v));
        } else {
            print_one(false, &to_value(&v.endpoint), &WEBHOOK_COLS);
            println!();
            println!("SIGNING SECRET (shown once, store it now; it cannot be shown again):");
            println!("  {}", v.secret);
        }
    };
    match cmd {
        WebhooksCommand::Create {
            url,
            events,
            account,
            mode,
            description,
        } => {
            let e = m
                .create(
                    actor,
                    &root,
                    NewWebhook {
                        url,
                        events: (!events.is_empty()).then_some(events),
                        account_id: account,
                        mode,
                        description,
                    },
                )
                .await?;
            with_secret(&e);
        }
        WebhooksCommand::List => {
            let rows: Vec<Value> = m
                .list(&root)
                .await?
                .iter()
                .map(|e| to_value(&WebhookView::from(e)))
                .collect();
            print_many(json_out, &rows, &WEBHOOK_COLS);
        }
        WebhooksCommand::Show { id } => {
            let e = m.get(&root, &id).await?;
            print_one(json_out, &to_value(&WebhookView::from(&e)), &WEBHOOK_COLS);
        }
        WebhooksCommand::Update {
            id,
            url,
            events,
            all_events,
            enabled,
            description,
        } => {
            let events = if all_events {
                Some(None)
            } else if events.is_empty() {
                None
            } else {
                Some(Some(events))
            };
            let patch = WebhookPatch {
                url,
                events,
                enabled,
                description,
            };
            let e = m.update(actor, &root, &id, patch).await?;
            print_one(json_out, &to_value(&WebhookView::from(&e)), &WEBHOOK_COLS);
        }
        WebhooksCommand::Delete { id } => {
            m.delete(actor, &root, &id).await?;
            if json_out {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("deleted {id}");
            }
        }
        WebhooksCommand::RotateSecret { id } => {
            let e = m.rotate_secret(actor, &root, &id).await?;
            with_secret(&e);
        }
        WebhooksCommand::Deliveries { id, limit } => {
            let rows: Vec<Value> = m
                .deliveries(&root, &id, None, limit)
                .await?
                .iter()
                .map(to_value)
                .collect();
            print_many(json_out, &rows, &DELIVERY_COLS);
        }
        WebhooksCommand::Redeliver { id, delivery } => {
            let d = m.redeliver(&root, &id, &delivery).await?;
            print_one(json_out, &to_value(&d), &DELIVERY_COLS);
        }
        WebhooksCommand::Test { id } => {
            let d = m.send_test(&root, &id).await?;
            print_one(json_out, &to_value(&d), &DELIVERY_COLS);
        }
    }
    Ok(())
}

const EVENT_COLS: [&str; 5] = ["id", "at", "type", "account_id", "actor"];
const APP_COLS: [&str; 5] = ["id", "name", "url", "scopes", "created_at"];

/// An account, and the default keys just made for it (secrets shown once).
fn print_account(json_out: bool, a: &keywarden_core::model::Account, keys: &[IssuedKey]) {
    if json_out {
        println!("{}", view(views::AccountWithKeys::new(a, keys)));
        return;
    }
    print_one(false, &view(views::Account::from(a)), &ACCOUNT_COLS);
    for (rec, token) in keys {
        println!();
        print_secret(false, view(views::ApiKey::from(rec)), token.expose());
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_many(json_out: bool, rows: &[Value], cols: &[&str]) {
    if json_out {
        println!("{}", Value::Array(rows.to_vec()));
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(cols.iter().map(|c| c.to_ascii_uppercase()).collect())
    );
    for r in table {
        println!("{}", line(r));
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

/// A view as JSON, for printing.
fn view<V: serde::Serialize>(v: V) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn print_one(json_out: bool, v: &Value, cols: &[&str]) {
    if json_out {
        println!("{v}");
        return;
    }
    let w = cols.iter().map(|c| c.len()).max().unwrap_or(0);
    for c in cols {
        println!("{c:<w$}  {}", cell(&v[*c]));
    }
}

fn print_secret(json_out: bool, mut v: Value, secret: &str) {
    if json_out {
        v["api_key"] = json!(secret);
        println!("{v}");
        return;
    }
    print_one(false, &v, &KEY_COLS);
    println!();
    println!("API KEY (shown once, store it now; it cannot be shown again):");
    println!("  {secret}");
}
