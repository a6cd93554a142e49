//! The `/cable` transport: ActionCable's JSON protocol over a WebSocket, for clients
//! written for Rails (`@rails/actioncable`). Text messages are translated by
//! [`CableAdapter`] into what rtgate's session understands, and the session's frames back
//! into ActionCable's messages as they are written; the session, rooms, history and
//! presence are those of every other transport.
//!
//! Texts the adapter makes itself (welcome, rejections, `presence.update`) travel on the
//! same lane as the session's frames, in order, marked by a leading zero byte (which no
//! encoded frame starts with).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rtgate_protocol::{DisconnectCode, pb};
use tokio::sync::oneshot;

use super::websocket::{SocketLanes, close_message, read_error};
use super::{TransportKind, WriterCloser};
use crate::actioncable::adapter::{self, CableAdapter, Step};
use crate::actioncable::{Cable, RESUME_TTL, wire};
use crate::connection::{Closer, Incoming, Transport, drive};
use crate::ids::ConnectionId;
use crate::node::Node;
use crate::outbox::{Lane, LaneReceiver, Outbox};

/// How often the server pings: `@rails/actioncable` counts the link as stale after 6 s
/// without a ping (and a WebSocket ping rides along, whose pong keeps the session alive).
pub const PING_INTERVAL: Duration = Duration::from_secs(3);

/// Marks a text made by the adapter on the lane.
const TEXT: u8 = 0;

fn text(s: String) -> Bytes {
    let mut b = Vec::with_capacity(s.len() + 1);
    b.push(TEXT);
    b.extend_from_slice(s.as_bytes());
    Bytes::from(b)
}

struct CableCloser {
    writer: WriterCloser<(DisconnectCode, String)>,
    adapter: Arc<Mutex<CableAdapter>>,
    token_key: Arc<Mutex<Option<String>>>,
    cable: Arc<Cable>,
}

impl Closer for CableCloser {
    fn close(self: Box<Self>, code: DisconnectCode, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let CableCloser {
                writer,
                adapter,
                token_key,
                cable,
            } = *self;
            // Everything queued is translated (and its position noted) before the
            // positions are kept.
            writer.close((code, reason)).await;
            if code != DisconnectCode::Shutdown {
                return;
            }
            let entry = adapter.lock().expect("adapter lock").resume_entry();
            let key = token_key.lock().expect("token lock").clone();
            if let (Some(entry), Some(key)) = (entry, key) {
                let saved =
                    crate::engine::with_timeout(cable.store.save_resume(&key, entry, RESUME_TTL)).await;
                if let Err(err) = saved {
                    tracing::warn!(%err, "cannot keep a /cable connection's positions for its return");
                }
            }
        })
    }
}

/// What the reading side needs to act on the adapter's steps.
#[derive(Clone)]
struct Reader {
    node: Arc<Node>,
    cable: Arc<Cable>,
    conn: ConnectionId,
    adapter: Arc<Mutex<CableAdapter>>,
    token_key: Arc<Mutex<Option<String>>>,
    lane: Lane,
}

impl Reader {
    /// Carries out the steps of one client message; what the session is to be given.
    async fn text(self, message: &str) -> Vec<Incoming> {
        let steps = self
            .adapter
            .lock()
            .expect("adapter lock")
            .on_text(message, std::time::Instant::now());
        let mut out = Vec::new();
        for step in steps {
            match step {
                Step::Send(t) => {
                    let _ = self.lane.send(text(t));
                }
                Step::Native(frame) => out.push(Incoming::Frame(frame.encode_to_vec().into())),
                Step::Ignored(reason) => {
                    metrics::counter!("rtgate_cable_ignored_total", "reason" => reason).increment(1);
                    tracing::debug!(conn = %self.conn, reason, "/cable message ignored");
                }
                Step::Resolve(params) => match self.cable.lookup(&params).await {
                    Err(err) => {
                        out.push(Incoming::Failed(format!("cannot check the pubsub token: {err}")));
                    }
                    Ok(Err(rejection)) => {
                        metrics::counter!("rtgate_cable_subscriptions_total", "outcome" => rejection.label())
                            .increment(1);
                        tracing::info!(conn = %self.conn, %rejection, "/cable subscription rejected");
                        let reply = self
                            .adapter
                            .lock()
                            .expect("adapter lock")
                            .resolved(Err(rejection));
                        if let Some(t) = reply {
                            let _ = self.lane.send(text(t));
                        }
                    }
                    Ok(Ok(subscriber)) => {
                        metrics::counter!("rtgate_cable_subscriptions_total", "outcome" => "accepted")
                            .increment(1);
                        let p = &subscriber.principal;
                        self.adapter
                            .lock()
                            .expect("adapter lock")
                            .resolved(Ok((p.account_id, p.is_contact())));
                        self.node.bind_cable_token(self.conn, &subscriber.token_key);
                        *self.token_key.lock().expect("token lock") = Some(subscriber.token_key);
                        out.push(Incoming::Authenticated {
                            principal: subscriber.principal,
                            recover: subscriber.recover,
                        });
                    }
                },
                Step::Presence => {
                    let account = self.adapter.lock().expect("adapter lock").account();
                    match self.node.presence.snapshot(account).await {
                        Ok(presence) => {
                            let update = self
                                .adapter
                                .lock()
                                .expect("adapter lock")
                                .presence_update(&presence);
                            if let Some(t) = update {
                                let _ = self.lane.send(text(t));
                            }
                        }
                        Err(err) => tracing::debug!(conn = %self.conn, %err, "presence unavailable"),
                    }
                }
            }
        }
        out
    }
}

