//! The delivery engine's executor: takes deliveries from the queue and makes them, each
//! attempt judged by [`RetryPolicy`], each destination (URL) behind its own
//! concurrency limit and [`Breaker`], so that a dead or slow endpoint holds up only its
//! own deliveries. A delivery given up is dead-lettered and announced to the backend
//! (`delivery.failed`).
//!
//! New deliveries come claimed from [`Deliverer::submit`] and start at once; a poll loop
//! claims what is due (retries, and deliveries whose node died) on every node.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtgate_protocol::pb::{self, DestinationKind};

use super::policy::{Breaker, BreakerConfig, BreakerState, Outcome, RetryPolicy, Verdict};
use super::queue::{ClaimLimits, Claimed, DeliveryQueue, Queued, destination_key};
use super::sender::Sender;
use super::signing;
use crate::connection::unix_ms;
use crate::engine::{EngineError, RedisCommands};

/// Settings of the executor.
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    /// When to retry and when to give up.
    pub policy: RetryPolicy,
    /// Each destination's breaker.
    pub breaker: BreakerConfig,
    /// An attempt's timeout (connect and answer).
    pub timeout: Duration,
    /// Attempts in flight to one destination at once.
    pub per_destination: usize,
    /// Deliveries this node holds at once (in flight or waiting for their destination).
    pub max_held: usize,
    /// How often the queue is polled for due deliveries.
    pub poll: Duration,
    /// Where `delivery.failed` notices go besides the backend stream: a URL and the
    /// secret they are signed with.
    pub callback: Option<(String, String)>,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        DelivererConfig {
            policy: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            timeout: Duration::from_secs(5),
            per_destination: 16,
            max_held: 4096,
            poll: Duration::from_millis(200),
            callback: None,
        }
    }
}

/// How long a delivery that found its destination's line full waits in the queue.
const LINE_FULL_DELAY: Duration = Duration::from_millis(100);

/// How long a stopping executor waits for its attempts.
const DRAIN: Duration = Duration::from_secs(6);

/// One destination: its breaker, attempts in flight and deliveries waiting their turn
/// (at most as many as may be in flight: the rest wait in the queue).
#[derive(Debug)]
struct Destination {
    /// Its line's key in the queue.
    key: String,
    breaker: Breaker,
    running: usize,
    waiting: VecDeque<Claimed>,
    /// Until when its line is parked in the queue (breaker open).
    parked_until: Option<Instant>,
}

impl Destination {
    /// Until when its breaker holds deliveries back, if it does now.
    fn blocked(&self, now: Instant) -> Option<Instant> {
        self.breaker.blocked_until().filter(|until| *until > now)
    }
}

/// What to do with a delivery now.
enum Step {
    Start(Claimed),
    Defer(Claimed, Duration),
    Wait,
}

/// The executor of one node.
pub struct Deliverer {
    queue: Arc<dyn DeliveryQueue>,
    sender: Sender,
    config: DelivererConfig,
    destinations: Mutex<HashMap<String, Destination>>,
    held: AtomicUsize,
    wake: tokio::sync::Notify,
    /// The backend stream, on Redis.
    stream: Option<(Arc<RedisCommands>, String)>,
    /// Stopping: new deliveries are queued for other nodes, not started here.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// The label of a destination kind in metrics and logs.
pub fn kind_label(kind: DestinationKind) -> &'static str {
    match kind {
        DestinationKind::Unspecified => "unspecified",
        DestinationKind::Webhook => "webhook",
        DestinationKind::InboxWebhook => "inbox_webhook",
        DestinationKind::AgentBot => "agent_bot",
        DestinationKind::Hook => "hook",
        DestinationKind::Installation => "installation",
        DestinationKind::Backend => "backend",
        DestinationKind::Automation => "automation",
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Status { code, .. } => format!("HTTP {code}"),
        Outcome::Timeout => "timed out".into(),
        Outcome::Connect(e) => format!("connection failed: {e}"),
        Outcome::Forbidden(e) => format!("destination not allowed: {e}"),
    }
}

