//! The node's pub/sub connection: joins and leaves room channels as local subscribers come
//! and go (reference-counted), delivers messages, and on reconnection joins every channel
//! again and repairs the gap of every room.
//!
//! On a Redis Cluster it is one cluster connection holding a connection to every master:
//! each room's channel is joined on the master of its slot (sharded pub/sub), the control
//! channel on any (classic pub/sub reaches the whole cluster). Losing any master's
//! connection counts as losing the whole: everything is joined again and every room
//! repaired. Each master's connection is probed on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use rtgate_protocol::RoomName;
use tokio::sync::{mpsc, oneshot};

use super::Inner;
use super::commands::{Target, unavailable};
use super::keys::slot;
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

/// The pub/sub connection.
enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

async fn connect(inner: &Inner) -> Result<(Conn, mpsc::UnboundedReceiver<PushInfo>), EngineError> {
    let (tx, rx) = mpsc::unbounded_channel();
    // The command connection decides whether the server supports sharded pub/sub.
    inner.commands.conn().await?;
    let timeout = inner.config.timeout;
    let conn = match &inner.pubsub_target {
        Target::Server(client) => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_push_sender(tx);
            let conn = tokio::time::timeout(
                timeout * 2,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| unavailable("pub/sub connect timed out"))?
            .map_err(unavailable)?;
            Conn::Server(conn)
        }
        Target::Cluster(seeds) => {
            Conn::Cluster(Target::cluster_connection(seeds, timeout, Some(timeout), Some(tx)).await?)
        }
    };
    Ok((conn, rx))
}

/// The channels this connection's liveness is probed on: the engine's probe channel on one
/// server; on a cluster, one channel in the slots of each master, so that every master's
/// connection is probed.
async fn probe_channels(inner: &Inner) -> Result<Vec<String>, EngineError> {
    if !inner.commands.is_cluster() {
        return Ok(vec![inner.probe_channel.clone()]);
    }
    // [[start, end, [host, port, id], replicas…], …]
    let ranges: Vec<redis::Value> = inner.commands.command(redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut masters: HashMap<String, Vec<(u16, u16)>> = HashMap::new();
    for range in &ranges {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end)), Some(redis::Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let id = master.get(2).and_then(super::value_str).unwrap_or_default();
        masters.entry(id).or_default().push((*start as u16, *end as u16));
    }
    let mut channels = Vec::new();
    for ranges in masters.values() {
        let found = (0u32..1 << 16)
            .map(|n| format!("{}:{{{n}}}", inner.probe_channel))
            .find(|c| {
                let s = slot(c.as_bytes());
                ranges.iter().any(|&(a, b)| (a..=b).contains(&s))
            });
        channels.extend(found);
    }
    if channels.is_empty() {
        return Err(unavailable("the redis cluster has no slots assigned"));
    }
    Ok(channels)
}

/// Joins (or leaves) the channels of `rooms` on one server, in one command.
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

/// Joins (or leaves) sharded channels on a cluster, each on the master of its slot, all
/// in flight at once: whether each succeeded. A master that is down fails its channels
/// only.
async fn cluster_cmd(inner: &Inner, conn: &ClusterConnection, join: bool, channels: &[String]) -> Vec<bool> {
    let timeout = inner.config.timeout;
    let each = channels.iter().map(|channel| {
        let mut conn = conn.clone();
        async move {
            let sent = async {
                if join {
                    conn.ssubscribe(channel).await
                } else {
                    conn.sunsubscribe(channel).await
                }
            };
            matches!(tokio::time::timeout(timeout, sent).await, Ok(Ok(())))
        }
    });
    futures::future::join_all(each).await
}

/// What is not joined yet on a cluster, retried until it is.
#[derive(Default)]
struct Pending {
    control: bool,
    probes: Vec<String>,
    rooms: Vec<RoomName>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.control && self.probes.is_empty() && self.rooms.is_empty()
    }
}

/// Tries to join what is pending on a cluster; moves the probes and rooms joined to
/// `probes` and `joined`.
async fn join_pending(
    inner: &Inner,
    conn: &ClusterConnection,
    pending: &mut Pending,
    refs: &HashMap<RoomName, usize>,
    probes: &mut Vec<String>,
    joined: &mut Vec<RoomName>,
) {
    pending.rooms.retain(|room| refs.contains_key(room));
    let outcome = try_join(inner, conn.clone(), std::mem::take(pending)).await;
    outcome.apply(pending, refs, probes, joined);
}

