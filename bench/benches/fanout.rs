//! Room fan-out inside one node: the hub handing one encoded publication to every
//! subscriber's lane, and the embedded engine's whole publish path (offset, history,
//! encoding, fan-out).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtgate_protocol::{RoomName, pb};
use rtgate_server::engine::{Engine, HistoryLimits, MemoryEngine};
use rtgate_server::hub::{Hub, Publication, Subscriber};
use rtgate_server::ids::{ConnectionId, Epoch, StreamPos};
use rtgate_server::outbox::{Lane, LaneReceiver, Outbox};

struct Room {
    hub: Arc<Hub>,
    receivers: Vec<LaneReceiver>,
    room: RoomName,
}

fn room(hub: Arc<Hub>, members: u64, epoch: &Epoch) -> Room {
    let room = RoomName::parse("public:1:bench").unwrap();
    let mut receivers = Vec::new();
    for i in 0..members {
        let outbox = Outbox::new(usize::MAX / 4);
        let (lane, rx) = Lane::new(&outbox);
        let principal = RoomName::parse(&format!("user:{}", i + 1)).unwrap();
        let sub = Subscriber::new(ConnectionId(i), room.clone(), principal, false, lane, None);
        hub.add(sub.clone());
        sub.prepare(
            Vec::new(),
            StreamPos {
                epoch: epoch.clone(),
                offset: 0,
            },
            None,
        );
        sub.activate();
        receivers.push(rx);
    }
    Room { hub, receivers, room }
}

impl Room {
    fn drain(&mut self) -> usize {
        let mut n = 0;
        for rx in &mut self.receivers {
            while let Some(frame) = rx.try_recv() {
                rx.written(frame.len());
                n += 1;
            }
        }
        n
    }
}

fn event() -> pb::Event {
    pb::Event {
        name: "message.created".into(),
        account_id: 1,
        occurred_at_ms: 1_700_000_000_000,
        json: "x".repeat(200),
        ..Default::default()
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.measurement_time(Duration::from_secs(3));
    for members in [10u64, 100, 1000] {
        g.throughput(Throughput::Elements(members));
        g.bench_function(format!("hub_broadcast/{members}"), |b| {
            let epoch = Epoch::random();
            let mut r = room(Arc::new(Hub::new()), members, &epoch);
            let frame = Bytes::from(vec![7u8; 260]);
            let mut offset = 0;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    offset += 1;
                    let p = Arc::new(Publication {
                        room: r.room.clone(),
                        pos: StreamPos {
                            epoch: epoch.clone(),
                            offset,
                        },
                        frame: frame.clone(),
                        at: Instant::now(),
                    });
                    let t = Instant::now();
                    black_box(r.hub.broadcast(&p));
                    total += t.elapsed();
                    assert_eq!(r.drain(), members as usize);
                }
                total
            })
        });
        g.bench_function(format!("engine_publish/{members}"), |b| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let hub = Arc::new(Hub::new());
            let engine = MemoryEngine::new(hub.clone(), HistoryLimits::default());
            let room_name = RoomName::parse("public:1:bench").unwrap();
            // Learn the room's epoch from a first publish, then join the members.
            let first = rt
                .block_on(engine.publish(&room_name, &prost::Message::encode_to_vec(&event()), None))
                .unwrap();
            let mut r = room(hub, members, &first.pos.epoch);
            let ev = prost::Message::encode_to_vec(&event());
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(rt.block_on(engine.publish(&room_name, &ev, None)).unwrap());
                    total += t.elapsed();
                    assert_eq!(r.drain(), members as usize);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
