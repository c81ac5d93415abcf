//! Helpers of `benches/auth.sh`:
//!
//! - `keys --dir D --tokens N`: an ES256 key's JWKS (`D/jwks.json`), one token to reuse
//!   (`D/token`), N distinct tokens (`D/tokens.txt`), an API keys file (`D/keys.txt`, key
//!   "bench-key") and a Rego policy (`D/policy.rego`).
//! - `authz --listen ADDR`: an ext_authz service (Envoy's Authorization API) that allows calls
//!   carrying `x-authz: allow`.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use serde_json::json;
use strait_tests::jwt::{self, SigningKey};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Keys {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        tokens: usize,
    },
    Authz {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match Args::parse().command {
        Command::Keys { dir, tokens } => {
            let key = SigningKey::es256("bench");
            std::fs::write(dir.join("jwks.json"), jwt::jwks(&[&key])).expect("jwks");
            let claims = |n: usize| jwt::claims("bench", 3600, json!({"jti": n.to_string()}));
            std::fs::write(dir.join("token"), key.sign(&claims(0))).expect("token");
            let list: Vec<String> = (1..=tokens).map(|n| key.sign(&claims(n))).collect();
            std::fs::write(dir.join("tokens.txt"), list.join("\n")).expect("tokens");
            // sha256("bench-key")
            let hash = {
                use sha2::{Digest, Sha256};
                Sha256::digest(b"bench-key")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            std::fs::write(dir.join("keys.txt"), format!("bench {hash}\n")).expect("keys");
            std::fs::write(
                dir.join("policy.rego"),
                "package strait\n\nallow if {\n    input.principal.subject == \"bench\"\n    \
                 input.method == \"Unary\"\n}\n",
            )
            .expect("policy");
        }
        Command::Authz { listen } => {
            let server = strait_tests::ext_authz::AuthzServer::start_on(listen).await;
            eprintln!("strait-auth-bench: ext_authz on {}", server.addr);
            std::future::pending::<()>().await;
        }
    }
}
