//! The bus: reads entries from the queue and runs every listener that handles each one.
//!
//! - Events of one conversation are handled in the order they were queued, by every
//!   listener; events of other conversations (and other listeners) in parallel.
//! - Listeners are isolated: each has its own lane per conversation. One that fails is
//!   retried alone, with backoff, and holds back only its own later work on that
//!   conversation; the other listeners go on. A failure of the engine's availability
//!   (Redis unreachable) is retried for as long as it lasts; any other failure counts, and
//!   after `max_attempts` the entry is dead-lettered for that listener with the error.
//! - Listeners only decide; [`execute`] carries their actions out (engine publishes).
//! - An entry is acknowledged once every listener is done with it; a node that dies before
//!   leaves it pending for the next reader, which runs the listeners again (their actions
//!   are idempotent: publishes carry the event's id as idempotency key).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use prost::Message;
use rtgate_protocol::pb::{self, server_frame::Kind as S};

use super::queue::{Entry, EventQueue, Poison};
use super::state::ListenerState;
use super::{Action, Listener, StateView, ordering_key};
use crate::delivery::executor::Deliverer;
use crate::delivery::store::Destinations;
use crate::engine::{Engine, EngineError, with_timeout};

/// Settings of the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Entries read at once.
    pub batch: usize,
    /// Attempts before an entry is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubled on every further attempt, at most `max_retry_delay`.
    pub retry_delay: Duration,
    /// Longest retry delay.
    pub max_retry_delay: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            batch: 256,
            max_attempts: 5,
            retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(10),
        }
    }
}

/// What the listeners need besides the engine: the executor that makes their deliveries
/// and tells the backend their commands, the mirror they read (brought up to date before
/// each round), and the state they keep.
#[derive(Clone)]
pub struct ListenerParts {
    /// Queues and makes deliveries; tells the backend.
    pub deliverer: Arc<Deliverer>,
    /// The mirrored destinations and configuration.
    pub destinations: Arc<Destinations>,
    /// The listeners' state.
    pub state: Arc<dyn ListenerState>,
}

impl std::fmt::Debug for ListenerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerParts").finish_non_exhaustive()
    }
}

fn parts<'a>(delivery: Option<&'a ListenerParts>, what: &str) -> Result<&'a ListenerParts, EngineError> {
    delivery.ok_or_else(|| EngineError::Internal(format!("no {what}")))
}

/// Whether a log line of this kind is due: at most one a minute for each `kind`, so that
/// what repeats on every event is counted in metrics and logged without flooding.
fn once_a_minute(kind: &str) -> bool {
    static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
    let mut last = LAST.lock().expect("log throttle lock");
    let last = last.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match last.get(kind) {
        Some(at) if now.duration_since(*at) < Duration::from_secs(60) => false,
        _ => {
            last.insert(kind.to_string(), now);
            true
        }
    }
}

/// Tells the backend a command; a node with neither stream nor callback drops it, loudly.
async fn tell(parts: &ListenerParts, id: &str, command: &pb::Command) -> Result<(), EngineError> {
    let notice = pb::BackendNotice {
        id: id.to_string(),
        created_at_ms: crate::connection::unix_ms() as i64,
        kind: Some(pb::backend_notice::Kind::Command(command.clone())),
    };
    let told = parts
        .deliverer
        .tell_backend(&notice, &command.event_id, command.account_id)
        .await?;
    if !told {
        if once_a_minute("dropped-command") {
            tracing::warn!(command = %id, listener = %command.listener,
                "no backend stream or callback: a command was dropped (counted in rtgate_backend_notices_total; logged once a minute)");
        }
        return Ok(());
    }
    metrics::counter!("rtgate_commands_total", "listener" => command.listener.clone(), "outcome" => "sent")
        .increment(1);
    Ok(())
}

