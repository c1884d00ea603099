//! The `token` command against a local endpoint: it describes the token and prints the
//! token itself only when asked.

use dscc_testkit as support;

use std::process::{Command, Output};

use support::token_endpoint::TokenEndpoint;

/// Runs `dscc-token-operator token` against `url` off the async runtime (the endpoint under
/// test runs on it).
async fn run_token(url: String, secret: &'static str, extra: &'static [&'static str]) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_dscc-token-operator"))
            .args(["token", "--allow-insecure-token-url", "--token-url", &url])
            .args(extra)
            .env("DSCC_CLIENT_ID", "cli-client")
            .env("DSCC_CLIENT_SECRET", secret)
            .output()
            .expect("run dscc-token-operator token")
    })
    .await
    .expect("join the command")
}

#[tokio::test(flavor = "multi_thread")]
async fn describes_the_token_without_printing_it() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.set_client("cli-client", "cli-secret-value-1234");
    let output = run_token(endpoint.url(), "cli-secret-value-1234", &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "token failed: {output:?}");
    let issued = endpoint.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert!(stdout.contains("expires at:"), "{stdout}");
    assert!(stdout.contains("lifetime:    7199s"), "{stdout}");
    assert!(
        stdout.contains("client_id: \"cli-client\""),
        "JWT claims shown: {stdout}"
    );
    assert!(
        !stdout.contains(&issued[0]),
        "the token must not be printed: {stdout}"
    );
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains("cli-secret-value-1234"));
}

#[tokio::test(flavor = "multi_thread")]
async fn prints_the_token_with_print_token() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.set_client("cli-client", "cli-secret-value-1234");
    let output = run_token(endpoint.url(), "cli-secret-value-1234", &["--print-token"]).await;
    assert!(output.status.success(), "token failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&endpoint.issued_tokens()[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_client_fails_with_a_clear_message_and_no_secret() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.set_client("cli-client", "the-right-secret");
    let output = run_token(endpoint.url(), "a-wrong-secret-5678", &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(!stderr.contains("a-wrong-secret-5678"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_refused_without_the_development_flag() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.set_client("cli-client", "cli-secret-value-1234");
    let url = endpoint.url();
    assert!(
        url.starts_with("http://"),
        "the test endpoint speaks plain http"
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_dscc-token-operator"))
            .args(["token", "--token-url", &url])
            .env("DSCC_CLIENT_ID", "cli-client")
            .env("DSCC_CLIENT_SECRET", "cli-secret-value-1234")
            .output()
            .expect("run dscc-token-operator token")
    })
    .await
    .expect("join the command");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("uses plain http") && stderr.contains("--allow-insecure-token-url"),
        "the error says what is wrong and which flag allows it: {stderr}"
    );
    assert!(!stderr.contains("cli-secret-value-1234"));
    assert_eq!(
        endpoint.request_count(),
        0,
        "the client secret was never sent over plain http"
    );
    // The same request with the development flag reaches the endpoint.
    let output = run_token(endpoint.url(), "cli-secret-value-1234", &[]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(endpoint.request_count(), 1);
}
