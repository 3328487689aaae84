//! The command line (CONTRACT section 1). `user …` commands work on the
//! database directly when no gateway holds it, and otherwise go through the
//! running gateway's admin listener with the admin token.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::accounts::admin::AdminCommand;
use crate::config::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "A reverse-proxy authentication gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ConfigArg {
    /// Config file (default: $PORTCULLIS_CONFIG, else ./gateway.toml)
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ConfigArg),
    /// Validate the config: exit 0, or print every problem and exit 2.
    CheckConfig(ConfigArg),
    /// Write a consistent copy of the store to a file (through the running
    /// gateway's admin listener, or directly when no gateway holds it).
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        /// The file to write (0600); it must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup into the configured store, which must be empty (stop a
    /// gateway that uses sled first).
    Restore {
        #[command(flatten)]
        config: ConfigArg,
        /// A file written by `portcullis backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Make the running gateway read its config file again and apply it
    /// without dropping a connection (as SIGHUP does); prints the outcome,
    /// and exits non-zero when the gateway refused it.
    Reload(ConfigArg),
    /// Signing keys.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Move the store between backends.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Route policy: `policy explain`.
    Policy {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Administer users.
    User {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a verified user. The password comes from stdin or a prompt.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    List,
    Disable {
        #[arg(long)]
        email: String,
    },
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// A user's API keys: list them, or revoke one.
    Keys {
        #[command(subcommand)]
        command: UserKeysCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// The decision the config takes on a request: the route it matched
    /// (index, host, prefix), the decision (allow, 401, 403, 302) and the
    /// rule that decided. Exit 0 for allow, 1 for a refusal, 2 for bad
    /// arguments.
    Explain {
        #[arg(long)]
        method: String,
        /// `https://host/path?query`, or `/path` (any host).
        #[arg(long)]
        url: String,
        /// A user looked up in the store (through the running gateway's
        /// admin listener when it holds the database).
        #[arg(long)]
        email: Option<String>,
        /// An API key with these scopes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        api_key_scopes: Option<Vec<String>>,
        /// The client IP (default 127.0.0.1).
        #[arg(long)]
        ip: Option<String>,
        /// The time, RFC 3339 (default: now).
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserKeysCommand {
    /// List a user's API keys (ids, names, scopes, dates; never the keys).
    List {
        #[arg(long)]
        email: String,
    },
    /// Revoke one of a user's API keys by its id.
    Revoke {
        #[arg(long)]
        email: String,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Add a new signing key to the data dir's key set; older keys keep
    /// verifying until every token they signed has expired. A running
    /// gateway is asked to reload, and signs with the new key from then on
    /// (or from --activate-in seconds later).
    Rotate {
        /// Seconds before the new key starts signing: with several gateways,
        /// long enough to copy the key file to every one and reload each,
        /// so all of them accept the new key before any signs with it.
        #[arg(long, default_value_t = 0)]
        activate_in: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum StorageCommand {
    /// Copy every record from one store to another and compare the counts.
    /// Safe to run again: records are replaced, never duplicated. Stop the
    /// gateway that uses a sled source first.
    Migrate {
        /// `sled:PATH` (the database directory, `storage.path`) or `postgres://…`
        #[arg(long)]
        from: String,
        /// `sled:PATH` or `postgres://…`
        #[arg(long)]
        to: String,
        /// PEM file of CAs to trust for TLS to PostgreSQL (as `storage.ca_file`)
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    Remove {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

pub fn load_config(arg: &ConfigArg) -> Result<Config, config::ConfigErrors> {
    let (path, must_exist) = config::resolve_path(arg.config.as_deref());
    Config::load(&path, must_exist)
}

fn read_password(from_stdin: bool) -> Result<Option<String>, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        return Ok(Some(pw));
    }
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Repeat: ").map_err(|e| e.to_string())?;
        if pw != again {
            return Err("the passwords do not match".into());
        }
        return Ok(Some(pw));
    }
    Ok(None)
}

/// Users per page of `user list`.
const LIST_PAGE: usize = 500;

/// Where a `user …` command runs: on the database itself (no gateway holds
/// it), or through the running gateway's admin listener.
enum AdminTarget {
    Direct {
        auth: Box<crate::accounts::AuthService>,
        rt: tokio::runtime::Runtime,
    },
    Listener,
}

impl AdminTarget {
    fn open(cfg: &Arc<Config>) -> Result<Self, String> {
        match crate::server::open_store(cfg) {
            Ok(store) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                // Loads nothing up front: a command reads what it needs.
                let auth = Box::new(crate::accounts::AuthService::for_admin(
                    cfg.clone(),
                    store,
                    Arc::new(crate::clock::SystemClock),
                )?);
                Ok(AdminTarget::Direct { auth, rt })
            }
            Err(e) if e.contains("in use") => Ok(AdminTarget::Listener),
            Err(e) => Err(e),
        }
    }

    fn run(&self, cfg: &Config, cmd: AdminCommand) -> Result<serde_json::Value, String> {
        match self {
            AdminTarget::Direct { auth, rt } => {
                let request_id = uuid::Uuid::new_v4().to_string();
                let actor = crate::audit::AuditCtx {
                    ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                    user_agent: "portcullis cli",
                    request_id: &request_id,
                };
                rt.block_on(auth.admin(cmd, &actor))
                    .map_err(|e| e.to_string())
            }
            AdminTarget::Listener => via_admin_listener(cfg, &cmd),
        }
    }
}

/// Run a `user …` command; prints JSON on success.
pub fn user_command(cfg: Config, cmd: UserCommand) -> Result<(), String> {
    let admin = match cmd {
        UserCommand::Add {
            email,
            roles,
            password_stdin,
        } => AdminCommand::Add {
            email,
            roles,
            password: read_password(password_stdin)?,
        },
        UserCommand::List => {
            let cfg = Arc::new(cfg);
            return list_users(&cfg, &AdminTarget::open(&cfg)?);
        }
        UserCommand::Disable { email } => AdminCommand::Disable { email },
        UserCommand::Role {
            command: RoleCommand::Add { email, role },
        } => AdminCommand::RoleAdd { email, role },
        UserCommand::Role {
            command: RoleCommand::Remove { email, role },
        } => AdminCommand::RoleRemove { email, role },
        UserCommand::Keys {
            command: UserKeysCommand::List { email },
        } => AdminCommand::KeyList { email },
        UserCommand::Keys {
            command: UserKeysCommand::Revoke { email, id },
        } => AdminCommand::KeyRevoke { email, id },
    };
    let cfg = Arc::new(cfg);
    let out = AdminTarget::open(&cfg)?.run(&cfg, admin)?;
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// `user list`: a page of users at a time, each printed as it is read, so
/// memory holds one page however many users there are. The output is one
/// JSON array, in store order.
fn list_users(cfg: &Config, target: &AdminTarget) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| format!("writing the list: {e}");
    let mut after = None;
    let mut printed = 0usize;
    write!(out, "[").map_err(io)?;
    loop {
        let page = target.run(
            cfg,
            AdminCommand::List {
                after: after.take(),
                limit: Some(LIST_PAGE),
            },
        )?;
        // A gateway that does not page answers with every user at once.
        let (users, next) = match &page {
            serde_json::Value::Array(all) => (all.as_slice(), None),
            v => (
                v["users"].as_array().map(Vec::as_slice).unwrap_or_default(),
                v["next"].as_str().map(str::to_string),
            ),
        };
        for u in users {
            let text = serde_json::to_string_pretty(u).unwrap_or_default();
            let sep = if printed == 0 { "" } else { "," };
            write!(out, "{sep}\n  {}", text.replace('\n', "\n  ")).map_err(io)?;
            printed += 1;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let end = if printed == 0 { "]" } else { "\n]" };
    writeln!(out, "{end}").map_err(io)?;
    Ok(())
}

/// Send an admin command to the running gateway.
fn via_admin_listener(cfg: &Config, cmd: &AdminCommand) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
    let (ok, body) = admin_call(cfg, "POST", "/admin/users", &body)?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if ok {
        Ok(v)
    } else {
        Err(v["message"]
            .as_str()
            .unwrap_or("admin command failed")
            .to_string())
    }
}

/// One request to the running gateway's admin listener, with the admin
/// token; whether it answered 200, and the body.
fn admin_call(
    cfg: &Config,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(bool, Vec<u8>), String> {
    let addr = cfg
        .server
        .admin_listen
        .ok_or("the database is in use and server.admin_listen is disabled")?;
    let token = crate::server::admin_token(cfg)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to the admin listener {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        String::from_utf8_lossy(&token),
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("admin listener: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("admin listener: {e}"))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("admin listener: bad response")?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    Ok((ok, resp[split + 4..].to_vec()))
}

/// `portcullis reload`: ask the running gateway (through its admin
/// listener, with the admin token) to read its config again. The gateway
/// judges the file it was started with; this config only says where its
/// admin listener and data dir are.
pub fn reload_command(cfg: Config) -> Result<(), String> {
    if cfg.server.admin_listen.is_none() {
        return Err(
            "server.admin_listen is disabled: send SIGHUP to the gateway instead".to_string(),
        );
    }
    let (ok, body) = admin_call(&cfg, "POST", "/admin/reload", b"").map_err(|e| {
        format!("{e} (is the gateway running with this server.admin_listen and data_dir?)")
    })?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if ok {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match v["problems"].as_array() {
        Some(problems) => {
            let list: Vec<&str> = problems.iter().filter_map(|p| p.as_str()).collect();
            Err(format!(
                "the gateway refused the reload; the previous config stays in force:\n  {}",
                list.join("\n  ")
            ))
        }
        None => Err(v["message"]
            .as_str()
            .unwrap_or("the reload failed")
            .to_string()),
    }
}

/// `portcullis keys rotate`: a new key in the data dir's key set, then a
/// reload of the running gateway (if one answers on the admin listener).
pub fn keys_command(cfg: Config, cmd: KeysCommand) -> Result<(), String> {
    let KeysCommand::Rotate { activate_in } = cmd;
    crate::server::create_private_dir(&cfg.server.data_dir)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let r = crate::tokens::keys::rotate(&cfg.tokens, &cfg.server.data_dir, now, activate_in)?;
    tracing::info!(target: "audit", event = "keys_rotate", kid = %r.kid);
    let gateway = match cfg.server.admin_listen {
        None => "no admin listener: reload the gateway (SIGHUP) to use the new key".to_string(),
        Some(addr) => match admin_call(&cfg, "POST", "/admin/reload", b"") {
            Ok((true, _)) => "reloaded".to_string(),
            Ok((false, body)) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                return Err(format!(
                    "the new key {} is in '{}', but the running gateway refused the reload \
                     (so it does not use it yet): {}; fix the config and run `portcullis reload`",
                    r.kid,
                    crate::tokens::keys::key_file_path(&cfg.tokens, &cfg.server.data_dir).display(),
                    v["message"].as_str().unwrap_or("reload failed")
                ));
            }
            Err(_) => format!("no gateway answers on {addr}: it uses the new key when it starts"),
        },
    };
    let rfc = crate::clock::rfc3339;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "kid": r.kid,
            "signs_from": rfc(r.signs_from),
            "previous": r.previous.iter().map(|(kid, until)| serde_json::json!({
                "kid": kid, "verifies_until": rfc(*until)
            })).collect::<Vec<_>>(),
            "dropped": r.dropped,
            "key_file": crate::tokens::keys::key_file_path(&cfg.tokens, &cfg.server.data_dir).display().to_string(),
            "gateway": gateway,
        }))
        .unwrap_or_default()
    );
    Ok(())
}

/// `portcullis backup --out PATH`. Offline (the database is not in use,
/// so nothing writes meanwhile) the records are written page by page
/// straight into the file, with progress on stderr; from a running gateway
/// the copy comes through its admin listener. Either way the file is
/// checked whole (read again, streaming) before it takes its name.
pub fn backup_command(cfg: Config, out: &std::path::Path) -> Result<(), String> {
    use crate::store::copy;
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        return Err(format!("'{}' exists: choose a new file", out.display()));
    }
    let store = match crate::server::open_store(&cfg) {
        Ok(store) => Some(store),
        Err(e) if e.contains("in use") => None,
        Err(e) => return Err(e),
    };
    let body = match &store {
        Some(_) => None,
        None => {
            let (ok, body) = admin_call(&cfg, "GET", "/admin/backup", b"")?;
            if !ok {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                return Err(v["message"].as_str().unwrap_or("backup failed").to_string());
            }
            Some(body)
        }
    };
    let tmp = out.with_extension("partial");
    let write = || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("creating '{}': {e}", tmp.display()))?;
        let failed = |e: std::io::Error| format!("writing '{}': {e}", tmp.display());
        match (store, body) {
            (Some(store), _) => {
                let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
                let mut progress = Progress::new("backing up", None);
                let done = crate::store::block_on(async {
                    copy::write_backup_paged(&*store, now, &mut w, |n, total| {
                        progress.total = Some(total);
                        progress.set(n)
                    })
                    .await
                })?;
                progress.finish();
                done?;
                w.flush().map_err(failed)?;
            }
            (None, Some(body)) => f.write_all(&body).map_err(failed)?,
            (None, None) => return Err("nothing to back up".into()),
        }
        f.sync_all().map_err(failed)?;
        // Checked whole before it is kept: a cut connection is no backup.
        let file = std::fs::File::open(&tmp).map_err(|e| e.to_string())?;
        copy::read_backup_with(std::io::BufReader::with_capacity(1 << 20, file), |_| {})
    };
    let header = match write() {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A hard link never clobbers: a file that appeared at `out` meanwhile
    // is refused, as at the start.
    let placed = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("'{}' exists: choose a new file", out.display())
        }
        _ => format!("writing '{}': {e}", out.display()),
    })?;
    crate::fsutil::sync_dir(out).map_err(|e| format!("writing '{}': {e}", out.display()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out": out.display().to_string(),
            "created_at": header.created_at,
            "counts": header.counts,
        }))
        .unwrap_or_default()
    );
    Ok(())
}

