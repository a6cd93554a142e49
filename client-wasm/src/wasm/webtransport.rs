//! WebTransport in the browser: the session, its bidirectional control stream, every
//! server-opened unidirectional stream (each read concurrently), and datagrams.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use js_sys::{Reflect, Uint8Array};
use prost::Message as _;
use rtgate_protocol::{FrameDecoder, encode_frame, pb};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    ReadableStream, ReadableStreamDefaultReader, WebTransport, WebTransportBidirectionalStream,
    WebTransportCloseInfo, WebTransportHash, WebTransportOptions, WritableStreamDefaultWriter,
};

use super::js::{describe, global_has};
use super::link::{LinkEvent, MAX_SERVER_FRAME, Sink, decode};
use super::timer::sleep;

/// An open WebTransport session with its control stream.
pub(crate) struct WtLink {
    transport: WebTransport,
    control: WritableStreamDefaultWriter,
    datagrams: Option<WritableStreamDefaultWriter>,
    closed: Rc<Cell<bool>>,
}

/// Opens a session to `url` (trusting `cert_hash`, a SHA-256, when given) and its control
/// stream, giving up after `timeout`. Everything read afterwards goes to `sink`.
pub(crate) async fn open(
    url: &str,
    cert_hash: Option<&[u8]>,
    timeout: Duration,
    sink: Sink,
) -> Result<WtLink, String> {
    if !global_has("WebTransport") {
        return Err("WebTransport is not available in this browser".into());
    }
    let options = WebTransportOptions::new();
    if let Some(hash) = cert_hash {
        let value = WebTransportHash::new();
        value.set_algorithm("sha-256");
        value.set_value_u8_array(&Uint8Array::from(hash));
        options.set_server_certificate_hashes(&[value]);
    }
    let transport = WebTransport::new_with_options(url, &options).map_err(describe)?;
    let closed = Rc::new(Cell::new(false));
    spawn_local(watch_closed(transport.clone(), closed.clone(), sink.clone()));
    let setup = async {
        JsFuture::from(transport.ready()).await.map_err(describe)?;
        let bidi: WebTransportBidirectionalStream = JsFuture::from(transport.create_bidirectional_stream())
            .await
            .map_err(describe)?;
        Ok::<_, String>(bidi)
    };
    let bidi = match select(Box::pin(setup), sleep(timeout)).await {
        Either::Left((Ok(bidi), _)) => bidi,
        Either::Left((Err(e), _)) => {
            transport.close();
            return Err(format!("webtransport: {e}"));
        }
        Either::Right(_) => {
            transport.close();
            return Err("webtransport connect timed out".into());
        }
    };
    let control = bidi.writable().get_writer().map_err(describe)?;
    spawn_local(read_stream(bidi.readable().into(), sink.clone(), true));
    spawn_local(accept_streams(
        transport.incoming_unidirectional_streams(),
        sink.clone(),
    ));
    let datagrams = transport.datagrams();
    spawn_local(read_datagrams(datagrams.readable(), sink));
    Ok(WtLink {
        datagrams: datagrams.writable().get_writer().ok(),
        transport,
        control,
        closed,
    })
}

/// Reports the end of the session with its close code and reason.
async fn watch_closed(transport: WebTransport, closed: Rc<Cell<bool>>, sink: Sink) {
    let event = match JsFuture::from(transport.closed()).await {
        Ok(info) => LinkEvent::Closed {
            code: info.get_close_code(),
            reason: info.get_reason().unwrap_or_default(),
        },
        Err(e) => LinkEvent::Closed {
            code: None,
            reason: describe(e),
        },
    };
    closed.set(true);
    sink(event);
}

/// The next chunk of a reader: `None` at the end or on error.
async fn next_chunk(reader: &ReadableStreamDefaultReader) -> Option<JsValue> {
    let result = JsFuture::from(reader.read()).await.ok()?;
    let done = Reflect::get(&result, &"done".into()).ok()?;
    if done.is_truthy() {
        return None;
    }
    Reflect::get(&result, &"value".into()).ok()
}

fn reader_of(stream: &ReadableStream) -> ReadableStreamDefaultReader {
    stream.get_reader().unchecked_into()
}

/// Reads length-delimited frames from one stream until it ends. The end of the control
/// stream ends the link.
async fn read_stream(stream: ReadableStream, sink: Sink, control: bool) {
    let reader = reader_of(&stream);
    let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME);
    while let Some(chunk) = next_chunk(&reader).await {
        decoder.push(&chunk.unchecked_into::<Uint8Array>().to_vec());
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => sink(decode(&body)),
                Ok(None) => break,
                Err(e) => {
                    return sink(LinkEvent::Closed {
                        code: None,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    if control {
        sink(LinkEvent::Closed {
            code: None,
            reason: "control stream ended".into(),
        });
    }
}

/// Accepts every unidirectional stream the server opens and reads each concurrently.
async fn accept_streams(incoming: ReadableStream, sink: Sink) {
    let reader = reader_of(&incoming);
    while let Some(stream) = next_chunk(&reader).await {
        spawn_local(read_stream(stream.unchecked_into(), sink.clone(), false));
    }
}

/// Reads datagrams, one bare frame each.
async fn read_datagrams(incoming: ReadableStream, sink: Sink) {
    let reader = reader_of(&incoming);
    while let Some(datagram) = next_chunk(&reader).await {
        if let LinkEvent::Frame(frame) = decode(&datagram.unchecked_into::<Uint8Array>().to_vec()) {
            sink(LinkEvent::Frame(frame));
        }
    }
}

/// Writes a chunk without waiting; a failed write shows up as the session closing.
fn write(writer: &WritableStreamDefaultWriter, bytes: &[u8]) {
    let promise = writer.write_with_chunk(&Uint8Array::from(bytes));
    spawn_local(async move {
        let _ = JsFuture::from(promise).await;
    });
}

impl WtLink {
    /// Whether the session has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Sends a frame on the control stream.
    pub(crate) fn send(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        if self.is_closed() {
            return Err("session closed".into());
        }
        write(&self.control, &encode_frame(frame));
        Ok(())
    }

    /// Sends a frame as a datagram, or on the control stream when it does not fit.
    pub(crate) fn send_datagram(&self, frame: &pb::ClientFrame) -> Result<(), String> {
        let body = frame.encode_to_vec();
        match &self.datagrams {
            Some(writer)
                if !self.is_closed()
                    && body.len() <= self.transport.datagrams().max_datagram_size() as usize =>
            {
                write(writer, &body);
                Ok(())
            }
            _ => self.send(frame),
        }
    }
}

impl Drop for WtLink {
    fn drop(&mut self) {
        if !self.closed.get() {
            let info = WebTransportCloseInfo::new();
            info.set_close_code(3000);
            info.set_reason("client closed");
            self.transport.close_with_close_info(&info);
        }
    }
}
