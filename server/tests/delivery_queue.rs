//! The delivery queue's contract, on both implementations: in memory and on a real Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{SHARED_REDIS, unique_prefix};
use rtgate_protocol::pb;
use std::collections::HashSet;

use rtgate_server::delivery::queue::{
    ClaimLimits, Claimed, DeliveryQueue, Depth, MemoryDeliveryQueue, Queued, RedisDeliveryQueue,
};
use rtgate_server::engine::{RedisConfig, RedisEngine};
use rtgate_server::hub::Hub;

const LEASE: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(600);
const T0: i64 = 1_800_000_000_000;

fn delivery(id: &str) -> pb::Delivery {
    to(id, "https://example.com/")
}

fn to(id: &str, url: &str) -> pb::Delivery {
    pb::Delivery {
        id: id.into(),
        url: url.into(),
        body: bytes::Bytes::from_static(b"{}"),
        ..Default::default()
    }
}

fn now(delivery: pb::Delivery) -> Queued {
    Queued {
        delivery,
        not_before_ms: None,
    }
}

fn ids(claimed: &[Claimed]) -> Vec<String> {
    let mut ids: Vec<String> = claimed.iter().map(|c| c.delivery.id.clone()).collect();
    ids.sort();
    ids
}

fn all(total: usize, skip: &HashSet<String>) -> ClaimLimits<'_> {
    ClaimLimits {
        total,
        per_destination: 1000,
        skip,
    }
}

async fn contract(q: Arc<dyn DeliveryQueue>) {
    let none = HashSet::new();
    // Queued once per id within the window; what is queued comes back claimed.
    let (claimed, new) = q
        .enqueue(vec![now(delivery("a")), now(delivery("b"))], T0)
        .await
        .unwrap();
    assert_eq!((ids(&claimed), new), (vec!["a".to_string(), "b".to_string()], 2));
    assert_eq!(claimed[0].lease_until_ms, T0 + LEASE.as_millis() as i64);
    assert_eq!(claimed[0].delivery.queued_at_ms, T0);
    let (again, new) = q.enqueue(vec![now(delivery("a"))], T0 + 1).await.unwrap();
    assert!(again.is_empty() && new == 0);
    assert_eq!(q.depth().await.unwrap(), Depth { queued: 2, dead: 0 });

    // Claimed: nobody else gets them until the claim lapses.
    assert!(q.claim(all(10, &none), T0 + 1000).await.unwrap().is_empty());
    let lapse = T0 + LEASE.as_millis() as i64;
    let mut again = q.claim(all(10, &none), lapse).await.unwrap();
    assert_eq!(ids(&again), ["a", "b"], "a lapsed claim is taken again");
    // The old claim of `a` cannot be renewed any more; the new one can.
    let mut stale = claimed.into_iter().find(|c| c.delivery.id == "a").unwrap();
    assert!(!q.extend(&mut stale, lapse + 1).await.unwrap());
    let fresh = again.iter_mut().find(|c| c.delivery.id == "a").unwrap();
    assert!(q.extend(fresh, lapse + 1).await.unwrap());
    assert_eq!(fresh.lease_until_ms, lapse + 1 + LEASE.as_millis() as i64);

    // The old holder can no longer record anything: the new holder's claim stands.
    assert!(!q.done(&stale).await.unwrap());
    assert!(!q.retry(&stale, lapse).await.unwrap());
    assert!(!q.dead(&stale).await.unwrap());

    // Delivered: gone. Retried: due again at its time, with its record updated.
    let claimed_a = again.iter().find(|c| c.delivery.id == "a").unwrap().clone();
    assert!(q.done(&claimed_a).await.unwrap());
    let mut b = again.into_iter().find(|c| c.delivery.id == "b").unwrap();
    b.delivery.attempts = 1;
    b.delivery.last_error = "HTTP 503".into();
    assert!(q.retry(&b, lapse + 500).await.unwrap());
    assert!(q.claim(all(10, &none), lapse + 499).await.unwrap().is_empty());
    let due = q.claim(all(10, &none), lapse + 500).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].delivery.attempts, due[0].delivery.last_error.as_str()),
        (1, "HTTP 503")
    );
    // Queued: not queued again, even once its id is forgotten (after the window).
    let later = lapse + WINDOW.as_millis() as i64 + 1;
    assert_eq!(q.enqueue(vec![now(delivery("b"))], later).await.unwrap().1, 0);

    // Given up: a dead letter, listed newest first, replayed with attempts reset.
    let mut dead_b = due[0].clone();
    dead_b.delivery.failed_at_ms = lapse + 600;
    assert!(q.dead(&dead_b).await.unwrap());
    assert_eq!(
        q.enqueue(vec![now(delivery("b"))], later).await.unwrap().1,
        0,
        "nor while dead"
    );
    let (c, _) = q.enqueue(vec![now(delivery("c"))], lapse + 700).await.unwrap();
    let mut dead_c = c[0].clone();
    dead_c.delivery.failed_at_ms = lapse + 800;
    assert!(q.dead(&dead_c).await.unwrap());
    assert_eq!(q.depth().await.unwrap(), Depth { queued: 0, dead: 2 });
    let listed = q.dead_letters(10).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["c", "b"]
    );
    assert_eq!(q.dead_letters(1).await.unwrap().len(), 1);
    assert!(q.replay("b", lapse + 900).await.unwrap());
    assert!(!q.replay("b", lapse + 900).await.unwrap(), "once");
    let replayed = q.claim(all(10, &none), lapse + 900).await.unwrap();
    assert_eq!(replayed.len(), 1);
    let r = &replayed[0].delivery;
    assert_eq!(
        (r.id.as_str(), r.attempts, r.failed_at_ms, r.queued_at_ms),
        ("b", 0, 0, lapse + 900)
    );
    assert!(q.discard("c").await.unwrap());
    assert!(!q.discard("c").await.unwrap());
    assert!(!q.replay("nothing", lapse).await.unwrap());
    assert_eq!(q.depth().await.unwrap(), Depth { queued: 1, dead: 0 });
}