/// Whether an outcome says the endpoint is unhealthy (what opens its breaker).
fn unhealthy(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Status { code, .. } => super::policy::retryable_status(*code),
        Outcome::Timeout | Outcome::Connect(_) => true,
        Outcome::Forbidden(_) => false,
    }
}

impl Deliverer {
    /// An executor over `queue`, sending with `sender`; `stream` is the backend stream
    /// (`delivery.failed` notices), on Redis.
    pub fn new(
        queue: Arc<dyn DeliveryQueue>,
        sender: Sender,
        config: DelivererConfig,
        stream: Option<(Arc<RedisCommands>, String)>,
    ) -> Arc<Self> {
        Arc::new(Deliverer {
            queue,
            sender,
            config,
            destinations: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            stream,
        })
    }

    /// The queue it takes deliveries from.
    pub fn queue(&self) -> &Arc<dyn DeliveryQueue> {
        &self.queue
    }

    /// Queues deliveries (those already queued within the window are left out) and
    /// starts them.
    pub async fn submit(self: &Arc<Self>, deliveries: Vec<pb::Delivery>) -> Result<(), EngineError> {
        let now_ms = unix_ms() as i64;
        let now = Instant::now();
        // Held here no more than the node may hold, and nothing new while stopping.
        let full = self.stopping.load(Ordering::Relaxed)
            || self.held.load(Ordering::Relaxed) >= self.config.max_held;
        // Claimed at once unless the destination cannot take it now: then it waits in
        // the queue (until the breaker's probe, or for a claim when there is room).
        let items: Vec<Queued> = {
            let destinations = self.destinations.lock().expect("destinations lock");
            deliveries
                .into_iter()
                .map(|delivery| {
                    let not_before_ms = if full {
                        Some(now_ms)
                    } else {
                        destinations.get(&delivery.url).and_then(|d| {
                            if let Some(until) = d.blocked(now) {
                                Some(now_ms + (until - now).as_millis() as i64)
                            } else if d.running >= self.config.per_destination
                                && d.waiting.len() >= self.config.per_destination
                            {
                                Some(now_ms)
                            } else {
                                None
                            }
                        })
                    };
                    Queued {
                        delivery,
                        not_before_ms,
                    }
                })
                .collect()
        };
        let kinds: Vec<DestinationKind> = items.iter().map(|i| i.delivery.kind()).collect();
        let (claimed, new) = self.queue.enqueue(items, now_ms).await?;
        if new > 0 {
            self.wake.notify_one();
        }
        for kind in kinds.into_iter().take(new) {
            metrics::counter!("rtgate_outbound_queued_total", "kind" => kind_label(kind)).increment(1);
        }
        for c in claimed {
            self.held.fetch_add(1, Ordering::Relaxed);
            self.dispatch(c);
        }
        Ok(())
    }

    /// Starts a held delivery, lets it wait for its destination, or puts it back.
    fn dispatch(self: &Arc<Self>, claimed: Claimed) {
        // A destination is its URL: two webhooks on one host are separate endpoints (one
        // account's dead path must not hold up another's).
        let key = claimed.delivery.url.clone();
        let step = {
            let mut destinations = self.destinations.lock().expect("destinations lock");
            let dest = destinations.entry(key.clone()).or_insert_with(|| Destination {
                key: destination_key(&key),
                breaker: Breaker::new(self.config.breaker),
                running: 0,
                waiting: VecDeque::new(),
                parked_until: None,
            });
            let step = self.step(dest, claimed);
            self.park(&key, dest);
            step
        };
        self.take(key, step);
    }

    fn step(&self, dest: &mut Destination, claimed: Claimed) -> Step {
        let now = Instant::now();
        if let Some(until) = dest.blocked(now) {
            return Step::Defer(claimed, until - now);
        }
        if dest.running < self.config.per_destination && dest.breaker.allow(now) {
            dest.running += 1;
            return Step::Start(claimed);
        }
        if dest.waiting.len() < self.config.per_destination {
            dest.waiting.push_back(claimed);
            return Step::Wait;
        }
        Step::Defer(claimed, LINE_FULL_DELAY)
    }

