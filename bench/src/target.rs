//! Targets: gateway URLs, loopback validation, tokens.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The host part of `scheme://host[:port][/path]`, without brackets.
pub fn url_host(url: &str) -> Result<&str, String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{url:?} is not a URL (scheme://host:port/...)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')
            .map(|(h, _)| h)
            .ok_or_else(|| format!("{url:?}: unterminated IPv6 address"))?
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(host)
}

/// Whether `host` is a loopback address (127.0.0.0/8, ::1 or `localhost`).
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses any URL whose host is not loopback: the bench only ever loads this machine.
pub fn require_loopback(url: &str) -> Result<(), String> {
    let host = url_host(url)?;
    if is_loopback_host(host) {
        Ok(())
    } else {
        Err(format!(
            "refusing {url:?}: rtgate-bench only targets loopback addresses (127.0.0.0/8, ::1)"
        ))
    }
}

/// One gateway node as the clients and the publisher see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `https://127.0.0.1:PORT/wt`
    pub wt_url: String,
    /// `ws://127.0.0.1:PORT/ws`
    pub ws_url: String,
    /// `http://127.0.0.1:PORT` (server API base).
    pub api_url: String,
    /// Hex SHA-256 of its development certificate.
    pub cert_hex: Option<String>,
}

impl Node {
    /// Checks every URL is loopback.
    pub fn validate(&self) -> Result<(), String> {
        require_loopback(&self.wt_url)?;
        require_loopback(&self.ws_url)?;
        require_loopback(&self.api_url)
    }
}

/// Which transport connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket only.
    Ws,
    /// WebTransport only.
    Wt,
    /// Half and half.
    Mix,
}

impl Transport {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "WebSocket",
            Transport::Wt => "WebTransport",
            Transport::Mix => "WS+WT mix",
        }
    }
}

/// Claims of a bench connection token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    account_id: u64,
    role: &'a str,
    inboxes: Vec<u64>,
    exp: u64,
}

/// Agents per account: connections are spread over accounts of this size (a large
/// Chatwoot account). Presence events of an account reach its agents only, as in
/// production; one account of 10,000 agents would turn every connect into a broadcast
/// to all of them.
pub const AGENTS_PER_ACCOUNT: u64 = 100;

/// An HS256 agent token for `sub` in `account`, valid for a day.
pub fn mint_token(secret: &str, sub: &str, account: u64) -> String {
    mint_token_as(secret, sub, account, "agent", vec![])
}

/// A connection token for `role` with these inboxes.
pub fn mint_token_as(secret: &str, sub: &str, account: u64, role: &str, inboxes: Vec<u64>) -> String {
    let exp = crate::util::unix_us() / 1_000_000 + 86_400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub,
            account_id: account,
            role,
            inboxes,
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing does not fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted() {
        for url in [
            "https://127.0.0.1:4433/wt",
            "ws://127.0.0.1:8080/ws",
            "http://127.9.3.1:80",
            "ws://[::1]:8080/ws",
            "http://localhost:8080/api",
            "redis://127.0.0.1:6379/0",
        ] {
            assert!(require_loopback(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn other_addresses_are_refused() {
        for url in [
            "https://10.0.0.1:4433/wt",
            "ws://example.com/ws",
            "http://192.168.1.2:8080",
            "ws://[2001:db8::1]:80/ws",
            "http://user@8.8.8.8:80/",
            "127.0.0.1:8080",
            "http://:80/",
        ] {
            assert!(require_loopback(url).is_err(), "{url}");
        }
    }

    #[test]
    fn host_parsing() {
        assert_eq!(url_host("ws://[::1]:8080/ws"), Ok("::1"));
        assert_eq!(url_host("http://127.0.0.1"), Ok("127.0.0.1"));
        assert_eq!(url_host("redis://127.0.0.1:6379/0"), Ok("127.0.0.1"));
    }
}