/// Carries out one listener action against the engine (and the delivery queue).
pub async fn execute(
    engine: &dyn Engine,
    delivery: Option<&ListenerParts>,
    event_id: &str,
    action: &Action,
) -> Result<(), EngineError> {
    match action {
        Action::Deliver(deliveries) => {
            parts(delivery, "delivery executor")?
                .deliverer
                .submit(deliveries.clone())
                .await?;
        }
        Action::Command { id, command } => tell(parts(delivery, "backend channel")?, id, command).await?,
        Action::CommandOnce { claim, id, command } => {
            let parts = parts(delivery, "backend channel")?;
            // The owner is the event and the decision: the same event handled again (a
            // retry, another reader) is granted its claim again; another event is not.
            let owner = format!("{}/{id}", command.event_id);
            if parts.state.claim(claim, &owner).await? {
                tell(parts, id, command).await?;
            } else {
                metrics::counter!("rtgate_commands_total", "listener" => command.listener.clone(), "outcome" => "already_decided")
                    .increment(1);
                tracing::debug!(command = %id, %claim, "decided before (here or on another node): not sent");
            }
        }
        Action::Remember { key, value } => {
            parts(delivery, "listener state")?
                .state
                .remember(key, value)
                .await?;
        }
        Action::AddMembers { key, members } => {
            parts(delivery, "listener state")?
                .state
                .add_members(key, members)
                .await?;
        }
        Action::Publish { rooms, event } => {
            let encoded = event.encode_to_vec();
            // Rooms are independent: published together, each in its own order.
            let published = join_all(
                rooms
                    .iter()
                    .map(|room| with_timeout(engine.publish(room, &encoded, Some(event_id)))),
            )
            .await;
            for result in published {
                result?;
            }
            metrics::counter!("rtgate_events_published_total", "source" => "bus")
                .increment(rooms.len() as u64);
        }
        Action::Ephemeral {
            rooms,
            event,
            exclude,
            private,
        } => {
            for room in rooms {
                let frame = Bytes::from(
                    pb::ServerFrame {
                        kind: Some(S::Ephemeral(pb::Ephemeral {
                            room: room.to_string(),
                            event: Some(event.clone()),
                        })),
                    }
                    .encode_to_vec(),
                );
                with_timeout(engine.publish_ephemeral(
                    room,
                    frame,
                    exclude.as_ref().map(|r| r.as_str()),
                    *private,
                ))
                .await?;
            }
        }
    }
    Ok(())
}

/// One listener's work on one entry.
#[derive(Debug)]
struct Work {
    entry: Arc<Entry>,
    /// The listener's index.
    listener: usize,
    /// Failed attempts so far (counting earlier readers' deliveries).
    attempts: u32,
    /// Retries so far, transient failures included (for the backoff).
    retries: u32,
    /// Not before.
    due: Instant,
}

/// Where a listener's work on a conversation waits its turn: one lane per listener and
/// conversation, so that a failing listener holds back only its own later work.
type LaneKey = (usize, (u64, u64));

/// The bus of one node.
pub struct Bus {
    queue: Arc<dyn EventQueue>,
    engine: Arc<dyn Engine>,
    listeners: Vec<Mutex<Box<dyn Listener>>>,
    names: Vec<&'static str>,
    config: BusConfig,
    delivery: Option<ListenerParts>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("listeners", &self.names).finish()
    }
}

/// Why a listener's work on an entry failed: the error, and whether it was only the
/// engine being unavailable (retried without counting).
struct Failure(String, bool);

/// Most pieces of work held back behind failures at once: beyond, the bus reads nothing
/// new until some are done (the entries stay in the queue meanwhile).
const MAX_HELD: usize = 10_000;

/// How long a stopping bus goes on handling what it has read or what is queued.
const DRAIN: Duration = Duration::from_secs(5);

/// What the bus is in the middle of.
#[derive(Default)]
struct InFlight {
    /// Work waiting behind a failure, per lane, in order.
    held: HashMap<LaneKey, VecDeque<Work>>,
    /// Entries being handled: how many listeners are not done with each.
    remaining: HashMap<String, usize>,
}

impl Bus {
    /// A bus running `listeners` on the entries of `queue`.
    pub fn new(
        queue: Arc<dyn EventQueue>,
        engine: Arc<dyn Engine>,
        listeners: Vec<Box<dyn Listener>>,
        config: BusConfig,
        delivery: Option<ListenerParts>,
    ) -> Arc<Self> {
        let names = listeners.iter().map(|l| l.name()).collect();
        Arc::new(Bus {
            queue,
            engine,
            listeners: listeners.into_iter().map(Mutex::new).collect(),
            names,
            config,
            delivery,
        })
    }