    /// Parks the destination's line in the queue while its breaker is open (once per
    /// opening), so that no node claims its deliveries before the probe.
    fn park(self: &Arc<Self>, url: &str, dest: &mut Destination) {
        let Some(until) = dest.blocked(Instant::now()) else {
            return;
        };
        if dest.parked_until == Some(until) {
            return;
        }
        dest.parked_until = Some(until);
        let this = self.clone();
        let url = url.to_string();
        let until_ms = unix_ms() as i64 + until.saturating_duration_since(Instant::now()).as_millis() as i64;
        tokio::spawn(async move {
            if let Err(err) = this.queue.park(&url, until_ms).await {
                tracing::warn!(%err, "cannot park a destination's deliveries");
            }
        });
    }

    fn take(self: &Arc<Self>, key: String, step: Step) {
        match step {
            Step::Wait => {}
            Step::Start(claimed) => {
                let this = self.clone();
                tokio::spawn(async move { this.attempt(key, claimed).await });
            }
            Step::Defer(claimed, after) => {
                let this = self.clone();
                tokio::spawn(async move {
                    if this.too_old(&claimed.delivery) {
                        // Held back past its age bound (a breaker open for long): given
                        // up now, not kept waiting for an attempt that may not start.
                        let why = this.age_limit_reason();
                        this.give_up(claimed, why).await;
                    } else {
                        metrics::counter!("rtgate_outbound_deferred_total", "kind" => kind_label(claimed.delivery.kind()))
                            .increment(1);
                        let due = unix_ms() as i64 + after.as_millis() as i64;
                        if let Err(err) = this.queue.retry(&claimed, due).await {
                            tracing::warn!(delivery = %claimed.delivery.id, %err, "cannot put a delivery back");
                        }
                    }
                    this.release();
                });
            }
        }
    }

    /// Whether a delivery has outlived `--delivery-max-age`.
    fn too_old(&self, d: &pb::Delivery) -> bool {
        let age = (unix_ms() as i64 - d.queued_at_ms).max(0) as u128;
        age >= self.config.policy.max_age.as_millis()
    }

