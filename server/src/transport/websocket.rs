//! WebSocket transport: one binary message per frame, every lane feeding the one socket.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use rtgate_protocol::{DisconnectCode, FrameError, RoomName};
use tokio::sync::oneshot;

use super::{TransportKind, WriterCloser};
use crate::connection::{Closer, Incoming, RoomLanes, Transport, drive};
use crate::node::Node;
use crate::outbox::{Lane, LaneReceiver, Outbox, Queued};

/// Frames beyond this many are written before a flush.
const WRITE_BATCH: usize = 64;

/// Every room's lane is the one socket's (WebSocket and `/cable`).
pub(crate) struct SocketLanes(pub(crate) Lane);

impl RoomLanes for SocketLanes {
    fn lane(&mut self, _room: &RoomName) -> Lane {
        self.0.clone()
    }
    fn release(&mut self, _room: &RoomName) {}
}

struct WsCloser(WriterCloser<(DisconnectCode, String)>);

impl Closer for WsCloser {
    fn close(self: Box<Self>, code: DisconnectCode, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(self.0.close((code, reason)))
    }
}

/// Serves one upgraded WebSocket until it closes. `client` (its address and slot) is
/// held for the socket's whole life.
pub async fn serve(node: Arc<Node>, socket: WebSocket, client: Option<crate::http::ClientConn>) {
    let (mut sink, stream) = socket.split();
    let ip = client
        .as_ref()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.addr.ip());
    let _slot = client.map(|c| c.slot);
    let (conn, control_rx) = match node.register(TransportKind::WebSocket, ip) {
        Ok(registered) => registered,
        Err(refusal) => {
            let code = refusal.code();
            let frame = code.frame(refusal.to_string());
            let body = prost::Message::encode_to_vec(&rtgate_protocol::pb::ServerFrame {
                kind: Some(rtgate_protocol::pb::server_frame::Kind::Disconnect(frame)),
            });
            let _ = sink.send(Message::Binary(body.into())).await;
            let _ = sink.send(close_message(code, code.label())).await;
            return;
        }
    };
    let max = node.session.max_frame_size;
    // Read by the driver itself: no task or queue of its own per connection.
    let incoming = stream
        .filter_map(move |msg| {
            futures::future::ready(match msg {
                Ok(Message::Binary(body)) if body.len() > max => {
                    Some(Incoming::FramingError(FrameError::TooLarge {
                        size: body.len() as u64,
                        max,
                    }))
                }
                Ok(Message::Binary(body)) => {
                    metrics::counter!("rtgate_bytes_received_total", "transport" => "websocket")
                        .increment(body.len() as u64);
                    Some(Incoming::Frame(body))
                }
                Ok(Message::Text(_)) => Some(Incoming::FramingError(FrameError::Decode(
                    "text messages are not accepted; send binary frames".into(),
                ))),
                Ok(Message::Ping(_) | Message::Pong(_)) => None,
                Ok(Message::Close(_)) => Some(Incoming::Closed),
                Err(err) => Some(read_error(err, max)),
            })
        })
        .boxed();

    let outbox = Outbox::new(node.limits.send_queue_bytes);
    let (lane, lane_rx) = Lane::new(&outbox);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, lane_rx, close_rx));
    let transport = Transport {
        kind: TransportKind::WebSocket,
        control: lane.clone(),
        lanes: Box::new(SocketLanes(lane)),
        datagrams: None,
        closer: Box::new(WsCloser(WriterCloser {
            signal: close_tx,
            writer,
            timeout: node.limits.close_flush_timeout,
        })),
    };
    // Boxed: the upgrade task then stays small while the driver's state lives on the heap
    // at its own size.
    Box::pin(drive(node, conn, control_rx, incoming, transport)).await;
}

/// What a read error of the WebSocket means: a broken connection (the peer is gone), a
/// message beyond the socket's own hard limit (4× the frame limit), or a violation of the
/// WebSocket protocol (bad framing, masking, opcodes, UTF-8 in a close frame…).
pub(crate) fn read_error(err: axum::Error, max: usize) -> Incoming {
    use tungstenite::Error as E;
    use tungstenite::error::CapacityError;
    let inner = err.into_inner();
    match inner.downcast_ref::<E>() {
        Some(E::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            Incoming::FramingError(FrameError::TooLarge {
                size: *size as u64,
                max,
            })
        }
        Some(E::Capacity(_)) => Incoming::FramingError(FrameError::TooLarge { size: 0, max }),
        Some(E::Protocol(violation)) => Incoming::ProtocolError(violation.to_string()),
        Some(E::Utf8(_)) => Incoming::ProtocolError("invalid UTF-8 in a WebSocket frame".into()),
        _ => Incoming::Closed,
    }
}

pub(crate) fn close_message(code: DisconnectCode, reason: &str) -> Message {
    let mut reason = reason.to_string();
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: code.code() as u16,
        reason: reason.into(),
    }))
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: LaneReceiver,
    mut close_rx: oneshot::Receiver<(DisconnectCode, String)>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(0);
    loop {
        tokio::select! {
            biased;
            frame = rx.recv_queued() => {
                let Some(frame) = frame else { break };
                batch.push(frame);
                rx.fill_batch(&mut batch, WRITE_BATCH);
                let n: usize = batch.iter().map(|q| q.frame.len()).sum();
                for q in &batch {
                    if sink.feed(Message::Binary(q.frame.clone())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                rx.written(n);
                metrics::counter!("rtgate_bytes_sent_total", "transport" => "websocket").increment(n as u64);
                for q in batch.drain(..) {
                    q.record_written();
                }
                if batch.capacity() > WRITE_BATCH * 4 {
                    batch = Vec::with_capacity(0);
                }
            }
            closing = &mut close_rx => {
                let (code, reason) = closing.unwrap_or((DisconnectCode::Normal, String::new()));
                while let Some(frame) = rx.try_recv() {
                    if sink.feed(Message::Binary(frame)).await.is_err() {
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