/// Lines per destination: a claim takes a bounded number of each, skips the lines it is
/// told to, and a parked line is left alone until its time while the others flow.
async fn lines(q: Arc<dyn DeliveryQueue>) {
    let none = HashSet::new();
    let dead_url = "https://dead.example/";
    let items: Vec<Queued> = (0..5)
        .flat_map(|i| {
            [
                Queued {
                    delivery: to(&format!("ok{i}"), "https://ok.example/"),
                    not_before_ms: Some(T0),
                },
                Queued {
                    delivery: to(&format!("dead{i}"), dead_url),
                    not_before_ms: Some(T0),
                },
                Queued {
                    delivery: to(&format!("later{i}"), "https://later.example/"),
                    not_before_ms: Some(T0 + 5000),
                },
            ]
        })
        .collect();
    let (claimed, new) = q.enqueue(items, T0).await.unwrap();
    assert!(claimed.is_empty(), "queued for later, not claimed");
    assert_eq!(new, 15);
    let limits = ClaimLimits {
        total: 100,
        per_destination: 2,
        skip: &none,
    };
    let got = q.claim(limits, T0).await.unwrap();
    assert_eq!(
        ids(&got),
        ["dead0", "dead1", "ok0", "ok1"],
        "two per line, only what is due"
    );
    q.park(dead_url, T0 + 10_000).await.unwrap();
    let got = q.claim(limits, T0 + 1).await.unwrap();
    assert_eq!(ids(&got), ["ok2", "ok3"], "the parked line is left alone");
    let skip: HashSet<String> = [rtgate_server::delivery::queue::destination_key(
        "https://ok.example/",
    )]
    .into();
    let skipping = ClaimLimits {
        skip: &skip,
        ..limits
    };
    assert!(q.claim(skipping, T0 + 2).await.unwrap().is_empty());
    let got = q.claim(limits, T0 + 5000).await.unwrap();
    assert_eq!(ids(&got), ["later0", "later1", "ok4"]);
    let got = q.claim(limits, T0 + 10_000).await.unwrap();
    assert_eq!(
        ids(&got),
        ["dead2", "dead3", "later2", "later3"],
        "unparked at its time"
    );
    let capped = ClaimLimits { total: 1, ..limits };
    assert_eq!(q.claim(capped, T0 + 10_001).await.unwrap().len(), 1);
}

/// Claims racing each other never hand one delivery out twice.
async fn exclusive_claims(q: Arc<dyn DeliveryQueue>) {
    let many: Vec<Queued> = (0..300)
        .map(|i| Queued {
            delivery: to(&format!("x{i}"), &format!("https://h{}.example/", i % 7)),
            not_before_ms: Some(T0),
        })
        .collect();
    q.enqueue(many, T0).await.unwrap();
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let none = HashSet::new();
                let limits = ClaimLimits {
                    total: 7,
                    per_destination: 3,
                    skip: &none,
                };
                let mut got = Vec::new();
                loop {
                    let batch = q.claim(limits, T0).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|c| c.delivery.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for r in racers {
        all.extend(r.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (300, 300));
}

#[tokio::test]
async fn the_memory_queue_keeps_the_contract() {
    contract(Arc::new(MemoryDeliveryQueue::new(LEASE, WINDOW))).await;
    lines(Arc::new(MemoryDeliveryQueue::new(LEASE, WINDOW))).await;
    exclusive_claims(Arc::new(MemoryDeliveryQueue::new(LEASE, WINDOW))).await;
}

#[tokio::test]
async fn the_redis_queue_keeps_the_contract() {
    let queue = || {
        let config = RedisConfig {
            prefix: unique_prefix("delivery-queue"),
            ..RedisConfig::new(SHARED_REDIS)
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).unwrap();
        Arc::new(RedisDeliveryQueue::new(engine.commands(), LEASE, WINDOW))
    };
    contract(queue()).await;
    lines(queue()).await;
    exclusive_claims(queue()).await;
}

#[tokio::test]
async fn the_redis_queue_keeps_the_contract_on_a_cluster() {
    let cluster = common::cluster::PrivateCluster::start(3).await;
    let queue = || {
        let config = RedisConfig {
            prefix: unique_prefix("delivery-queue"),
            cluster: true,
            ..RedisConfig::new(&cluster.url())
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).unwrap();
        Arc::new(RedisDeliveryQueue::new(engine.commands(), LEASE, WINDOW))
    };
    contract(queue()).await;
    lines(queue()).await;
    exclusive_claims(queue()).await;
}
