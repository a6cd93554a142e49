//! Outbound HTTP delivery (webhooks, agent bots, integration hooks, the installation
//! webhook):
//!
//! - [`directory`] and [`store`]: the destinations the backend mirrors into rtgate, kept
//!   by the engine, with each node's copy that the listeners read.
//! - [`listeners`]: Chatwoot's Webhook, AgentBot, Hook and InstallationWebhook listeners,
//!   deciding which deliveries an event makes (sans-IO).
//! - [`queue`]: the durable queue deliveries wait in, claimed by one node per attempt.
//! - [`executor`]: makes them — per-destination concurrency and breaker, retries,
//!   dead letters, `delivery.failed` for the backend.
//! - [`signing`]: Chatwoot's request headers — delivery id, timestamp and the `sha256=`
//!   HMAC of `"<timestamp>.<body>"` with the destination's secret.
//! - [`policy`]: what an attempt's outcome means (delivered, retry when, give up why),
//!   exponential backoff with full jitter honouring `Retry-After`, bounded by attempts
//!   and age; and the per-destination circuit breaker.
//! - [`ssrf`]: which addresses a delivery may connect to.
//! - [`sender`]: one attempt over HTTP, every connected address checked by the guard.

pub mod directory;
pub mod executor;
pub mod listeners;
pub mod policy;
pub mod queue;
pub mod sender;
pub mod signing;
pub mod ssrf;
pub mod store;
