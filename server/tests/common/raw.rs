//! Frame-level clients written from docs/protocol.md alone: they send exactly the bytes
//! a test wants, including malformed ones.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{FrameDecoder, encode_frame};
use tokio_tungstenite::tungstenite::Message;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Endpoint};

pub fn hello(token: &str) -> pb::ClientFrame {
    pb::ClientFrame {
        id: 0,
        kind: Some(C::Hello(pb::Hello {
            token: token.into(),
            client_name: "raw".into(),
            ..Default::default()
        })),
    }
}

pub fn subscribe(id: u32, room: &str, token: &str) -> pb::ClientFrame {
    pb::ClientFrame {
        id,
        kind: Some(C::Subscribe(pb::Subscribe {
            room: room.into(),
            since: None,
            token: token.into(),
        })),
    }
}

/// A WebSocket speaking raw frames.
pub struct RawWs {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

/// How a raw connection ended.
#[derive(Debug, PartialEq)]
pub enum End {
    Disconnect(pb::Disconnect),
    Closed,
}

impl RawWs {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        RawWs { ws }
    }

    pub async fn send(&mut self, frame: &pb::ClientFrame) {
        self.send_bytes(frame.encode_to_vec()).await;
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next frame, or None when the socket closed.
    pub async fn recv(&mut self) -> Option<pb::ServerFrame> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame in time")?;
            match msg {
                Ok(Message::Binary(b)) => return Some(pb::ServerFrame::decode(&b[..]).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until the connection ends; returns the Disconnect frame if one came.
    pub async fn until_end(&mut self) -> (Option<pb::Disconnect>, Option<u16>) {
        let mut disconnect = None;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("the connection ends in time");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(pb::ServerFrame {
                        kind: Some(S::Disconnect(d)),
                    }) = pb::ServerFrame::decode(&b[..])
                    {
                        disconnect = Some(d);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return (disconnect, frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (disconnect, None),
            }
        }
    }

    /// Hello, then the Welcome.
    pub async fn handshake(url: &str, token: &str) -> (Self, pb::Welcome) {
        let mut ws = RawWs::connect(url).await;
        ws.send(&hello(token)).await;
        match ws.recv().await {
            Some(pb::ServerFrame {
                kind: Some(S::Welcome(w)),
            }) => (ws, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}

/// A WebTransport session speaking raw frames: the control stream, plus the server's
/// unidirectional room streams, each readable on its own.
pub struct RawWt {
    pub connection: wtransport::Connection,
    pub send: wtransport::SendStream,
    pub recv: wtransport::RecvStream,
    decoder: FrameDecoder,
}

impl RawWt {
    pub async fn connect(url: &str, cert: [u8; 32]) -> Self {
        let config = ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([Sha256Digest::new(cert)])
            .build();
        let endpoint = Endpoint::client(config).unwrap();
        let connection = endpoint.connect(url).await.unwrap();
        let (send, recv) = connection.open_bi().await.unwrap().await.unwrap();
        RawWt {
            connection,
            send,
            recv,
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    pub async fn send(&mut self, frame: &pb::ClientFrame) {
        self.send.write_all(&encode_frame(frame)).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next control-stream frame, or None when it ended.
    pub async fn recv(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(body) = self.decoder.next_frame().unwrap() {
                return Some(pb::ServerFrame::decode(&body[..]).unwrap());
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.recv.read(&mut buf))
                .await
                .expect("a frame in time")
                .ok()??;
            self.decoder.push(&buf[..n]);
        }
    }

    /// Reads the control stream until it ends; returns the Disconnect frame if one came.
    pub async fn until_end(&mut self) -> Option<pb::Disconnect> {
        let mut disconnect = None;
        while let Some(frame) = self.recv().await {
            if let Some(S::Disconnect(d)) = frame.kind {
                disconnect = Some(d);
            }
        }
        disconnect
    }

    pub async fn handshake(url: &str, cert: [u8; 32], token: &str) -> (Self, pb::Welcome) {
        let mut wt = RawWt::connect(url, cert).await;
        wt.send(&hello(token)).await;
        match wt.recv().await {
            Some(pb::ServerFrame {
                kind: Some(S::Welcome(w)),
            }) => (wt, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}

/// Reads frames from one server-opened unidirectional stream.
pub struct RoomStream {
    pub recv: wtransport::RecvStream,
    decoder: FrameDecoder,
}

impl RoomStream {
    pub async fn accept(connection: &wtransport::Connection) -> Self {
        let recv = tokio::time::timeout(Duration::from_secs(10), connection.accept_uni())
            .await
            .expect("a stream in time")
            .unwrap();
        RoomStream {
            recv,
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    pub async fn next_event(&mut self) -> pb::RoomEvent {
        loop {
            if let Some(body) = self.decoder.next_frame().unwrap() {
                match pb::ServerFrame::decode(&body[..]).unwrap().kind {
                    Some(S::Event(e)) => return e,
                    other => panic!("room streams carry events only, got {other:?}"),
                }
            }
            let mut buf = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(10), self.recv.read(&mut buf))
                .await
                .expect("an event in time")
                .unwrap()
                .expect("stream open");
            self.decoder.push(&buf[..n]);
        }
    }
}

/// An HTTP fallback session speaking raw frames: the stream's response, read as it comes,
/// and numbered sends, to `base` (the node that holds the stream) or any other node.
pub struct RawHttp {
    pub http: reqwest::Client,
    pub session: String,
    pub seq: u64,
    pub response: reqwest::Response,
    decoder: FrameDecoder,
}

impl RawHttp {
    /// Opens `GET {base}/http/stream`.
    pub async fn open(base: &str) -> Self {
        let http = reqwest::Client::new();
        let response = http.get(format!("{base}/http/stream")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let session = response.headers()["rtgate-session"].to_str().unwrap().to_string();
        RawHttp {
            http,
            session,
            seq: 0,
            response,
            decoder: FrameDecoder::new(4 << 20),
        }
    }

    /// Sends the next batch (`frames`, each length-prefixed) to `base`, again while the
    /// answer is 409 (an earlier batch still on its way) or 429; its final status.
    pub async fn send_to(&mut self, base: &str, frames: &[pb::ClientFrame]) -> u16 {
        let body: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).to_vec()).collect();
        for _ in 0..100 {
            let status = self.send_raw(base, self.seq, body.clone()).await;
            if status < 300 {
                self.seq += 1;
            }
            if status != 409 && status != 429 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("batch {} was never taken", self.seq);
    }

    /// Sends batch `seq` with exactly `body`; its status.
    pub async fn send_raw(&self, base: &str, seq: u64, body: Vec<u8>) -> u16 {
        self.http
            .post(format!("{base}/http/send"))
            .header("rtgate-session", &self.session)
            .header("rtgate-seq", seq.to_string())
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The next frame, or None when the response ended.
    pub async fn recv(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(body) = self.decoder.next_frame().unwrap() {
                return Some(pb::ServerFrame::decode(&body[..]).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("a frame in time");
            match chunk {
                Ok(Some(bytes)) => self.decoder.push(&bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Reads until the response ends; the Disconnect frame if one came.
    pub async fn until_end(&mut self) -> Option<pb::Disconnect> {
        let mut disconnect = None;
        while let Some(frame) = self.recv().await {
            if let Some(S::Disconnect(d)) = frame.kind {
                disconnect = Some(d);
            }
        }
        disconnect
    }

    /// Opens a stream on `base`, says Hello, and returns with the Welcome.
    pub async fn handshake(base: &str, token: &str) -> (Self, pb::Welcome) {
        let mut http = RawHttp::open(base).await;
        let status = http.send_to(base, &[hello(token)]).await;
        assert!(status == 204 || status == 202, "Hello answered {status}");
        match http.recv().await {
            Some(pb::ServerFrame {
                kind: Some(S::Welcome(w)),
            }) => (http, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}
