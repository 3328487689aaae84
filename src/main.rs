//! The `portcullis` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command, ConfigArg};

/// mimalloc instead of glibc's malloc: about a tenth of the proxy path's
/// CPU was glibc malloc/free (perf, benches/compare.sh), mostly Pingora's
/// own per-request header maps and buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ConfigArg::default())) {
        Command::CheckConfig(arg) => match cli::load_config(&arg) {
            Ok(cfg) => {
                for w in portcullis::config::warnings(&cfg) {
                    eprintln!("warning: {w}");
                }
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for p in &errors.0 {
                    eprintln!("{p}");
                }
                ExitCode::from(2)
            }
        },
        Command::Serve(arg) => {
            let cfg = match cli::load_config(&arg) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("refusing to start: the config has problems:");
                    for p in &errors.0 {
                        eprintln!("  {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = portcullis::logging::init(&cfg.log) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            let (path, must_exist) = portcullis::config::resolve_path(arg.config.as_deref());
            let source = portcullis::reload::file_source(path, must_exist);
            match portcullis::run(cfg, Some(source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backup { config, out } => {
            with_config(&config, |cfg| cli::backup_command(cfg, &out))
        }
        Command::Restore { config, from } => {
            with_config(&config, |cfg| cli::restore_command(cfg, &from))
        }
        Command::Reload(config) => with_config(&config, cli::reload_command),
        Command::Audit { config, command } => {
            with_config(&config, |cfg| cli::audit_command(cfg, command))
        }
        Command::Keys { config, command } => {
            with_config(&config, |cfg| cli::keys_command(cfg, command))
        }
        Command::Storage { command } => match cli::storage_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Policy { config, command } => {
            let cfg = match cli::load_config(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for p in &errors.0 {
                        eprintln!("{p}");
                    }
                    return ExitCode::from(2);
                }
            };
            match cli::policy_command(cfg, command) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(cli::ExplainError::BadArguments(e)) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::from(2)
                }
                Err(cli::ExplainError::Failed(e)) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::User { config, command } => {
            let cfg = match cli::load_config(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for p in &errors.0 {
                        eprintln!("{p}");
                    }
                    return ExitCode::from(2);
                }
            };
            match cli::user_command(cfg, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Load the config (exit 2 on problems), then run `f` (exit 1 on error).
fn with_config(
    arg: &ConfigArg,
    f: impl FnOnce(portcullis::Config) -> Result<(), String>,
) -> ExitCode {
    let cfg = match cli::load_config(arg) {
        Ok(c) => c,
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    match f(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}
