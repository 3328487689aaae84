//! `user …`: on the database directly when no gateway holds it, else
//! through the running gateway's admin listener.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use super::admin_call::via_admin_listener;
use super::{RoleCommand, UserCommand, UserKeysCommand};
use crate::accounts::admin::AdminCommand;
use crate::config::Config;

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
        UserCommand::Enable { email } => AdminCommand::Enable { email },
        UserCommand::EndSessions { email } => AdminCommand::SessionsEnd { email },
        UserCommand::TotpOff { email } => AdminCommand::TotpOff { email },
        UserCommand::SendReset { email } => AdminCommand::ResetSend { email },
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