    /// Runs listener `i` on an event and carries its actions out.
    async fn handle(&self, event: &pb::DomainEvent, i: usize) -> Result<(), Failure> {
        let name = self.names[i];
        let started = Instant::now();
        let reads = self.listeners[i].lock().expect("listener lock").reads(event);
        let view = if reads.is_empty() {
            StateView::default()
        } else {
            let parts = parts(self.delivery.as_ref(), "listener state")
                .map_err(|e| Failure(format!("{name}: {e}"), false))?;
            let reading = Instant::now();
            let view = parts.state.read(&reads).await.map_err(|err| {
                let transient = matches!(err, EngineError::Unavailable(_));
                Failure(format!("{name}: reading its state: {err}"), transient)
            })?;
            metrics::histogram!("rtgate_listener_state_read_seconds", "listener" => name)
                .record(reading.elapsed().as_secs_f64());
            view
        };
        let decided = self.listeners[i]
            .lock()
            .expect("listener lock")
            .decide(event, &view);
        let actions = match decided {
            Ok(actions) => actions,
            Err(skip) => {
                if skip == super::Skip::Unconfigured && once_a_minute(name) {
                    tracing::info!(listener = name, event = %event.id, name = %event.name, account = event.account_id,
                        "skipped: the mirrored configuration it needs is missing (counted; logged once a minute per listener)");
                }
                metrics::counter!("rtgate_listener_events_total", "listener" => name, "outcome" => skip.label())
                    .increment(1);
                return Ok(());
            }
        };
        let mut result = Ok(());
        for action in &actions {
            result = execute(&*self.engine, self.delivery.as_ref(), &event.id, action).await;
            if result.is_err() {
                break;
            }
        }
        metrics::histogram!("rtgate_listener_seconds", "listener" => name)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics::counter!("rtgate_listener_events_total", "listener" => name, "outcome" => "handled")
                    .increment(1);
                if event.occurred_at_ms > 0 {
                    let now_ms = crate::connection::unix_ms() as i64;
                    let lag = (now_ms - event.occurred_at_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!("rtgate_event_lag_seconds").record(lag);
                }
                Ok(())
            }
            Err(err) => {
                metrics::counter!("rtgate_listener_events_total", "listener" => name, "outcome" => "failed")
                    .increment(1);
                tracing::debug!(listener = name, event = %event.id, %err, "listener failed");
                let transient = matches!(err, EngineError::Unavailable(_));
                Err(Failure(format!("{name}: {err}"), transient))
            }
        }
    }

    fn retry_delay(&self, retries: u32) -> Duration {
        let factor = 1u32 << retries.saturating_sub(1).min(16);
        (self.config.retry_delay * factor).min(self.config.max_retry_delay)
    }

    /// Runs one lane (a listener on a conversation) in order; returns the work to retry
    /// (the first that failed and everything after it) and the entries this listener is
    /// done with (handled or given up).
    async fn run_lane(&self, mut works: VecDeque<Work>) -> (VecDeque<Work>, Vec<String>) {
        let mut finished = Vec::new();
        while let Some(mut work) = works.pop_front() {
            if work.due > Instant::now() || !self.queue.holds() {
                works.push_front(work);
                break;
            }
            let Ok(event) = &work.entry.event else {
                finished.push(work.entry.id.clone());
                continue;
            };
            match self.handle(event, work.listener).await {
                Ok(()) => finished.push(work.entry.id.clone()),
                Err(Failure(error, transient)) => {
                    work.retries += 1;
                    if !transient {
                        work.attempts += 1;
                    }
                    if work.attempts >= self.config.max_attempts {
                        let reason = format!("failed {} times; last: {error}", work.attempts);
                        self.dead_letter(&work.entry, &reason).await;
                        finished.push(work.entry.id.clone());
                        continue;
                    }
                    metrics::counter!("rtgate_events_retried_total", "listener" => self.names[work.listener])
                        .increment(1);
                    work.due = Instant::now() + self.retry_delay(work.retries);
                    works.push_front(work);
                    break;
                }
            }
        }
        (works, finished)
    }

    async fn ack(&self, entries: &[String]) {
        if let Err(err) = self.queue.ack(entries).await {
            // Still pending: the queue reads them again, and they are handled again,
            // harmlessly (idempotent publishes).
            tracing::warn!(entries = entries.len(), %err, "cannot acknowledge events");
        }
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str) {
        metrics::counter!("rtgate_events_dead_lettered_total").increment(1);
        tracing::warn!(entry = %entry.id, reason, "event dead-lettered");
        if let Err(err) = self.queue.dead_letter(entry, reason).await {
            tracing::warn!(entry = %entry.id, %err, "cannot dead-letter an event");
        }
    }

    /// Runs until `stop` says so; then goes on for a little while with what is queued
    /// (bounded by [`DRAIN`]) and gives the queue up.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut flight = InFlight::default();
        let mut read_errors = 0u32;
        let mut stopping: Option<Instant> = None;
        loop {
            if stopping.is_none() && (*stop.borrow() || stop.has_changed().is_err()) {
                stopping = Some(Instant::now());
            }
            if let Some(since) = stopping
                && since.elapsed() >= DRAIN
            {
                break;
            }
            let next_due = flight
                .held
                .values()
                .filter_map(|w| w.front())
                .map(|w| w.due)
                .min();
            let mut wait = match next_due {
                Some(due) => due
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            if stopping.is_some() {
                wait = Duration::ZERO;
            }
            let held_count: usize = flight.held.values().map(VecDeque::len).sum();
            let entries = if held_count >= MAX_HELD {
                tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                Vec::new()
            } else {
                let read = tokio::select! {
                    read = self.queue.read(self.config.batch, wait) => Some(read),
                    _ = stop.changed(), if stopping.is_none() => None,
                };
                match read {
                    None => continue,
                    Some(Ok(entries)) => {
                        read_errors = 0;
                        entries
                    }
                    Some(Err(err)) => {
                        read_errors += 1;
                        tracing::warn!(%err, "cannot read the event queue");
                        let pause = Duration::from_millis(100 * u64::from(read_errors.min(20)));
                        tokio::time::sleep(pause).await;
                        Vec::new()
                    }
                }
            };
            if stopping.is_some() && entries.is_empty() && flight.held.is_empty() {
                break;
            }
            self.clone().round(&mut flight, entries).await;
            if !self.queue.holds() {
                // Another node reads now; what was in flight is pending for it.
                flight = InFlight::default();
            }
        }
        self.queue.release().await;
    }

    /// Spreads newly read entries over their lanes (behind the held work), runs every
    /// lane, and acknowledges the entries every listener is done with.
    async fn round(self: Arc<Self>, flight: &mut InFlight, entries: Vec<Entry>) {
        if let Some(parts) = &self.delivery
            && !entries.is_empty()
            && let Err(err) = parts.destinations.sync().await
        {
            tracing::warn!(%err, "cannot reload the destinations; deciding with the copy at hand");
        }
        let mut done: Vec<String> = Vec::new();
        let mut lanes: Vec<LaneKey> = Vec::new();
        let mut groups: HashMap<LaneKey, VecDeque<Work>> = HashMap::new();
        for (lane, works) in flight.held.drain() {
            lanes.push(lane);
            groups.insert(lane, works);
        }
        for entry in entries {
            // An entry read again (this consumer's pending list) while still in flight.
            if flight.remaining.contains_key(&entry.id) {
                continue;
            }
            let event = match &entry.event {
                Ok(event) => event,
                Err(Poison::Duplicate) => {
                    metrics::counter!("rtgate_events_ingested_total", "source" => "stream", "outcome" => "duplicate")
                        .increment(1);
                    done.push(entry.id);
                    continue;
                }
                Err(Poison::Refused(reason)) => {
                    let reason = reason.clone();
                    self.dead_letter(&entry, &reason).await;
                    done.push(entry.id);
                    continue;
                }
            };
            let handling: Vec<usize> = (0..self.listeners.len())
                .filter(|&i| {
                    self.listeners[i]
                        .lock()
                        .expect("listener lock")
                        .handles(&event.name)
                })
                .collect();
            if handling.is_empty() {
                done.push(entry.id);
                continue;
            }
            let key = ordering_key(event);
            let attempts = entry.attempts;
            flight.remaining.insert(entry.id.clone(), handling.len());
            let entry = Arc::new(entry);
            for listener in handling {
                let lane = (listener, key);
                groups
                    .entry(lane)
                    .or_insert_with(|| {
                        lanes.push(lane);
                        VecDeque::new()
                    })
                    .push_back(Work {
                        entry: entry.clone(),
                        listener,
                        attempts,
                        retries: 0,
                        due: Instant::now(),
                    });
            }
        }
        let runs = lanes
            .into_iter()
            .filter_map(|k| groups.remove(&k).map(|w| (k, w)))
            .map(|(k, works)| {
                let bus = self.clone();
                async move { (k, bus.run_lane(works).await) }
            });
        for (lane, (rest, finished)) in join_all(runs).await {
            for id in finished {
                if let Some(left) = flight.remaining.get_mut(&id) {
                    *left -= 1;
                    if *left == 0 {
                        flight.remaining.remove(&id);
                        done.push(id);
                    }
                }
            }
            if !rest.is_empty() {
                flight.held.insert(lane, rest);
            }
        }
        self.ack(&done).await;
    }
}

