//! Client frames: the stream framing, the frame decoder, and a real server session fed
//! with the frames.
//!
//! The whole input is first decoded as one unprefixed frame (a WebSocket message or a
//! datagram) and as a length-delimited stream (a WebTransport control stream). Then, when
//! it has at least two bytes, it drives a `Session` the way the connection driver does:
//!
//! - byte 0, bits 0-1: the Hello the target sends first, with a valid token
//!   (0 none: the input must bring its own; 1 agent, 2 admin, 3 contact; see
//!   `common/tokens.rs`);
//! - byte 0, bit 2: engine failures are `Internal` rather than `Unavailable`;
//! - byte 0, bit 3: every second frame arrives as a datagram;
//! - byte 0, bits 4-7: which engine calls fail (call number modulo 4);
//! - byte 1: how far the clock moves before each frame, in 100 ms steps;
//! - the rest: the control stream, `varint(length) ‖ ClientFrame` frames.
//!
//! Actions are carried out after every input like the driver does (joins, publishes and
//! presence calls answered at once), timers fire when due, and at the end of the input
//! the client goes away. Nothing may panic, and the session must end closed.
//!
//! With `RTGATE_FUZZ_TRACE` set, every action is printed to stderr (for reading what a
//! crashing input does: `target/<triple>/release/client_frame <input>`).
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rtgate_protocol::pb::{self, client_frame::Kind as C};
use rtgate_protocol::{DisconnectCode, FrameDecoder, decode_frame, encode_frame};
use rtgate_server::auth::{Authenticator, TokenKey};
use rtgate_server::engine::{EngineError, Recovery, SubscribeOutcome, plan_recovery};
use rtgate_server::ids::{Epoch, StreamPos};
use rtgate_server::session::{Action, Session, SessionConfig};

#[path = "common/tokens.rs"]
mod tokens;

/// The frame size limit, the server's default.
const MAX: usize = 65536;

static CONFIG: LazyLock<Arc<SessionConfig>> = LazyLock::new(|| {
    Arc::new(SessionConfig {
        max_frame_size: MAX,
        ..SessionConfig::default()
    })
});

static AUTH: LazyLock<Arc<Authenticator>> = LazyLock::new(|| {
    let key = TokenKey::hs256(tokens::SECRET).expect("the secret is long enough");
    Arc::new(Authenticator::new(key, None, None))
});

