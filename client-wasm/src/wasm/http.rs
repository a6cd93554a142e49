//! Plain HTTP in the browser, for networks that let neither QUIC nor WebSocket through:
//! `GET {url}/stream` is read as it arrives (length-prefixed frames, as on a WebTransport
//! stream); frames go out in numbered `POST {url}/send` batches (session and number in
//! headers, so the one URL's CORS preflight is cached), one request at a time, with what
//! queued meanwhile in the next (at most [`BATCH_FRAMES`] frames, [`BATCH_BYTES`] bytes).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use js_sys::Uint8Array;
use rtgate_protocol::{FrameDecoder, encode_frame, pb};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{AbortController, ReadableStreamDefaultReader, RequestInit, Response};

use super::js::describe;
use super::link::{LinkEvent, MAX_SERVER_FRAME, Sink, decode};
use super::timer::sleep;

/// The response header naming the session (quoted by every send).
const SESSION_HEADER: &str = "rtgate-session";

/// The request header numbering a send.
const SEQ_HEADER: &str = "rtgate-seq";

/// Most frames in one send (the gateway takes 64).
const BATCH_FRAMES: usize = 64;

/// Most bytes in one send unless a single frame is larger (the gateway takes four frames
/// of its largest size, 256 KiB by default).
const BATCH_BYTES: usize = 128 * 1024;

/// Sends that fail on the network are tried this many times before the link ends.
const SEND_ATTEMPTS: u32 = 5;

/// What the link's two halves share.
struct Shared {
    url: String,
    session: String,
    closed: Cell<bool>,
    /// Frames waiting for a send, each length-prefixed.
    queue: RefCell<std::collections::VecDeque<bytes::Bytes>>,
    /// A send is in flight (it takes the queue when it is done).
    sending: Cell<bool>,
    seq: Cell<u64>,
    sink: Sink,
}

impl Shared {
    /// Ends the link once, telling the driver.
    fn end(&self, reason: String) {
        if !self.closed.replace(true) {
            (self.sink)(LinkEvent::Closed { code: None, reason });
        }
    }
}

/// An open HTTP stream with its sender.
pub(crate) struct HttpLink {
    shared: Rc<Shared>,
    abort: AbortController,
}

/// The global `fetch` (pages and workers alike); a rejected promise where there is none.
fn window_fetch(url: &str, init: &RequestInit) -> js_sys::Promise {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"fetch".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .and_then(|fetch| fetch.call2(&global, &url.into(), init).ok())
        .and_then(|p| p.dyn_into::<js_sys::Promise>().ok())
        .unwrap_or_else(|| js_sys::Promise::reject(&"fetch is not available".into()))
}

/// Opens `GET {url}/stream`, giving up after `timeout`. Frames go to `sink`.
pub(crate) async fn open(url: &str, timeout: Duration, sink: Sink) -> Result<HttpLink, String> {
    let abort = AbortController::new().map_err(describe)?;
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_signal(Some(&abort.signal()));
    let fetched = JsFuture::from(window_fetch(&format!("{url}/stream"), &init));
    let response: Response = match select(fetched, sleep(timeout)).await {
        Either::Left((Ok(response), _)) => response.unchecked_into(),
        Either::Left((Err(e), _)) => return Err(format!("http stream: {}", describe(e))),
        Either::Right(_) => {
            abort.abort();
            return Err("http stream connect timed out".into());
        }
    };
    if response.status() != 200 {
        abort.abort();
        return Err(format!("http stream answered {}", response.status()));
    }
    let Some(body) = response.body() else {
        abort.abort();
        return Err("http stream has no body".into());
    };
    // A refused connection has no session: its body is one Disconnect, read like any stream.
    let session = response
        .headers()
        .get(SESSION_HEADER)
        .ok()
        .flatten()
        .unwrap_or_default();
    let shared = Rc::new(Shared {
        url: url.to_string(),
        session,
        closed: Cell::new(false),
        queue: RefCell::new(Default::default()),
        sending: Cell::new(false),
        seq: Cell::new(0),
        sink,
    });
    spawn_local(read(body.get_reader().unchecked_into(), shared.clone()));
    Ok(HttpLink { shared, abort })
}