/// `portcullis restore --from PATH`: the file is checked whole first (a
/// truncated or edited one is refused before anything is written), then
/// read again and imported page by page, with progress on stderr; neither
/// pass keeps the records in memory.
pub fn restore_command(cfg: Config, from: &std::path::Path) -> Result<(), String> {
    use crate::store::{copy, RecordKind};
    let open = || {
        std::fs::File::open(from)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("opening '{}': {e}", from.display()))
    };
    let mut checking = Progress::new("checking the backup", None);
    let header = copy::read_backup_with(open()?, |_| checking.add(1))
        .map_err(|e| format!("'{}': {e}", from.display()))?;
    checking.finish();
    let store = crate::server::open_store_for_restore(&cfg).map_err(|e| {
        if e.contains("in use") {
            "the database is in use: stop the gateway first".to_string()
        } else {
            e
        }
    })?;
    let total: u64 = header.counts.values().sum();
    let mut lines = open()?
        .lines()
        .skip(1)
        .filter(|l| !matches!(l, Ok(l) if l.is_empty()));
    let records = std::iter::from_fn(move || {
        lines.next().map(|l| {
            l.map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()))
        })
    });
    let tallies = crate::store::block_on(async move {
        for kind in RecordKind::ALL {
            let n = store.count(kind).await.map_err(|e| e.to_string())?;
            if n > 0 {
                return Err(format!(
                    "the store is not empty ({n} {}): restore into an empty one",
                    kind.name()
                ));
            }
        }
        let mut progress = Progress::new("restoring", Some(total));
        let tallies = copy::restore_pages(records, header.counts, &*store, |n| progress.set(n))
            .await
            .map_err(|e| e.to_string());
        progress.finish();
        tallies
    })??;
    print_tallies(&tallies)
}