/// The encoded Hello frames the target can start with, by `byte 0 & 3` minus one.
static HELLOS: LazyLock<[Vec<u8>; 3]> = LazyLock::new(|| {
    [1, 2, 3].map(|n| {
        pb::ClientFrame {
            id: 0,
            kind: Some(C::Hello(pb::Hello {
                token: tokens::preamble_token(n),
                client_name: "fuzz".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec()
    })
});

static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("RTGATE_FUZZ_TRACE").is_some());

/// The engine's answers, as the connection driver would get them.
struct Engine {
    /// Bit `n % 4` set: call number `n` fails.
    fail_mask: u8,
    internal: bool,
    calls: u32,
}

impl Engine {
    fn result<T>(&mut self, ok: T) -> Result<T, EngineError> {
        let n = self.calls;
        self.calls = self.calls.wrapping_add(1);
        if self.fail_mask & (1 << (n % 4)) == 0 {
            Ok(ok)
        } else if self.internal {
            Err(EngineError::Internal("fuzz".into()))
        } else {
            Err(EngineError::Unavailable("fuzz".into()))
        }
    }
}

/// Every room's position in the simulated engine, and its oldest offset in history.
fn top() -> StreamPos {
    StreamPos {
        epoch: Epoch::from_wire("3f9a0c11d2e4"),
        offset: 12,
    }
}
const OLDEST: u64 = 5;

/// Carries out the session's actions like the connection driver; true once it closed.
fn drive(session: &mut Session, engine: &mut Engine, now: Instant) -> bool {
    while let Some(action) = session.poll_action() {
        if *TRACE {
            eprintln!("{action:?}");
        }
        match action {
            Action::Send(frame) => {
                assert!(frame.kind.is_some(), "empty server frame");
                let _ = encode_frame(&frame);
            }
            Action::Activate(_) | Action::Leave(_) | Action::AuthFailed(_) => {}
            Action::Admit => {
                // The driver admits an authenticated connection (or refuses it at a limit).
                assert!(session.principal().is_some(), "admission before hello");
                let result = engine.result(()).map_err(|e| e.to_string());
                session.admitted(result);
            }
            Action::Join { room, since } => {
                // The driver needs the principal here.
                assert!(session.principal().is_some(), "join before hello");
                let top = top();
                let (recovered, replayed) = match plan_recovery(since.as_ref(), &top, OLDEST) {
                    Recovery::Fresh => (false, 0),
                    Recovery::Lost => (false, 0),
                    Recovery::ReplayAfter(after) => (true, (top.offset - after) as u32),
                };
                let result = engine.result(SubscribeOutcome {
                    pos: top,
                    recovered,
                    replayed,
                });
                session.join_done(&room, result, now);
            }
            Action::Publish { id, room: _, event } => {
                let principal = session.principal().expect("publish before hello");
                assert_eq!(
                    event.account_id, principal.account_id,
                    "publish into another account"
                );
                let _ = event.encode_to_vec();
                let result = engine.result(StreamPos { offset: 13, ..top() });
                session.publish_done(id, result);
            }
            Action::Ephemeral { event, .. } => {
                assert!(session.principal().is_some(), "ephemeral before hello");
                let _ = event.encode_to_vec();
            }
            Action::SetAvailability { id, .. } => {
                assert!(session.principal().is_some(), "availability before hello");
                let result = engine.result(None);
                session.answer(id, result);
            }
            Action::QueryPresence { id } => {
                assert!(session.principal().is_some(), "presence before hello");
                let result = engine.result(Some(pb::Presence::default()));
                session.answer(id, result);
            }
            Action::Close(..) => {
                // The driver stops here and closes the transport.
                assert!(session.is_closed(), "close action from an open session");
                return true;
            }
        }
    }
    false
}

/// Fires the session's timers that are due at `now`.
fn fire_due(session: &mut Session, engine: &mut Engine, now: Instant) -> bool {
    match session.poll_timeout() {
        Some(deadline) if deadline <= now => {
            session.handle_timeout(now);
            drive(session, engine, now)
        }
        _ => false,
    }
}

fn run_session(data: &[u8]) {
    let (flags, step, stream) = (data[0], data[1], &data[2..]);
    let step = Duration::from_millis(100 * u64::from(step));
    let mut engine = Engine {
        fail_mask: flags >> 4,
        internal: flags & 0b100 != 0,
        calls: 0,
    };
    let datagrams = flags & 0b1000 != 0;
    let t0 = Instant::now();
    let mut now = t0;
    let mut session = Session::new(
        CONFIG.clone(),
        AUTH.clone(),
        "node-1".into(),
        t0,
        tokens::T0_UNIX_MS,
    );

    let mut closed = false;
    let preamble = usize::from(flags & 0b11);
    if preamble != 0 {
        session.handle_frame(&HELLOS[preamble - 1], now);
        closed = drive(&mut session, &mut engine, now);
    }

    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(stream);
    let mut n = 0u32;
    while !closed {
        now += step;
        if fire_due(&mut session, &mut engine, now) {
            closed = true;
            break;
        }
        match decoder.next_frame() {
            Ok(Some(body)) => {
                if datagrams && n % 2 == 1 {
                    session.handle_datagram(&body, now);
                } else {
                    session.handle_frame(&body, now);
                }
                closed = drive(&mut session, &mut engine, now);
                n += 1;
            }
            Ok(None) => break,
            Err(err) => {
                session.handle_framing_error(&err);
                closed = drive(&mut session, &mut engine, now);
                assert!(closed, "a framing error must close the session");
            }
        }
    }

    // The input is over: let a few timers fire (typing timeouts, token expiry, staleness),
    // then the client goes away.
    for _ in 0..4 {
        if closed {
            break;
        }
        let Some(deadline) = session.poll_timeout() else {
            break;
        };
        now = now.max(deadline);
        session.handle_timeout(now);
        closed = drive(&mut session, &mut engine, now);
    }
    if !closed {
        session.close(DisconnectCode::Normal, "client went away");
        closed = drive(&mut session, &mut engine, now);
    }
    assert!(closed && session.is_closed(), "the session did not end");
    assert_eq!(session.poll_timeout(), None, "a closed session has no timers");
}

fuzz_target!(|data: &[u8]| {
    // One unprefixed frame.
    if let Ok(frame) = decode_frame::<pb::ClientFrame>(data, MAX) {
        let bytes = frame.encode_to_vec();
        let again: pb::ClientFrame = decode_frame(&bytes, usize::MAX).expect("an encoded frame decodes");
        assert_eq!(again.encode_to_vec(), bytes, "frame round trip changed it");
    }

    // A stream of length-delimited frames.
    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(data);
    while let Ok(Some(body)) = decoder.next_frame() {
        assert!(body.len() <= MAX, "frame over the limit");
        if let Ok(frame) = decode_frame::<pb::ClientFrame>(&body, MAX) {
            let wire = encode_frame(&frame);
            let mut again = FrameDecoder::new(wire.len());
            again.push(&wire);
            let body = again.next_frame().expect("framed").expect("complete");
            assert_eq!(again.buffered(), 0);
            let again: pb::ClientFrame = decode_frame(&body, usize::MAX).expect("decodes");
            assert_eq!(again.encode_to_vec(), frame.encode_to_vec());
        }
    }

    if data.len() >= 2 {
        run_session(data);
    }
});