/// Serves one upgraded `/cable` WebSocket until it closes.
pub async fn serve(
    node: Arc<Node>,
    cable: Arc<Cable>,
    socket: WebSocket,
    client: Option<crate::http::ClientConn>,
) {
    let (mut sink, stream) = socket.split();
    let ip = client
        .as_ref()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.addr.ip());
    let _slot = client.map(|c| c.slot);
    let (conn, control_rx) = match node.register(TransportKind::ActionCable, ip) {
        Ok(registered) => registered,
        Err(refusal) => {
            // Told to come back later, as Rails tells clients on a restart.
            let code = refusal.code();
            let _ = sink
                .send(Message::Text(wire::disconnect("server_restart", true).into()))
                .await;
            let _ = sink.send(close_message(code, code.label())).await;
            return;
        }
    };
    let outbox = Outbox::new(node.limits.send_queue_bytes);
    let (lane, lane_rx) = Lane::new(&outbox);
    let _ = lane.send(text(wire::welcome()));
    let adapter = Arc::new(Mutex::new(CableAdapter::default()));
    let token_key = Arc::new(Mutex::new(None));
    let reader = Reader {
        node: node.clone(),
        cable: cable.clone(),
        conn,
        adapter: adapter.clone(),
        token_key: token_key.clone(),
        lane: lane.clone(),
    };
    let max = node.session.max_frame_size;
    let incoming = stream
        .then(move |msg| {
            let reader = reader.clone();
            async move {
                match msg {
                    Ok(Message::Text(t)) if t.len() > max => {
                        vec![Incoming::FramingError(rtgate_protocol::FrameError::TooLarge {
                            size: t.len() as u64,
                            max,
                        })]
                    }
                    Ok(Message::Text(t)) => {
                        metrics::counter!("rtgate_bytes_received_total", "transport" => "actioncable")
                            .increment(t.len() as u64);
                        reader.text(t.as_str()).await
                    }
                    // The client is there: that keeps the session from going stale.
                    Ok(Message::Pong(_)) if reader.adapter.lock().expect("adapter lock").is_live() => {
                        vec![Incoming::Frame(adapter::keepalive().encode_to_vec().into())]
                    }
                    Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)) => Vec::new(),
                    Ok(Message::Close(_)) => vec![Incoming::Closed],
                    Err(err) => vec![read_error(err, max)],
                }
            }
        })
        .flat_map(futures::stream::iter)
        .boxed();

    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, lane_rx, close_rx, adapter.clone()));
    let transport = Transport {
        kind: TransportKind::ActionCable,
        control: lane.clone(),
        lanes: Box::new(SocketLanes(lane)),
        datagrams: None,
        closer: Box::new(CableCloser {
            writer: WriterCloser {
                signal: close_tx,
                writer,
                timeout: node.limits.close_flush_timeout,
            },
            adapter,
            token_key,
            cable,
        }),
    };
    Box::pin(drive(node, conn, control_rx, incoming, transport)).await;
}

/// The text to write for one queued item: the adapter's own, or a session frame
/// translated (`None`: nothing to send for it).
fn translate(adapter: &Mutex<CableAdapter>, frame: &[u8]) -> Option<String> {
    match frame.split_first() {
        Some((&TEXT, rest)) => String::from_utf8(rest.to_vec()).ok(),
        _ => {
            let frame = pb::ServerFrame::decode(frame).ok()?;
            adapter.lock().expect("adapter lock").on_server_frame(frame)
        }
    }
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: LaneReceiver,
    mut close_rx: oneshot::Receiver<(DisconnectCode, String)>,
    adapter: Arc<Mutex<CableAdapter>>,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            biased;
            frame = rx.recv_queued() => {
                let Some(first) = frame else { break };
                let mut batch = vec![first];
                rx.fill_batch(&mut batch, 64);
                let n: usize = batch.iter().map(|q| q.frame.len()).sum();
                let mut sent = 0;
                for q in &batch {
                    if let Some(t) = translate(&adapter, &q.frame) {
                        sent += t.len();
                        if sink.feed(Message::Text(t.into())).await.is_err() {
                            return;
                        }
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                rx.written(n);
                metrics::counter!("rtgate_bytes_sent_total", "transport" => "actioncable").increment(sent as u64);
                for q in batch {
                    q.record_written();
                }
            }
            _ = ping.tick() => {
                let now = crate::connection::unix_ms() / 1000;
                if sink.feed(Message::Text(wire::ping(now).into())).await.is_err()
                    || sink.feed(Message::Ping(Bytes::new())).await.is_err()
                    || sink.flush().await.is_err()
                {
                    return;
                }
            }
            closing = &mut close_rx => {
                let (code, reason) = closing.unwrap_or((DisconnectCode::Normal, String::new()));
                while let Some(frame) = rx.try_recv() {
                    if let Some(t) = translate(&adapter, &frame)
                        && sink.feed(Message::Text(t.into())).await.is_err()
                    {
                        return;
                    }
                }
                let _ = sink.send(close_message(code, &reason)).await;
                let _ = sink.close().await;
                return;
            }
        }
    }
}