    fn age_limit_reason(&self) -> String {
        format!(
            "not delivered within {}s of being queued (--delivery-max-age)",
            self.config.policy.max_age.as_secs()
        )
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// One attempt, and what follows from it.
    async fn attempt(self: Arc<Self>, key: String, mut claimed: Claimed) {
        self.make(&key, &mut claimed).await;
        // The destination's slot, and whoever waited for it.
        let next = {
            let mut destinations = self.destinations.lock().expect("destinations lock");
            let mut steps = Vec::new();
            if let Some(dest) = destinations.get_mut(&key) {
                dest.running -= 1;
                // Whoever waited, in order: started while there is room, put back while
                // the breaker holds them.
                while !dest.waiting.is_empty() {
                    let now = Instant::now();
                    if let Some(until) = dest.blocked(now) {
                        let claimed = dest.waiting.pop_front().expect("not empty");
                        steps.push(Step::Defer(claimed, until - now));
                    } else if dest.running < self.config.per_destination && dest.breaker.allow(now) {
                        dest.running += 1;
                        steps.push(Step::Start(dest.waiting.pop_front().expect("not empty")));
                    } else {
                        break;
                    }
                }
                if dest.running == 0
                    && dest.waiting.is_empty()
                    && matches!(dest.breaker.state(), BreakerState::Closed(0))
                {
                    destinations.remove(&key);
                }
            }
            steps
        };
        for step in next {
            self.take(key.clone(), step);
        }
        self.release();
    }

    /// No attempt was made after all (the claim was lost): a probe it held may go again.
    fn abandon(&self, key: &str) {
        if let Some(dest) = self.destinations.lock().expect("destinations lock").get_mut(key) {
            dest.breaker.abandon();
        }
    }

    /// Records an attempt's outcome in the destination's breaker; until when the breaker
    /// now holds deliveries back, if it does.
    fn record(self: &Arc<Self>, key: &str, outcome: &Outcome) -> Option<Instant> {
        let mut destinations = self.destinations.lock().expect("destinations lock");
        let dest = destinations.get_mut(key)?;
        // Open or probing (half open) both count as open for the gauge.
        let was_open = !matches!(dest.breaker.state(), BreakerState::Closed(_));
        let now = Instant::now();
        dest.breaker.record(!unhealthy(outcome), now);
        let open = !matches!(dest.breaker.state(), BreakerState::Closed(_));
        if open != was_open {
            metrics::gauge!("rtgate_outbound_breakers_open").increment(if open { 1.0 } else { -1.0 });
            tracing::info!(destination = %key, open, "delivery breaker");
        }
        if matches!(dest.breaker.state(), BreakerState::Open(_)) {
            self.park(key, dest);
        }
        dest.blocked(now)
    }

    /// Sends the delivery, records the outcome in the breaker and the verdict in the
    /// queue; nothing when the claim was lost (no attempt is made).
    async fn make(self: &Arc<Self>, key: &str, claimed: &mut Claimed) {
        let margin = self.config.timeout.as_millis() as i64 + 2_000;
        if claimed.lease_until_ms - (unix_ms() as i64) < margin {
            match self.queue.extend(claimed, unix_ms() as i64).await {
                Ok(true) => {}
                Ok(false) => return self.abandon(key),
                Err(err) => {
                    tracing::warn!(delivery = %claimed.delivery.id, %err, "cannot renew a delivery's claim");
                    return self.abandon(key);
                }
            }
        }
        if self.too_old(&claimed.delivery) {
            // Its last chance passed while it waited (a line parked for long, or full).
            self.abandon(key);
            let why = self.age_limit_reason();
            return self.give_up(claimed.clone(), why).await;
        }
        let d = &mut claimed.delivery;
        let kind = kind_label(d.kind());
        let now_s = unix_ms() / 1000;
        let secret = (!d.secret.is_empty()).then_some(d.secret.as_bytes());
        let mut headers = signing::headers(Some(&d.id), secret, now_s, &d.body);
        headers.extend(d.headers.iter().map(|h| (h.name.as_str(), h.value.clone())));
        let started = Instant::now();
        let outcome = self.sender.send(&d.url, &headers, d.body.clone()).await;
        metrics::histogram!("rtgate_outbound_attempt_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        d.attempts += 1;
        let blocked = self.record(key, &outcome);
        let now = unix_ms() as i64;
        let age = Duration::from_millis((now - d.queued_at_ms).max(0) as u64);
        let verdict = self
            .config
            .policy
            .judge(&outcome, d.attempts, age, rand::random::<f64>());
        let result = match verdict {
            Verdict::Delivered => {
                metrics::counter!("rtgate_outbound_attempts_total", "kind" => kind, "outcome" => "delivered")
                    .increment(1);
                if d.occurred_at_ms > 0 {
                    metrics::histogram!("rtgate_outbound_lag_seconds", "kind" => kind)
                        .record((now - d.occurred_at_ms).max(0) as f64 / 1000.0);
                }
                self.queue.done(claimed).await
            }
            Verdict::Retry(after) => {
                metrics::counter!("rtgate_outbound_attempts_total", "kind" => kind, "outcome" => "retry")
                    .increment(1);
                d.last_error = describe(&outcome);
                // Not before the breaker lets a probe through: the line stays parked.
                let held_back = blocked.map_or(0, |until| {
                    until.saturating_duration_since(Instant::now()).as_millis() as i64
                });
                let due = now + (after.as_millis() as i64).max(held_back);
                self.queue.retry(claimed, due).await
            }
            Verdict::GiveUp(why) => {
                metrics::counter!("rtgate_outbound_attempts_total", "kind" => kind, "outcome" => "failed")
                    .increment(1);
                return self.give_up(claimed.clone(), why).await;
            }
        };
        match result {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                delivery = %claimed.delivery.id,
                "a delivery's claim lapsed during its attempt; another node records it"
            ),
            // The claim lapses and the delivery is attempted again (same id).
            Err(err) => {
                tracing::warn!(delivery = %claimed.delivery.id, %err, "cannot record a delivery's outcome")
            }
        }
    }

    /// Gives a delivery up: the backend is told first, then it becomes a dead letter — so
    /// a crash in between makes the notice twice (same id), never not at all. When the
    /// backend cannot be told now, the delivery goes back to the queue and is given up
    /// again (and announced) on its next turn.
    async fn give_up(self: &Arc<Self>, mut claimed: Claimed, why: String) {
        let d = &mut claimed.delivery;
        d.last_error = why;
        d.failed_at_ms = unix_ms() as i64;
        tracing::warn!(delivery = %d.id, kind = kind_label(d.kind()), url = %d.url, error = %d.last_error, attempts = d.attempts, "delivery given up");
        if d.kind() != DestinationKind::Backend
            && let Err(err) = self.announce_failure(d).await
        {
            tracing::warn!(delivery = %d.id, %err, "cannot tell the backend of a failed delivery; retried");
            let due = unix_ms() as i64 + 1_000;
            if let Err(err) = self.queue.retry(&claimed, due).await {
                tracing::warn!(delivery = %claimed.delivery.id, %err, "cannot put a delivery back");
            }
            return;
        }
        if let Err(err) = self.queue.dead(&claimed).await {
            tracing::warn!(delivery = %claimed.delivery.id, %err, "cannot dead-letter a delivery; its claim lapses and it is given up again");
        }
    }

    /// Tells the backend a delivery was given up: on the backend stream (Redis) and to
    /// the callback, when there is one. The notice's id is the delivery's and its
    /// queueing's: the same for every announcement of one failure, new after a replay.
    async fn announce_failure(self: &Arc<Self>, d: &pb::Delivery) -> Result<(), EngineError> {
        let notice = pb::BackendNotice {
            id: crate::ids::derived_uuid(&[
                b"delivery.failed",
                d.id.as_bytes(),
                &d.queued_at_ms.to_be_bytes(),
            ]),
            created_at_ms: unix_ms() as i64,
            kind: Some(pb::backend_notice::Kind::DeliveryFailed(pb::DeliveryFailed {
                delivery_id: d.id.clone(),
                kind: d.kind,
                destination_id: d.destination_id,
                event_id: d.event_id.clone(),
                event: d.event.clone(),
                account_id: d.account_id,
                conversation_display_id: d.conversation_display_id,
                message_id: d.message_id,
                attempts: d.attempts,
                error: d.last_error.clone(),
                failed_at_ms: d.failed_at_ms,
            })),
        };
        if !self.tell_backend(&notice, &d.event_id, d.account_id).await? {
            tracing::warn!(
                delivery = %d.id,
                "no backend stream or callback: delivery.failed stays in the dead letters only"
            );
        }
        Ok(())
    }

    /// Sends a notice to the backend: on the backend stream (Redis) and, with a callback,
    /// as a delivery of its own. True when a channel took it; false when there is none;
    /// an error when one failed (the caller may try again: the id makes it harmless).
    pub async fn tell_backend(
        self: &Arc<Self>,
        notice: &pb::BackendNotice,
        event_id: &str,
        account_id: u64,
    ) -> Result<bool, EngineError> {
        let kind = match &notice.kind {
            Some(pb::backend_notice::Kind::DeliveryFailed(_)) => "delivery_failed",
            Some(pb::backend_notice::Kind::Command(_)) => "command",
            None => "empty",
        };
        let json = serde_json::to_vec(notice).expect("a notice serializes");
        let mut told = false;
        let result = async {
            if let Some((commands, key)) = &self.stream {
                let _: redis::Value = commands
                    .command(
                        redis::cmd("XADD")
                            .arg(key)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(1_000_000)
                            .arg("*")
                            .arg("id")
                            .arg(&notice.id)
                            .arg("json")
                            .arg(&json),
                    )
                    .await?;
                told = true;
            }
            if let Some((url, secret)) = &self.config.callback {
                let callback = pb::Delivery {
                    id: notice.id.clone(),
                    kind: DestinationKind::Backend as i32,
                    url: url.clone(),
                    secret: secret.clone(),
                    body: Bytes::from(json.clone()),
                    event_id: event_id.to_string(),
                    event: kind.to_string(),
                    account_id,
                    ..Default::default()
                };
                self.submit(vec![callback]).await?;
                told = true;
            }
            Ok(told)
        }
        .await;
        let outcome = match &result {
            Ok(true) => "sent",
            Ok(false) => "unsent",
            Err(_) => "failed",
        };
        metrics::counter!("rtgate_backend_notices_total", "kind" => kind, "outcome" => outcome).increment(1);
        result
    }

    /// The lines this node has no room for now: breaker open, or full.
    fn busy(&self) -> std::collections::HashSet<String> {
        let now = Instant::now();
        let limit = self.config.per_destination;
        self.destinations
            .lock()
            .expect("destinations lock")
            .values()
            .filter(|d| d.blocked(now).is_some() || (d.running >= limit && d.waiting.len() >= limit))
            .map(|d| d.key.clone())
            .collect()
    }

    /// Runs until `stop` says so: claims due deliveries as capacity allows, and keeps the
    /// queue gauges current. Stopping, it waits (bounded) for attempts in flight and puts
    /// waiting deliveries back for other nodes.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Exported from the start (a dashboard shows 0, not "no data"); moved by breakers.
        metrics::gauge!("rtgate_outbound_breakers_open").increment(0.0);
        let mut last_gauges = Instant::now() - Duration::from_secs(10);
        let mut errors = 0u32;
        loop {
            if *stop.borrow() || stop.has_changed().is_err() {
                break;
            }
            let free = self
                .config
                .max_held
                .saturating_sub(self.held.load(Ordering::Relaxed));
            if free > 0 {
                let skip = self.busy();
                let limits = ClaimLimits {
                    total: free.min(512),
                    per_destination: self.config.per_destination,
                    skip: &skip,
                };
                match self.queue.claim(limits, unix_ms() as i64).await {
                    Ok(claimed) => {
                        errors = 0;
                        for c in claimed {
                            self.held.fetch_add(1, Ordering::Relaxed);
                            self.dispatch(c);
                        }
                    }
                    Err(err) => {
                        errors += 1;
                        if errors == 1 || errors.is_multiple_of(50) {
                            tracing::warn!(%err, "cannot claim deliveries");
                        }
                    }
                }
            }
            if last_gauges.elapsed() >= Duration::from_secs(1) {
                last_gauges = Instant::now();
                if let Ok(depth) = self.queue.depth().await {
                    metrics::gauge!("rtgate_outbound_queue_depth").set(depth.queued as f64);
                    metrics::gauge!("rtgate_outbound_dead_letters").set(depth.dead as f64);
                }
                metrics::gauge!("rtgate_outbound_held").set(self.held.load(Ordering::Relaxed) as f64);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = self.wake.notified() => {
                    // Capacity came back: claim again after a short pause (batching).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ = stop.changed() => {}
            }
        }
        self.stopping.store(true, Ordering::Relaxed);
        // Hand waiting deliveries back now rather than when their claims lapse.
        let waiting: Vec<Claimed> = {
            let mut destinations = self.destinations.lock().expect("destinations lock");
            destinations
                .values_mut()
                .flat_map(|d| d.waiting.drain(..))
                .collect()
        };
        let now = unix_ms() as i64;
        for c in waiting {
            if self.queue.retry(&c, now).await.is_err() {
                tracing::warn!(delivery = %c.delivery.id, "cannot hand a delivery back; its claim will lapse");
            }
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        let deadline = Instant::now() + DRAIN;
        while self.held.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