/// What an attempt to join pending channels achieved.
struct Joined {
    control: bool,
    probes: Vec<(String, bool)>,
    rooms: Vec<(RoomName, bool)>,
}

impl Joined {
    /// Moves what was joined out of `pending` (rooms no longer wanted are dropped).
    fn apply(
        self,
        pending: &mut Pending,
        refs: &HashMap<RoomName, usize>,
        probes: &mut Vec<String>,
        joined: &mut Vec<RoomName>,
    ) {
        pending.control |= !self.control;
        for (probe, ok) in self.probes {
            if ok {
                probes.push(probe);
            } else {
                pending.probes.push(probe);
            }
        }
        for (room, ok) in self.rooms {
            if !refs.contains_key(&room) {
                continue;
            }
            if ok {
                joined.push(room);
            } else if !pending.rooms.contains(&room) {
                pending.rooms.push(room);
            }
        }
    }
}

/// Joins what `pending` names on a cluster (the control channel, probe channels, rooms'
/// channels), each on its master.
async fn try_join(inner: &Inner, mut conn: ClusterConnection, pending: Pending) -> Joined {
    let control = if pending.control {
        let sent = tokio::time::timeout(inner.config.timeout, conn.subscribe(inner.keys.control())).await;
        matches!(sent, Ok(Ok(())))
    } else {
        true
    };
    let results = cluster_cmd(inner, &conn, true, &pending.probes).await;
    let probes = pending.probes.into_iter().zip(results).collect();
    let mut rooms = Vec::with_capacity(pending.rooms.len());
    for chunk in pending.rooms.chunks(256) {
        let channels: Vec<String> = chunk.iter().map(|room| inner.keys.channel(room)).collect();
        let results = cluster_cmd(inner, &conn, true, &channels).await;
        rooms.extend(chunk.iter().cloned().zip(results));
    }
    Joined {
        control,
        probes,
        rooms,
    }
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
        let all_probes = match probe_channels(&inner).await {
            Ok(p) => p,
            Err(err) => {
                tracing::debug!(%err, "redis pub/sub: no probe channels");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // Every room may have missed events while the connection was down: each is
        // repaired once its channel is joined.
        let mut unrepaired: Vec<RoomName> = Vec::new();
        let mut probes: Vec<String> = Vec::new();
        let mut pending = Pending::default();
        match &mut conn {
            Conn::Server(c) => {
                // One server: everything is joined, or the connection is tried again.
                let control = tokio::time::timeout(
                    inner.config.timeout,
                    redis::cmd("SUBSCRIBE")
                        .arg(inner.keys.control())
                        .arg(&all_probes)
                        .exec_async(c),
                )
                .await;
                if !matches!(control, Ok(Ok(()))) {
                    continue;
                }
                let mut ok = true;
                for chunk in rooms.chunks(256) {
                    if channel_cmd(&inner, c, true, chunk).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    continue;
                }
                probes = all_probes;
                unrepaired = rooms;
            }
            Conn::Cluster(c) => {
                // A cluster: a master that is down holds up its own channels only; they
                // are joined (and their rooms repaired) when it is back.
                pending = Pending {
                    control: true,
                    probes: all_probes,
                    rooms,
                };
                join_pending(&inner, c, &mut pending, &refs, &mut probes, &mut unrepaired).await;
            }
        }
        // On a cluster, what could not be joined (its master down) is tried again in the
        // background, so that the other masters' rooms keep flowing meanwhile.
        let mut rejoin_every = tokio::time::interval(Duration::from_millis(250));
        rejoin_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejoining: Option<oneshot::Receiver<Joined>> = None;
        inner.pubsub_up.store(true, Ordering::Relaxed);
        let up_since = tokio::time::Instant::now();
        if connected_before {
            inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(rooms = refs.len(), "redis pub/sub reconnected: repairing gaps");
        }
        connected_before = true;
        let mut retry = tokio::time::interval(Duration::from_millis(100));
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = PROBE_DEADLINE.max(inner.config.timeout * 2);
        // The probe in flight: its number and when it was sent; the channels it has not
        // come back on yet.
        let mut awaiting: Option<(u64, tokio::time::Instant)> = None;
        let mut outstanding: Vec<String> = Vec::new();
        let publish = if inner.commands.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
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
                _ = rejoin_every.tick(), if rejoining.is_none() && !pending.is_empty() => {
                    if let Conn::Cluster(c) = &conn {
                        pending.rooms.retain(|room| refs.contains_key(room));
                        let (tx, rx) = oneshot::channel();
                        let (inner, conn, wanted) = (inner.clone(), c.clone(), std::mem::take(&mut pending));
                        tokio::spawn(async move {
                            let _ = tx.send(try_join(&inner, conn, wanted).await);
                        });
                        rejoining = Some(rx);
                    }
                }
                joined = async { rejoining.as_mut().expect("guarded").await }, if rejoining.is_some() => {
                    rejoining = None;
                    if let Ok(joined) = joined {
                        joined.apply(&mut pending, &refs, &mut probes, &mut unrepaired);
                    }
                }
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(room, ack)) => {
                        if add_ref(&inner, &mut refs, &room) {
                            match &mut conn {
                                Conn::Server(c) => {
                                    let result = channel_cmd(&inner, c, true, std::slice::from_ref(&room)).await;
                                    let failed = result.is_err();
                                    let _ = ack.send(result);
                                    if failed {
                                        break;
                                    }
                                }
                                Conn::Cluster(c) => {
                                    let channel = inner.keys.channel(&room);
                                    let joined = cluster_cmd(&inner, c, true, std::slice::from_ref(&channel)).await[0];
                                    if joined {
                                        let _ = ack.send(Ok(()));
                                    } else {
                                        // Its master is down: the subscription fails; the
                                        // channel is joined once it is back, if still wanted.
                                        pending.rooms.push(room);
                                        let _ = ack.send(Err(unavailable("the room's redis master is unavailable")));
                                    }
                                }
                            }
                        } else {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    Some(Command::Unsubscribe(room)) => {
                        if drop_ref(&inner, &mut refs, &room) {
                            match &mut conn {
                                Conn::Server(c) => {
                                    if channel_cmd(&inner, c, false, std::slice::from_ref(&room)).await.is_err() {
                                        break;
                                    }
                                }
                                Conn::Cluster(c) => {
                                    // Not left (its master is down): its messages are
                                    // ignored, the room having no track.
                                    cluster_cmd(&inner, c, false, &[inner.keys.channel(&room)]).await;
                                }
                            }
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
                        outstanding.clear();
                        for channel in &probes {
                            let published = inner
                                .commands
                                .command::<i64>(redis::cmd(publish).arg(channel).arg(sequence))
                                .await;
                            // Unsent (the command connection, or that master, is down):
                            // nothing to wait for.
                            if published.is_ok() {
                                outstanding.push(channel.clone());
                            }
                        }
                        if !outstanding.is_empty() {
                            awaiting = Some((sequence, sent));
                        }
                    }
                }
                push = pushes.recv() => match push {
                    None => break,
                    Some(push) => match push.kind {
                        PushKind::Message | PushKind::SMessage => {
                            if let [redis::Value::BulkString(channel), redis::Value::BulkString(payload)] = &push.data[..] {
                                if probes.iter().any(|p| p.as_bytes() == channel.as_slice()) {
                                    if awaiting.is_some_and(|(n, _)| payload.as_slice() == n.to_string().as_bytes()) {
                                        outstanding.retain(|c| c.as_bytes() != channel.as_slice());
                                        if outstanding.is_empty() {
                                            awaiting = None;
                                        }
                                    }
                                } else {
                                    inner.on_message(channel, payload).await;
                                }
                            }
                        }
                        PushKind::Disconnection => break,
                        // A cluster moved a slot away from its master, and left its
                        // channels for us: everything is joined again where it now lives.
                        PushKind::SUnsubscribe if inner.commands.is_cluster() => {
                            if let Some(redis::Value::BulkString(channel)) = push.data.first()
                                && (refs.keys().any(|room| inner.keys.channel(room).as_bytes() == channel.as_slice())
                                    || probes.iter().any(|p| p.as_bytes() == channel.as_slice()))
                            {
                                tracing::warn!("redis cluster moved a channel's slot: joining again");
                                break;
                            }
                        }
                        _ => {}
                    },
                },
            }
        }
        inner.pubsub_up.store(false, Ordering::Relaxed);
        tracing::warn!("redis pub/sub connection lost");
        // A link lost again soon after it came up (a cluster master that keeps dropping)
        // is not retried in a tight loop.
        if up_since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}
