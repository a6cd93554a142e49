//! The `rtgate` binary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rtgate_server::dev::ConnectionClaims;
use rtgate_server::{Config, Gateway};
use tracing_subscriber::EnvFilter;

async fn terminate() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn print_dev_help(gw: &Gateway) {
    let Some(dev) = &gw.dev else { return };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let token = dev.sign(&ConnectionClaims {
        sub: "1".into(),
        account_id: 1,
        role: "admin".into(),
        inboxes: vec![1],
        exp,
    });
    let http = gw.http_addr;
    let port = http.port();
    println!(
        "\nrtgate is running in development mode (generated credentials; use --production with real ones).\n\
         \n  JWT secret (HS256): {secret}\
         \n  API key:            {api_key}\
         \n  WebTransport:       https://127.0.0.1:{wt_port}/wt  (certificate sha-256 {hash})\
         \n  WebSocket:          ws://127.0.0.1:{port}/ws\
         \n  Certificate hash:   http://127.0.0.1:{port}/dev/cert-hash\
         \n\n  A token for user 1 (admin of account 1, inbox 1), valid 24 h:\n  {token}\
         \n\n  Publish to that user's account room:\
         \n  curl -s -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\
         \n    -d '{{\"rooms\":[\"account:1\"],\"event\":{{\"name\":\"message.created\",\"accountId\":\"1\",\"json\":\"{{\\\"content\\\":\\\"hi\\\"}}\"}}}}' \\\
         \n    http://127.0.0.1:{port}/api/v1/publish\n",
        secret = dev.jwt_secret,
        api_key = dev.api_key,
        wt_port = gw.wt_addr.port(),
        hash = gw.cert_sha256,
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RTGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let config = Config::parse();
    let drain = config.drain_timeout;
    let delay = config.shutdown_delay;
    let gateway = match Gateway::start(config).await {
        Ok(gw) => gw,
        Err(err) => {
            eprintln!("rtgate: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(sha256 = %gateway.cert_sha256, dev = gateway.dev_cert, "webtransport certificate");
    print_dev_help(&gateway);
    terminate().await;
    // Load balancers see /readyz fail and stop sending new clients; then everyone is told.
    gateway.node.begin_drain();
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "draining: /readyz answers 503 before clients are told to go"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = terminate() => {}
        }
    }
    tracing::info!("shutting down: advising clients to reconnect and draining");
    let left = gateway.shutdown(drain.max(Duration::from_millis(1))).await;
    if left > 0 {
        tracing::warn!(left, "connections still open after the drain timeout");
    }
    std::process::ExitCode::SUCCESS
}
