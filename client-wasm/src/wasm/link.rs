//! An open transport, whichever it is: frames go out through [`Link::send`], and whatever
//! the transport reads is handed to a [`Sink`] as [`LinkEvent`]s.

use std::rc::Rc;

use prost::Message as _;
use rtgate_protocol::pb;

use super::http::HttpLink;
use super::websocket::WsLink;
use super::webtransport::WtLink;

/// Largest server frame accepted (events published through the API may be up to 1 MiB).
pub(crate) const MAX_SERVER_FRAME: usize = 2 << 20;

/// What a transport reports.
pub(crate) enum LinkEvent {
    /// A frame from the server.
    Frame(Box<pb::ServerFrame>),
    /// The transport ended, with the close code and reason when there are some.
    Closed { code: Option<u32>, reason: String },
}

/// Where a transport's readers deliver.
pub(crate) type Sink = Rc<dyn Fn(LinkEvent)>;

/// Decodes one unprefixed server frame; an undecodable one ends the link.
pub(crate) fn decode(body: &[u8]) -> LinkEvent {
    match pb::ServerFrame::decode(body) {
        Ok(frame) => LinkEvent::Frame(Box::new(frame)),
        Err(e) => LinkEvent::Closed {
            code: None,
            reason: format!("undecodable frame: {e}"),
        },
    }
}

/// An open transport. Dropping it closes it.
pub(crate) enum Link {
    /// WebTransport.
    Wt(WtLink),
    /// WebSocket.
    Ws(WsLink),
    /// Plain HTTP.
    Http(HttpLink),
}

impl Link {
    /// Whether the transport has already ended.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Link::Wt(l) => l.is_closed(),
            Link::Ws(l) => l.is_closed(),
            Link::Http(l) => l.is_closed(),
        }
    }

    /// Sends a frame on the control path, in order.
    pub(crate) fn send(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        match self {
            Link::Wt(l) => l.send(frame),
            Link::Ws(l) => l.send(frame),
            Link::Http(l) => l.send(frame),
        }
    }

    /// Sends a frame that may be lost (typing): a datagram where possible.
    pub(crate) fn send_unreliable(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        match self {
            Link::Wt(l) => l.send_datagram(frame),
            Link::Ws(l) => l.send(frame),
            Link::Http(l) => l.send(frame),
        }
    }
}
