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

/// The addresses of `host` that may be connected to; an error naming why when none may.
pub fn allowed_addresses(
    guard: Guard,
    host: &str,
    found: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, String> {
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
        return Err(format!("{host} resolves only to refused addresses ({why})"));
    }
    Ok(allowed)
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addresses(guard, &host, found)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_name_that_resolves_to_a_private_address_is_refused_and_public_ones_kept() {
        let strict = Guard::default();
        let err = allowed_addresses(strict, "rebind.example", addrs(&["10.0.0.5:0"])).unwrap_err();
        assert_eq!(err, "rebind.example resolves only to refused addresses (private)");
        let err = allowed_addresses(strict, "meta.example", addrs(&["169.254.169.254:0"])).unwrap_err();
        assert!(err.contains("cloud_metadata"), "{err}");
        // A mixed answer keeps only what may be connected to.
        let kept = allowed_addresses(
            strict,
            "mixed.example",
            addrs(&["127.0.0.1:0", "93.184.216.34:0", "[fd00::1]:0"]),
        )
        .unwrap();
        assert_eq!(kept, addrs(&["93.184.216.34:0"]));
        let open = Guard { allow_private: true };
        assert_eq!(
            allowed_addresses(open, "intranet.example", addrs(&["10.0.0.5:0"])).unwrap(),
            addrs(&["10.0.0.5:0"])
        );
        assert!(
            allowed_addresses(strict, "empty.example", vec![])
                .unwrap_err()
                .contains("no address")
        );
    }
}