/// Progress of a long command on stderr: a bar redrawn in place on a
/// terminal, else a plain line every few seconds (a log keeps every one).
struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    tty: bool,
    started: std::time::Instant,
    drawn: std::time::Instant,
}

impl Progress {
    fn new(what: &'static str, total: Option<u64>) -> Self {
        let now = std::time::Instant::now();
        Self {
            what,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: now,
            drawn: now,
        }
    }

    fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    fn set(&mut self, done: u64) {
        self.done = done;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.drawn.elapsed() >= every {
            self.draw();
        }
    }

    fn draw(&mut self) {
        self.drawn = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(0.001);
        let of = match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done as f64 / t as f64 * 100.0).min(100.0);
                if self.tty {
                    let filled = (pct / 100.0 * 30.0) as usize;
                    format!(
                        " [{}{}] {}/{t} ({pct:.0}%)",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        self.done
                    )
                } else {
                    format!(" {}/{t} records ({pct:.0}%)", self.done)
                }
            }
            _ => format!(" {} records", self.done),
        };
        let line = format!("{}:{of}, {rate:.0}/s, {secs:.0} s", self.what);
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        self.draw();
        if self.tty {
            eprintln!();
        }
    }
}

/// Print what each side holds; an error if any kind differs.
fn print_tallies(tallies: &[crate::store::copy::Tally]) -> Result<(), String> {
    let report: serde_json::Map<String, serde_json::Value> = tallies
        .iter()
        .map(|t| {
            (
                t.kind.name().to_string(),
                serde_json::json!({ "copied": t.copied, "source": t.source, "target": t.target }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let short: Vec<String> = tallies
        .iter()
        .filter(|t| t.target != t.source)
        .map(|t| {
            format!(
                "{} (source {}, target {})",
                t.kind.name(),
                t.source,
                t.target
            )
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the counts differ after the copy: {}; a target that held records of its own \
             counts more",
            short.join(", ")
        ))
    }
}

/// Open a store named on the command line: `sled:PATH` or a PostgreSQL URL.
/// A sled source must exist (opening would create an empty one).
fn open_location(
    spec: &str,
    must_exist: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<dyn crate::store::Store>, String> {
    if let Some(path) = spec.strip_prefix("sled:") {
        let path = std::path::Path::new(path);
        if must_exist && !path.join("conf").exists() {
            return Err(format!("no sled database at '{}'", path.display()));
        }
        return crate::store::sled_store::SledStore::open(path)
            .map(|s| Arc::new(s) as Arc<dyn crate::store::Store>)
            .map_err(|e| {
                let s = e.to_string();
                if s.contains("WouldBlock") || s.contains("temporarily unavailable") {
                    format!(
                        "the database at '{}' is in use: stop the gateway first",
                        path.display()
                    )
                } else {
                    format!("opening '{}': {s}", path.display())
                }
            });
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let (url, ca) = (spec.to_string(), ca_file.map(std::path::Path::to_path_buf));
        return crate::store::block_on(async move {
            crate::store::pg_store::PgStore::connect_with(&url, ca.as_deref()).await
        })?
        .map(|s| Arc::new(s) as Arc<dyn crate::store::Store>)
        .map_err(|e| format!("opening the PostgreSQL store: {e}"));
    }
    // Not echoed: it may hold a password.
    Err("a store is named sled:PATH or postgres://…".into())
}

/// Run a `storage …` command; prints what each side holds as JSON.
pub fn storage_command(cmd: StorageCommand) -> Result<(), String> {
    let StorageCommand::Migrate { from, to, ca_file } = cmd;
    if from == to {
        return Err("--from and --to name the same store".into());
    }
    let source = open_location(&from, true, ca_file.as_deref())?;
    let target = open_location(&to, false, ca_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut progress = Progress::new("copying", None);
    let (mut before, mut last_kind) = (0u64, None);
    let tallies = rt
        .block_on(crate::store::copy::copy_all(
            &*source,
            &*target,
            |kind, n| {
                // `n` counts this kind's records; the bar counts them all.
                if last_kind != Some(kind) {
                    before = progress.done;
                    last_kind = Some(kind);
                }
                progress.set(before + n);
            },
        ))
        .map_err(|e| e.to_string());
    progress.finish();
    let tallies = tallies?;
    print_tallies(&tallies)
}

/// Why `policy explain` stopped: bad arguments (exit 2) or a failure.
pub enum ExplainError {
    BadArguments(String),
    Failed(String),
}

/// `portcullis policy explain`: prints `{route, decision, rule}` as JSON;
/// `Ok(true)` when the decision is allow. With `--email`, the user is read
/// from the store, or, when a running gateway holds it, the question goes
/// to that gateway's `POST /admin/explain` (and so to its running config).
pub fn policy_command(cfg: Config, cmd: PolicyCommand) -> Result<bool, ExplainError> {
    let PolicyCommand::Explain {
        method,
        url,
        email,
        api_key_scopes,
        ip,
        at,
    } = cmd;
    let q = crate::proxy::explain::Question {
        method,
        url,
        email,
        api_key_scopes,
        ip,
        at,
    };
    let bad = |e: crate::proxy::explain::BadQuestion| ExplainError::BadArguments(e.0);
    q.parse().map_err(bad)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let answer = if q.email.is_none() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| ExplainError::Failed(e.to_string()))?;
        rt.block_on(crate::proxy::explain::explain(&cfg, None, &q, now))
            .map_err(bad)?
    } else {
        match crate::server::open_store(&Arc::new(cfg.clone())) {
            Ok(store) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ExplainError::Failed(e.to_string()))?;
                rt.block_on(crate::proxy::explain::explain(
                    &cfg,
                    Some(store.as_ref()),
                    &q,
                    now,
                ))
                .map_err(bad)?
            }
            Err(e) if e.contains("in use") => {
                let body =
                    serde_json::to_vec(&q).map_err(|e| ExplainError::Failed(e.to_string()))?;
                let (ok, body) = admin_call(&cfg, "POST", "/admin/explain", &body)
                    .map_err(ExplainError::Failed)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                if !ok {
                    let m = v["message"]
                        .as_str()
                        .unwrap_or("explain failed")
                        .to_string();
                    return Err(ExplainError::BadArguments(m));
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(v["decision"] == "allow");
            }
            Err(e) => return Err(ExplainError::Failed(e)),
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    Ok(answer.allowed())
}
