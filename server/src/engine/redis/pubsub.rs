//! The node's pub/sub connection: joins and leaves room channels as local subscribers come
//! and go (reference-counted), delivers messages, and on reconnection joins every channel
//! again and repairs the gap of every room.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use rtgate_protocol::RoomName;
use tokio::sync::{mpsc, oneshot};

use super::Inner;
use super::commands::unavailable;
use crate::engine::EngineError;

/// How often the connection's liveness is probed: a message published (on the command
/// connection) to a channel only this connection listens on.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A probe not back within this (at least) means the connection no longer delivers —
/// open but fed by nothing, as after a failover — and it is dropped and repaired.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// Requests to the pub/sub task.
pub(crate) enum Command {
    /// One more local subscriber of a room; answered once the channel is joined.
    Subscribe(RoomName, oneshot::Sender<Result<(), EngineError>>),
    /// One local subscriber fewer.
    Unsubscribe(RoomName),
}

async fn connect(
    inner: &Inner,
) -> Result<(MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>), EngineError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.config.timeout))
        .set_response_timeout(Some(inner.config.timeout))
        .set_push_sender(tx);
    // The command connection decides whether the server supports sharded pub/sub.
    inner.commands.conn().await?;
    let conn = tokio::time::timeout(
        inner.config.timeout * 2,
        inner
            .pubsub_client
            .get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| unavailable("pub/sub connect timed out"))?
    .map_err(unavailable)?;
    Ok((conn, rx))
}

async fn channel_cmd(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
    join: bool,
    rooms: &[RoomName],
) -> Result<(), EngineError> {
    if rooms.is_empty() {
        return Ok(());
    }
    let name = match (join, inner.sharded()) {
        (true, true) => "SSUBSCRIBE",
        (true, false) => "SUBSCRIBE",
        (false, true) => "SUNSUBSCRIBE",
        (false, false) => "UNSUBSCRIBE",
    };
    let mut cmd = redis::cmd(name);
    for room in rooms {
        cmd.arg(inner.keys.channel(room));
    }
    tokio::time::timeout(inner.config.timeout, cmd.exec_async(conn))
        .await
        .map_err(|_| unavailable("pub/sub command timed out"))?
        .map_err(unavailable)
}

fn add_ref(inner: &Inner, refs: &mut HashMap<RoomName, usize>, room: &RoomName) -> bool {
    let n = refs.entry(room.clone()).or_insert(0);
    *n += 1;
    if *n == 1 {
        inner
            .tracks
            .lock()
            .expect("tracks lock")
            .entry(room.clone())
            .or_insert(None);
        true
    } else {
        false
    }
}

fn drop_ref(inner: &Inner, refs: &mut HashMap<RoomName, usize>, room: &RoomName) -> bool {
    let Some(n) = refs.get_mut(room) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        refs.remove(room);
        inner.tracks.lock().expect("tracks lock").remove(room);
        true
    } else {
        false
    }
}

/// Runs until the engine is dropped.
pub(crate) async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut refs: HashMap<RoomName, usize> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        let (mut conn, mut pushes) = match connect(&inner).await {
            Ok(c) => c,
            Err(err) => {
                inner.pubsub_up.store(false, Ordering::Relaxed);
                tracing::debug!(%err, "redis pub/sub unavailable");
                // Keep counting subscribers while waiting; joins fail fast meanwhile.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        cmd = commands.recv() => match cmd {
                            None => return,
                            Some(Command::Subscribe(room, ack)) => {
                                add_ref(&inner, &mut refs, &room);
                                let _ = ack.send(Err(unavailable("redis unavailable")));
                            }
                            Some(Command::Unsubscribe(room)) => {
                                drop_ref(&inner, &mut refs, &room);
                            }
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let rooms: Vec<RoomName> = refs.keys().cloned().collect();
        // The control channel is classic pub/sub: one message reaches every node.
        let control = tokio::time::timeout(
            inner.config.timeout,
            redis::cmd("SUBSCRIBE")
                .arg(inner.keys.control())
                .arg(&inner.probe_channel)
                .exec_async(&mut conn),
        )
        .await;
        if !matches!(control, Ok(Ok(()))) {
            continue;
        }
        let mut ok = true;
        for chunk in rooms.chunks(256) {
            if channel_cmd(&inner, &mut conn, true, chunk).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        inner.pubsub_up.store(true, Ordering::Relaxed);
        if connected_before {
            inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(rooms = rooms.len(), "redis pub/sub reconnected: repairing gaps");
        }
        connected_before = true;
        backoff = Duration::from_millis(50);
        // Every room may have missed events while the connection was down.
        let mut unrepaired: Vec<RoomName> = rooms;
        let mut retry = tokio::time::interval(Duration::from_millis(100));
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = PROBE_DEADLINE.max(inner.config.timeout * 2);
        // The probe in flight: its number and when it was sent.
        let mut awaiting: Option<(u64, tokio::time::Instant)> = None;
        let mut sequence = 0u64;
        loop {
            if !unrepaired.is_empty() {
                let mut still = Vec::new();
                for room in unrepaired.drain(..) {
                    if refs.contains_key(&room) && !inner.repair(&room).await {
                        still.push(room);
                    }
                }
                unrepaired = still;
            }
            tokio::select! {
                _ = retry.tick(), if !unrepaired.is_empty() => {}
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(room, ack)) => {
                        if add_ref(&inner, &mut refs, &room) {
                            let result = channel_cmd(&inner, &mut conn, true, std::slice::from_ref(&room)).await;
                            let failed = result.is_err();
                            let _ = ack.send(result);
                            if failed {
                                break;
                            }
                        } else {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    Some(Command::Unsubscribe(room)) => {
                        if drop_ref(&inner, &mut refs, &room)
                            && channel_cmd(&inner, &mut conn, false, std::slice::from_ref(&room)).await.is_err()
                        {
                            break;
                        }
                    }
                },
                _ = probe.tick() => {
                    if let Some((_, sent)) = awaiting {
                        if sent.elapsed() > deadline {
                            metrics::counter!("rtgate_engine_probe_failures_total").increment(1);
                            tracing::warn!("redis pub/sub delivers nothing (its probe did not come back): reconnecting");
                            break;
                        }
                    } else {
                        sequence += 1;
                        let sent = tokio::time::Instant::now();
                        let published = inner
                            .commands
                            .command::<i64>(redis::cmd("PUBLISH").arg(&inner.probe_channel).arg(sequence))
                            .await;
                        // Unsent (the command connection is down): nothing to wait for.
                        if published.is_ok() {
                            awaiting = Some((sequence, sent));
                        }
                    }
                }
                push = pushes.recv() => match push {
                    None => break,
                    Some(push) => match push.kind {
                        PushKind::Message | PushKind::SMessage => {
                            if let [redis::Value::BulkString(channel), redis::Value::BulkString(payload)] = &push.data[..] {
                                if channel.as_slice() == inner.probe_channel.as_bytes() {
                                    if awaiting.is_some_and(|(n, _)| payload.as_slice() == n.to_string().as_bytes()) {
                                        awaiting = None;
                                    }
                                } else {
                                    inner.on_message(channel, payload).await;
                                }
                            }
                        }
                        PushKind::Disconnection => break,
                        _ => {}
                    },
                },
            }
        }
        inner.pubsub_up.store(false, Ordering::Relaxed);
        tracing::warn!("redis pub/sub connection lost");
    }
}
