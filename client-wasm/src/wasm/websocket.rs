//! WebSocket in the browser: binary messages (ArrayBuffer), one frame per message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{Either, select};
use js_sys::{ArrayBuffer, Uint8Array};
use prost::Message as _;
use rtgate_protocol::pb;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

use super::js::describe;
use super::link::{LinkEvent, Sink, decode};
use super::timer::sleep;

/// An open WebSocket with its handlers.
pub(crate) struct WsLink {
    socket: WebSocket,
    closed: Rc<Cell<bool>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _on_error: Closure<dyn FnMut(Event)>,
    _on_open: Closure<dyn FnMut(Event)>,
}

type Opening = Rc<RefCell<Option<oneshot::Sender<Result<(), String>>>>>;

fn settle(opening: &Opening, result: Result<(), String>) -> bool {
    match opening.borrow_mut().take() {
        Some(tx) => {
            let _ = tx.send(result);
            true
        }
        None => false,
    }
}

/// Opens a WebSocket to `url`, giving up after `timeout`. Messages go to `sink`.
pub(crate) async fn open(url: &str, timeout: Duration, sink: Sink) -> Result<WsLink, String> {
    let socket = WebSocket::new(url).map_err(describe)?;
    socket.set_binary_type(BinaryType::Arraybuffer);
    let (tx, rx) = oneshot::channel();
    let opening: Opening = Rc::new(RefCell::new(Some(tx)));
    let closed = Rc::new(Cell::new(false));

    let on_open = {
        let opening = opening.clone();
        Closure::<dyn FnMut(Event)>::new(move |_| {
            settle(&opening, Ok(()));
        })
    };
    let on_error = {
        let opening = opening.clone();
        Closure::<dyn FnMut(Event)>::new(move |_| {
            settle(&opening, Err("websocket error".into()));
        })
    };
    let on_close = {
        let (opening, closed, sink) = (opening.clone(), closed.clone(), sink.clone());
        Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            closed.set(true);
            let reason = format!("websocket closed ({})", e.code());
            if !settle(&opening, Err(reason)) {
                sink(LinkEvent::Closed {
                    code: Some(u32::from(e.code())),
                    reason: e.reason(),
                });
            }
        })
    };
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        if let Ok(buffer) = e.data().dyn_into::<ArrayBuffer>() {
            sink(decode(&Uint8Array::new(&buffer).to_vec()));
        }
    });
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let link = WsLink {
        socket,
        closed,
        _on_message: on_message,
        _on_close: on_close,
        _on_error: on_error,
        _on_open: on_open,
    };
    // Dropping `link` on failure detaches the handlers and closes the socket.
    match select(rx, sleep(timeout)).await {
        Either::Left((Ok(Ok(())), _)) => Ok(link),
        Either::Left((Ok(Err(e)), _)) => Err(e),
        Either::Left((Err(_), _)) => Err("websocket abandoned".into()),
        Either::Right(_) => Err("websocket connect timed out".into()),
    }
}

impl WsLink {
    /// Whether the socket has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Sends one frame as one binary message.
    pub(crate) fn send(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        self.socket
            .send_with_u8_array(&frame.encode_to_vec())
            .map_err(describe)
    }
}

impl Drop for WsLink {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onerror(None);
        self.socket.set_onclose(None);
        self.socket.set_onmessage(None);
        let _ = self.socket.close_with_code(1000);
    }
}
