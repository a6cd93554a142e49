//! Admission control at the transport level: how many open connections one client address
//! may hold (TCP connections, HTTP or WebSocket, and WebTransport sessions alike), and how
//! fast new ones are taken in. What a connection may hold once it has said Hello (pending
//! and authenticated budgets, per user) is counted by the node's registry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ratelimit::TokenBucket;

/// Counts open connections per client address.
#[derive(Debug)]
pub struct AddressSlots {
    max_per_ip: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`AddressSlots`]; given back when dropped (every clone).
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

/// IPv4 clients reach a dual-stack socket as `::ffff:a.b.c.d`: count them as `a.b.c.d`.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl AddressSlots {
    /// At most `max_per_ip` open connections per address (0: no limit).
    pub fn new(max_per_ip: usize) -> Arc<Self> {
        Arc::new(AddressSlots {
            max_per_ip,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when that address holds its
    /// maximum already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<AddressSlot>> {
        let ip = canonical_ip(ip);
        let mut counts = self.counts.lock().expect("address slots lock");
        let n = counts.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Arc::new(AddressSlot {
            slots: self.clone(),
            ip,
        }))
    }

    /// Open connections from `ip`.
    pub fn held(&self, ip: IpAddr) -> usize {
        let ip = canonical_ip(ip);
        self.counts
            .lock()
            .expect("address slots lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().expect("address slots lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Paces an accept loop: `rate` new connections per second, bursts of up to `rate`.
#[derive(Debug)]
pub struct AcceptPacer {
    /// `None`: no pacing.
    bucket: Option<Mutex<TokenBucket>>,
}

impl AcceptPacer {
    /// A pacer admitting `rate` per second (0 or less: no pacing).
    pub fn new(rate: f64) -> Self {
        AcceptPacer {
            bucket: (rate > 0.0).then(|| Mutex::new(TokenBucket::new(rate, rate.max(1.0), Instant::now()))),
        }
    }

    /// Takes a token at `now`, or says how long until one is available.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let mut bucket = bucket.lock().expect("pacer lock");
        if bucket.take(now) {
            Ok(())
        } else {
            Err(bucket.wait().max(Duration::from_millis(1)))
        }
    }

    /// Waits for a token.
    pub async fn ready(&self) {
        while let Err(wait) = self.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_slots_come_back() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = slots.acquire(a).unwrap();
        let two = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).is_none());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(
            slots.acquire(mapped).is_none(),
            "the same client over a dual-stack socket"
        );
        assert!(slots.acquire(b).is_some());
        let shared = one.clone();
        drop(one);
        assert!(slots.acquire(a).is_none(), "a clone keeps the slot");
        drop(shared);
        assert!(slots.acquire(a).is_some());
        drop(two);
        assert_eq!(slots.held(b), 0);
    }

    #[test]
    fn the_pacer_admits_its_rate() {
        let pacer = AcceptPacer::new(10.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(pacer.take(t0).is_ok());
        }
        let wait = pacer.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(pacer.take(t0 + Duration::from_millis(100)).is_ok());
        let unpaced = AcceptPacer::new(0.0);
        for _ in 0..10_000 {
            assert!(unpaced.take(t0).is_ok());
        }
    }
}