/// Reads the stream until it ends.
async fn read(reader: ReadableStreamDefaultReader, shared: Rc<Shared>) {
    let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME);
    loop {
        let chunk = match JsFuture::from(reader.read()).await {
            Ok(result) => result,
            Err(e) => return shared.end(format!("http stream failed: {}", describe(e))),
        };
        let done = js_sys::Reflect::get(&chunk, &"done".into()).is_ok_and(|d| d.is_truthy());
        if done {
            return shared.end("http stream ended".into());
        }
        let Ok(value) = js_sys::Reflect::get(&chunk, &"value".into()) else {
            continue;
        };
        decoder.push(&value.unchecked_into::<Uint8Array>().to_vec());
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) if !shared.closed.get() => (shared.sink)(decode(&body)),
                Ok(Some(_)) | Ok(None) => break,
                Err(e) => return shared.end(e.to_string()),
            }
        }
    }
}

/// Sends what is queued, batch after batch, until the queue is empty.
async fn flush(shared: Rc<Shared>) {
    loop {
        let batch = next_batch(&mut shared.queue.borrow_mut());
        if batch.is_empty() || shared.closed.get() {
            shared.sending.set(false);
            return;
        }
        if let Err(reason) = send_batch(&shared, &batch).await {
            shared.sending.set(false);
            return shared.end(reason);
        }
        shared.seq.set(shared.seq.get() + 1);
    }
}

/// The frames of the next send, taken from the front of `queue`.
fn next_batch(queue: &mut std::collections::VecDeque<bytes::Bytes>) -> Vec<u8> {
    let mut batch = Vec::new();
    let mut frames = 0;
    while let Some(frame) = queue.front() {
        if frames == BATCH_FRAMES || (frames > 0 && batch.len() + frame.len() > BATCH_BYTES) {
            break;
        }
        batch.extend_from_slice(frame);
        frames += 1;
        queue.pop_front();
    }
    batch
}

/// Sends one batch until the gateway takes it: again after 409 (an earlier batch still
/// on its way) and 429 (the session is behind), and after network errors and 503 a few
/// times.
async fn send_batch(shared: &Shared, batch: &[u8]) -> Result<(), String> {
    let url = format!("{}/send", shared.url);
    let seq = shared.seq.get().to_string();
    let mut failures = 0;
    let mut busy = 0u32;
    loop {
        if shared.closed.get() {
            return Err("closed".into());
        }
        let init = RequestInit::new();
        init.set_method("POST");
        let body: JsValue = Uint8Array::from(batch).into();
        init.set_body(&body);
        let headers = web_sys::Headers::new().map_err(describe)?;
        headers
            .set("content-type", "application/octet-stream")
            .map_err(describe)?;
        headers.set(SESSION_HEADER, &shared.session).map_err(describe)?;
        headers.set(SEQ_HEADER, &seq).map_err(describe)?;
        init.set_headers(&headers);
        match JsFuture::from(window_fetch(&url, &init)).await {
            Ok(response) => {
                let status = response.unchecked_into::<Response>().status();
                match status {
                    200..=299 => return Ok(()),
                    409 | 429 => {
                        busy += 1;
                        let wait = if status == 409 { 20 } else { 250 };
                        sleep(Duration::from_millis(wait * u64::from(busy.min(10)))).await;
                    }
                    404 => return Err("the http session is gone".into()),
                    503 => {
                        failures += 1;
                        if failures >= SEND_ATTEMPTS {
                            return Err("http send: the gateway cannot reach the stream's node".into());
                        }
                        sleep(Duration::from_millis(250)).await;
                    }
                    other => return Err(format!("http send answered {other}")),
                }
            }
            Err(e) => {
                failures += 1;
                if failures >= SEND_ATTEMPTS {
                    return Err(format!("http send failed: {}", describe(e)));
                }
                sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

impl HttpLink {
    /// Whether the stream has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }

    /// Queues a frame for the next send, starting one if none is in flight.
    pub(crate) fn send(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        if self.is_closed() {
            return Err("http stream closed".into());
        }
        self.shared.queue.borrow_mut().push_back(encode_frame(frame));
        if !self.shared.sending.replace(true) {
            spawn_local(flush(self.shared.clone()));
        }
        Ok(())
    }
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.abort.abort();
    }
}
