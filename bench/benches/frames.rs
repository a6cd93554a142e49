//! Frame encode/decode of the rtgate protocol.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use rtgate_protocol::{FrameDecoder, decode_frame, encode_frame, encode_frame_into, pb};

fn room_event(json_len: usize) -> pb::ServerFrame {
    pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Event(pb::RoomEvent {
            room: "conversation:4242".into(),
            epoch: "c0ffee00c0ffee00".into(),
            offset: 123_456,
            event: Some(pb::Event {
                id: "0b5c1c0e-8a43-4d5f-9d5e-5f1f7c1b2a11".into(),
                name: "message.created".into(),
                account_id: 1,
                occurred_at_ms: 1_700_000_000_000,
                json: "x".repeat(json_len),
                ..Default::default()
            }),
        })),
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 1024] {
        let frame = room_event(size);
        let wire = encode_frame(&frame);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("encode_delimited/{size}B"), |b| {
            b.iter(|| encode_frame(black_box(&frame)))
        });
        g.bench_function(format!("encode_into_reused/{size}B"), |b| {
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                encode_frame_into(black_box(&frame), &mut buf);
            })
        });
        let body = frame.encode_to_vec();
        g.bench_function(format!("decode_message/{size}B"), |b| {
            b.iter(|| decode_frame::<pb::ServerFrame>(black_box(&body), 1 << 20).unwrap())
        });
        // A stream carrying 64 frames delivered in 1,200-byte chunks (QUIC-packet sized).
        let mut stream = BytesMut::new();
        for _ in 0..64 {
            encode_frame_into(&frame, &mut stream);
        }
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("stream_decode_64_frames/{size}B"), |b| {
            b.iter(|| {
                let mut dec = FrameDecoder::new(1 << 20);
                let mut n = 0;
                for chunk in stream.chunks(1200) {
                    dec.push(chunk);
                    while let Some(body) = dec.next_frame().unwrap() {
                        let f: pb::ServerFrame = decode_frame(&body, 1 << 20).unwrap();
                        black_box(f);
                        n += 1;
                    }
                }
                assert_eq!(n, 64);
            })
        });
        g.throughput(Throughput::Bytes(wire.len() as u64));
    }
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
