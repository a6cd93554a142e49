//! Native transports: WebTransport (wtransport) and WebSocket (tokio-tungstenite). They
//! only move frames: every frame read is sent to one channel, every frame to send is
//! written as it comes.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rtgate_protocol::{FrameDecoder, encode_frame, pb};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Endpoint};

pub use crate::connector::TransportKind;

/// A QUIC endpoint (one UDP socket) that many clients may share: cheaper than one each
/// when a process holds thousands of connections.
#[derive(Clone)]
pub struct SharedEndpoint(std::sync::Arc<Endpoint<wtransport::endpoint::endpoint_side::Client>>);

impl std::fmt::Debug for SharedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedEndpoint")
    }
}

/// A client QUIC endpoint trusting `cert_sha256` (a development certificate) or, without
/// it, the system's roots.
pub fn webtransport_endpoint(cert_sha256: Option<[u8; 32]>) -> Result<SharedEndpoint, String> {
    let builder = ClientConfig::builder().with_bind_default();
    let config = match cert_sha256 {
        Some(hash) => builder.with_server_certificate_hashes([Sha256Digest::new(hash)]),
        None => builder.with_native_certs(),
    }
    .max_idle_timeout(Some(Duration::from_secs(30)))
    .map_err(|e| e.to_string())?
    .build();
    let endpoint = Endpoint::client(config).map_err(|e| e.to_string())?;
    Ok(SharedEndpoint(std::sync::Arc::new(endpoint)))
}

/// What a reader reports.
pub(crate) type Inbound = Result<pb::ServerFrame, String>;

type WsSink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// An open transport.
pub(crate) enum Link {
    Wt {
        connection: wtransport::Connection,
        control: wtransport::SendStream,
    },
    Ws {
        sink: WsSink,
    },
}

const MAX_FRAME: usize = 1 << 20;

fn decode(body: &[u8]) -> Inbound {
    pb::ServerFrame::decode(body).map_err(|e| format!("undecodable frame: {e}"))
}

async fn read_stream(mut recv: wtransport::RecvStream, tx: mpsc::Sender<Inbound>) {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    loop {
        match recv.quic_stream_mut().read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(format!("stream: {e}"))).await;
                return;
            }
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    if tx.send(decode(&body)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            }
        }
    }
}

impl Link {
    /// Opens a WebTransport session and its control stream.
    pub(crate) async fn webtransport(
        url: &str,
        cert_sha256: Option<[u8; 32]>,
        shared: Option<&SharedEndpoint>,
        timeout: Duration,
    ) -> Result<(Link, mpsc::Receiver<Inbound>), String> {
        let own;
        let endpoint = match shared {
            Some(e) => &e.0,
            None => {
                own = webtransport_endpoint(cert_sha256)?;
                &own.0
            }
        };
        let connecting = async {
            let connection = endpoint.connect(url).await.map_err(|e| e.to_string())?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((connection, send, recv))
        };
        let (connection, control, recv) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| "webtransport connect timed out".to_string())??;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(read_stream(recv, tx.clone()));
        let uni = connection.clone();
        let uni_tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(stream) = uni.accept_uni().await {
                tokio::spawn(read_stream(stream, uni_tx.clone()));
            }
            let _ = uni_tx.send(Err("connection closed".into())).await;
        });
        let dgram = connection.clone();
        tokio::spawn(async move {
            while let Ok(d) = dgram.receive_datagram().await {
                if tx.send(decode(&d.payload())).await.is_err() {
                    return;
                }
            }
        });
        Ok((Link::Wt { connection, control }, rx))
    }

    /// Opens a WebSocket.
    pub(crate) async fn websocket(
        url: &str,
        timeout: Duration,
    ) -> Result<(Link, mpsc::Receiver<Inbound>), String> {
        let (ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .map_err(|_| "websocket connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let item = match msg {
                    Ok(Message::Binary(body)) => decode(&body),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Err("connection closed".into())).await;
        });
        Ok((Link::Ws { sink }, rx))
    }

    /// Which transport this is.
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Link::Wt { .. } => TransportKind::WebTransport,
            Link::Ws { .. } => TransportKind::WebSocket,
        }
    }

    /// Sends a frame on the control path.
    pub(crate) async fn send(&mut self, frame: &pb::ClientFrame) -> Result<(), String> {
        match self {
            Link::Wt { control, .. } => control
                .write_all(&encode_frame(frame))
                .await
                .map_err(|e| e.to_string()),
            Link::Ws { sink } => sink
                .send(Message::Binary(Bytes::from(frame.encode_to_vec())))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends a frame as a datagram where possible, else on the control path.
    pub(crate) async fn send_unreliable(&mut self, frame: &pb::ClientFrame) -> Result<(), String> {
        if let Link::Wt { connection, .. } = self
            && connection.max_datagram_size().is_some()
            && connection.send_datagram(frame.encode_to_vec()).is_ok()
        {
            return Ok(());
        }
        self.send(frame).await
    }

    /// Closes the transport.
    pub(crate) async fn close(mut self) {
        match &mut self {
            Link::Wt { connection, control } => {
                let _ = control.finish().await;
                connection.close(wtransport::VarInt::from_u32(3000), b"client closed");
            }
            Link::Ws { sink } => {
                let _ = sink.close().await;
            }
        }
    }
}