#[cfg(test)]
mod tests {
    //! The bus on the in-memory queue and engine, with listeners and an engine that fail
    //! on demand.
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use rtgate_protocol::RoomName;

    use super::*;
    use crate::engine::{HistoryLimits, MemoryEngine, Published, RoomInfo, SubscribeOutcome};
    use crate::events::Skip;
    use crate::events::queue::MemoryQueue;
    use crate::hub::{Hub, ReplayCursor, ReplayPage, Subscriber};
    use crate::ids::{ConnectionId, StreamPos};
    use std::sync::Mutex;

    /// The embedded engine, failing publishes of event `a1` to `room` the next `failures`
    /// times.
    struct Flaky {
        inner: MemoryEngine,
        room: RoomName,
        failures: AtomicUsize,
        /// Fail as an unavailable engine (else as an internal error).
        unavailable: bool,
        /// Successful publishes: (room, event json), in order.
        log: Mutex<Vec<(String, String)>>,
    }

    #[async_trait]
    impl Engine for Flaky {
        async fn publish(
            &self,
            room: &RoomName,
            event: &[u8],
            key: Option<&str>,
        ) -> Result<Published, EngineError> {
            let json = pb::Event::decode(event).unwrap().json;
            if room == &self.room
                && json == "\"a1\""
                && self
                    .failures
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(if self.unavailable {
                    EngineError::Unavailable("flaky".into())
                } else {
                    EngineError::Internal("broken".into())
                });
            }
            self.log.lock().unwrap().push((room.to_string(), json));
            self.inner.publish(room, event, key).await
        }
        async fn subscribe(
            &self,
            sub: Arc<Subscriber>,
            since: Option<StreamPos>,
        ) -> Result<SubscribeOutcome, EngineError> {
            self.inner.subscribe(sub, since).await
        }
        async fn replay_page(
            &self,
            room: &RoomName,
            cursor: &ReplayCursor,
            max: usize,
        ) -> Result<ReplayPage, EngineError> {
            self.inner.replay_page(room, cursor, max).await
        }
        async fn unsubscribe(&self, room: &RoomName, conn: ConnectionId) {
            self.inner.unsubscribe(room, conn).await
        }
        async fn publish_ephemeral(
            &self,
            room: &RoomName,
            frame: Bytes,
            exclude: Option<&str>,
            private: bool,
        ) -> Result<(), EngineError> {
            self.inner.publish_ephemeral(room, frame, exclude, private).await
        }
        async fn room_info(&self, room: &RoomName) -> Result<RoomInfo, EngineError> {
            self.inner.room_info(room).await
        }
        fn hub(&self) -> &Arc<Hub> {
            self.inner.hub()
        }
    }

    /// Publishes every event into `room`, counting its decisions.
    struct Into {
        name: &'static str,
        room: RoomName,
        decided: Arc<AtomicUsize>,
    }

    impl Listener for Into {
        fn name(&self) -> &'static str {
            self.name
        }
        fn handles(&self, event_name: &str) -> bool {
            event_name != "account.created"
        }
        fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
            self.decided.fetch_add(1, Ordering::Relaxed);
            Ok(vec![Action::Publish {
                rooms: vec![self.room.clone()],
                event: pb::Event {
                    id: event.id.clone(),
                    name: event.name.clone(),
                    json: event.payload.clone(),
                    ..Default::default()
                },
            }])
        }
    }

    fn event(id: &str, conversation: u64) -> pb::DomainEvent {
        pb::DomainEvent {
            id: id.into(),
            name: "conversation.updated".into(),
            account_id: 1,
            conversation: Some(pb::ConversationFacts {
                display_id: conversation,
                inbox_id: 3,
                ..Default::default()
            }),
            payload: format!("\"{id}\""),
            ..Default::default()
        }
    }

    struct Setup {
        queue: Arc<MemoryQueue>,
        engine: Arc<Flaky>,
        decided: [Arc<AtomicUsize>; 2],
        stop: tokio::sync::watch::Sender<bool>,
    }

    fn start(fail_room: &str, failures: usize, max_attempts: u32, unavailable: bool) -> Setup {
        let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 1000));
        let engine = Arc::new(Flaky {
            inner: MemoryEngine::new(Arc::new(Hub::new()), HistoryLimits::default()),
            room: RoomName::parse(fail_room).unwrap(),
            failures: AtomicUsize::new(failures),
            unavailable,
            log: Mutex::new(Vec::new()),
        });
        let decided = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let listeners: Vec<Box<dyn Listener>> = vec![
            Box::new(Into {
                name: "first",
                room: RoomName::parse("public:1:first").unwrap(),
                decided: decided[0].clone(),
            }),
            Box::new(Into {
                name: "second",
                room: RoomName::parse("public:1:second").unwrap(),
                decided: decided[1].clone(),
            }),
        ];
        let config = BusConfig {
            max_attempts,
            retry_delay: Duration::from_millis(1),
            max_retry_delay: Duration::from_millis(5),
            ..BusConfig::default()
        };
        let bus = Bus::new(queue.clone(), engine.clone(), listeners, config, None);
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(bus.run(rx));
        Setup {
            queue,
            engine,
            decided,
            stop,
        }
    }

    /// The payloads published into `room`, in order (waits for `n` of them).
    async fn published(engine: &Flaky, room: &str, n: usize) -> Vec<String> {
        let get = || -> Vec<String> {
            let log = engine.log.lock().unwrap();
            log.iter()
                .filter(|(r, _)| r == room)
                .map(|(_, j)| j.clone())
                .collect()
        };
        for _ in 0..500 {
            if get().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        get()
    }

    #[tokio::test]
    async fn a_failing_listener_is_retried_alone_and_holds_back_only_its_own_work_on_the_conversation() {
        let s = start("public:1:second", 2, 5, false);
        s.queue
            .append(&[event("a1", 1), event("a2", 1), event("b1", 2)])
            .await
            .unwrap();
        let second = published(&s.engine, "public:1:second", 3).await;
        // a1 failed twice in `second`; a2 (same conversation) waited for it there; b1 did not.
        assert_eq!(second, ["\"b1\"", "\"a1\"", "\"a2\""]);
        let first = published(&s.engine, "public:1:first", 3).await;
        assert_eq!(first.len(), 3);
        // The first listener went on with the conversation meanwhile, in its order.
        let log = s.engine.log.lock().unwrap().clone();
        let at = |room: &str, json: &str| log.iter().position(|(r, j)| r == room && j == json).unwrap();
        assert!(at("public:1:first", "\"a1\"") < at("public:1:first", "\"a2\""));
        assert!(
            at("public:1:first", "\"a2\"") < at("public:1:second", "\"a1\""),
            "not held back by the other listener: {log:?}"
        );
        assert_eq!(
            s.decided[0].load(Ordering::Relaxed),
            3,
            "the first listener ran once per event"
        );
        assert_eq!(
            s.decided[1].load(Ordering::Relaxed),
            5,
            "the second: three, plus two retries"
        );
        s.stop.send_replace(true);
    }

    #[tokio::test]
    async fn an_event_that_keeps_failing_is_dead_lettered_and_the_rest_flows() {
        let s = start("public:1:second", 3, 3, false);
        s.queue.append(&[event("a1", 1), event("a2", 1)]).await.unwrap();
        let second = published(&s.engine, "public:1:second", 1).await;
        assert_eq!(second, ["\"a2\""]);
        let dead = s.queue.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event_id, "a1");
        assert!(
            dead[0].reason.contains("failed 3 times") && dead[0].reason.contains("second"),
            "{dead:?}"
        );
        s.stop.send_replace(true);
    }

    #[tokio::test]
    async fn an_unavailable_engine_is_waited_out_however_long_it_lasts() {
        // Ten outages in a row, with a budget of three attempts: nothing is given up.
        let s = start("public:1:second", 10, 3, true);
        s.queue.append(&[event("a1", 1), event("a2", 1)]).await.unwrap();
        let second = published(&s.engine, "public:1:second", 2).await;
        assert_eq!(second, ["\"a1\"", "\"a2\""]);
        assert!(s.queue.dead_letters(10).await.unwrap().is_empty());
        s.stop.send_replace(true);
    }
}
