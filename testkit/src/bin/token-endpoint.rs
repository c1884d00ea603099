//! The fake GreenLake token endpoint as a standalone process, for `make demo`.
//!
//! ```text
//! cargo run -p dscc-testkit --bin token-endpoint -- --port 0 --lifetime 20s --client demo-client:demo-secret
//! ```
//!
//! Prints `{"token_url":"http://127.0.0.1:PORT/as/token.oauth2"}` once listening, logs each
//! request (client id and outcome, never a secret or token) to stderr, and exits on SIGTERM
//! or Ctrl-C.

use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use dscc_testkit::token_endpoint::TokenEndpoint;

/// A fake OAuth 2.0 client credentials token endpoint on 127.0.0.1.
#[derive(Debug, Parser)]
struct Args {
    /// Port to listen on; 0 lets the OS choose.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Lifetime of issued tokens, e.g. `20s`, `15m`, `2h` or plain seconds.
    #[arg(long, default_value = "7199s", value_parser = parse_duration)]
    lifetime: Duration,
    /// A client as `ID:SECRET`; repeat for more clients.
    #[arg(long = "client", value_parser = parse_client)]
    clients: Vec<(String, String)>,
    /// Answer 429 to requests beyond this many per second.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Leave `expires_in` out of responses (clients must read the JWT `exp`).
    #[arg(long)]
    no_expires_in: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 20s, 15m or 2h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use s, m or h")),
    };
    if seconds == 0 {
        return Err("the lifetime must be at least 1s".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

fn parse_client(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok((id.to_owned(), secret.to_owned()))
        }
        _ => Err("expected ID:SECRET".to_owned()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let endpoint = TokenEndpoint::start_on_port(args.port).await?;
    endpoint.set_lifetime(args.lifetime);
    endpoint.set_include_expires_in(!args.no_expires_in);
    endpoint.set_rate_limit(args.rate_limit);
    endpoint.set_log_to_stderr(true);
    for (id, secret) in &args.clients {
        endpoint.set_client(id, secret);
    }

    let ready = serde_json::json!({ "token_url": endpoint.url() });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}")?;
    stdout.flush()?;
    drop(stdout);
    eprintln!(
        "token_endpoint: listening on {} with {} client(s), token lifetime {}s",
        endpoint.addr(),
        args.clients.len(),
        args.lifetime.as_secs()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    eprintln!("token_endpoint: shutting down");
    endpoint.shutdown().await;
    Ok(())
}
