//! Makes one delivery attempt: a POST under a timeout, redirects not followed, no proxy,
//! the response body read only up to a small cap, and every address checked by the
//! [`Guard`] — the resolver hands the connector only allowed addresses, and a literal
//! address in the URL is checked before anything is sent — so what is checked is what is
//! connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::{Outcome, parse_retry_after};
use super::ssrf::Guard;

/// Most bytes of a response body read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Resolves names and keeps only the addresses the guard allows.
#[derive(Debug)]
struct GuardedResolver(Guard);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.map_or("no address", |w| w.label());
                return Err(format!("{host} resolves only to refused addresses ({why})").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends delivery attempts.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Guard,
}

impl Sender {
    /// A sender whose attempts each end within `timeout` (connect and answer).
    pub fn new(guard: Guard, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .dns_resolver(Arc::new(GuardedResolver(guard)))
            .user_agent(concat!("rtgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with these settings builds");
        Sender { client, guard }
    }

    /// POSTs `body` with `headers` to `url`; how it ended.
    pub async fn send(&self, url: &str, headers: &[(&str, String)], body: Bytes) -> Outcome {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => return Outcome::Forbidden(format!("scheme {} is not http or https", u.scheme())),
            Err(e) => return Outcome::Forbidden(format!("invalid URL: {e}")),
        };
        // Literal addresses skip the resolver: checked here.
        let literal = parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(ip) = literal
            && let Err(why) = self.guard.check(ip)
        {
            return Outcome::Forbidden(format!("{ip} is {}", why.label()));
        }
        let mut request = self.client.post(parsed).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(mut response) => {
                let code = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // Read a little of the body (so the connection can be reused), never more.
                let mut read = 0;
                while read < MAX_RESPONSE_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Outcome::Status { code, retry_after }
            }
            Err(err) if err.is_timeout() => Outcome::Timeout,
            Err(err) => {
                let text = error_chain(&err);
                if text.contains("refused addresses") {
                    Outcome::Forbidden(text)
                } else {
                    Outcome::Connect(text)
                }
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
