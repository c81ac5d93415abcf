//! `strait`: run the gateway, check or describe its config, reload or probe a running one, or
//! register a backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit status for an invalid configuration (distinct from a runtime failure).
const EXIT_BAD_CONFIG: u8 = 2;
const EXIT_START_FAILED: u8 = 1;

#[derive(Parser)]
#[command(name = "strait", version, about = "A gRPC edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and report every problem; start nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Register a backend instance in etcd and keep it registered until SIGTERM/SIGINT.
    Register(Box<strait::registrar::cli::RegisterArgs>),
    /// Ask a running gateway to reload its config file (same as SIGHUP); prints what changed
    /// or why the running config stayed.
    Reload {
        /// The gateway's admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Exit 0 when a running gateway's /healthz answers (for container health checks).
    Healthcheck {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Print a gRPC xDS bootstrap file (for GRPC_XDS_BOOTSTRAP) that points a client at the
    /// gateway's [xds] server and states the client's region.
    XdsBootstrap {
        /// The xDS server, host:port.
        #[arg(long, default_value = "127.0.0.1:18000")]
        server: String,
        /// The client's region: the upstream's endpoints there are used first.
        #[arg(long)]
        region: Option<String>,
        /// The client's node id (default: the host name and a random suffix).
        #[arg(long)]
        node_id: Option<String>,
        /// CA file (PEM) that signed the xDS server's certificate, when [xds] has tls.
        #[arg(long)]
        ca_file: Option<String>,
    },
}

/// How long `reload` and `healthcheck` wait for the admin listener.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

fn admin_command(admin: SocketAddr, method: &str, path: &str) -> ExitCode {
    match strait::admin::client::request(admin, method, path, ADMIN_TIMEOUT) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("strait: {method} {path} answered {status}: {body}");
            ExitCode::from(EXIT_START_FAILED)
        }
        Err(e) => {
            eprintln!("strait: cannot reach the admin listener at {admin}: {e}");
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it flushes the queued lines.
    let logging = strait::logging::init();
    match cli.command {
        Command::Reload { admin } => admin_command(admin, "POST", "/reload"),
        Command::Healthcheck { admin } => admin_command(admin, "GET", "/healthz"),
        Command::XdsBootstrap {
            server,
            region,
            node_id,
            ca_file,
        } => {
            let spec = strait::xds::bootstrap::BootstrapSpec {
                server,
                region,
                node_id: node_id.unwrap_or_else(strait::xds::bootstrap::default_node_id),
                ca_file,
            };
            match strait::xds::bootstrap::bootstrap(&spec) {
                Ok(file) => {
                    println!("{file:#}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("strait xds-bootstrap: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Schema => {
            print!("{}", strait::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Register(args) => match strait::registrar::cli::registration(*args) {
            Err(e) => {
                eprintln!("strait register: {e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            Ok(registration) => match strait::registrar::cli::run(registration) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait register: {e}");
                    ExitCode::from(EXIT_START_FAILED)
                }
            },
        },
        Command::Check { config } => match strait::config::load(&config) {
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            // Validation bounds every duration; the rehearsal proves that the config's
            // arithmetic (deadlines, back-off, schedules) is representable before anyone runs it.
            Ok(loaded) => match strait::rehearsal::rehearse(&loaded) {
                Err(reason) => {
                    eprintln!("{}: unsafe to run: {reason}", config.display());
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
                Ok(()) => {
                    println!(
                        "{}: ok ({} listener(s), {} route(s), {} upstream(s))",
                        config.display(),
                        loaded.listeners.len(),
                        loaded.routes.len(),
                        loaded.upstreams.len()
                    );
                    ExitCode::SUCCESS
                }
            },
        },
        Command::Run { config } => {
            let loaded = match strait::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match strait::app::run(loaded, config, logging.dropped()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("strait: {e}");
                    ExitCode::from(EXIT_START_FAILED)
                }
            }
        }
    }
}
