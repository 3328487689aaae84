//! The command line (CONTRACT section 1). `user …` commands work on the
//! database directly when no gateway holds it, and otherwise go through the
//! running gateway's admin listener with the admin token.

mod admin_call;
mod audit;
mod backup;
mod keys;
mod policy;
mod progress;
mod users;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};

pub use admin_call::reload_command;
pub use audit::audit_command;
pub use backup::{backup_command, restore_command, storage_command};
pub use keys::keys_command;
pub use policy::{policy_command, ExplainError};
pub use users::user_command;

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
    /// The stored audit trail (CONTRACT 8.5): `audit verify`, `audit export`.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: AuditCommand,
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
    /// Enable a disabled user again.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// End every session of a user and void their access tokens.
    EndSessions {
        #[arg(long)]
        email: String,
    },
    /// Turn a user's TOTP off (they lost the device); drops the recovery codes.
    TotpOff {
        #[arg(long)]
        email: String,
    },
    /// Mail the user a password-reset link.
    SendReset {
        #[arg(long)]
        email: String,
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
pub enum AuditCommand {
    /// Check the whole chain: exit 0 when it is whole, else 1 naming the
    /// first record that does not fit (edited, removed or reordered).
    Verify,
    /// Write the stored records as JSON lines.
    Export {
        /// Only records written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// The file to write (default: stdout).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
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
