//! Outbound HTTP delivery (webhooks, agent bots, integration hooks), in sans-IO parts:
//!
//! - [`signing`]: Chatwoot's request headers — delivery id, timestamp and the `sha256=`
//!   HMAC of `"<timestamp>.<body>"` with the destination's secret.
//! - [`policy`]: what an attempt's outcome means (delivered, retry when, give up why),
//!   exponential backoff with full jitter honouring `Retry-After`, bounded by attempts
//!   and age; and the per-destination circuit breaker.
//! - [`ssrf`]: which addresses a delivery may connect to.
//! - [`sender`]: one attempt over HTTP, every connected address checked by the guard.
//!
//! Each is a plain function or state machine with time as an input; the executor that
//! performs requests is a thin adapter over them.

pub mod policy;
pub mod sender;
pub mod signing;
pub mod ssrf;
