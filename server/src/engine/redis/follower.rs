//! The follower: what the node does with the messages its pub/sub connection hands it.
//! It keeps, for every room with local subscribers, the last position it handed to the
//! hub; in-order events go to the hub, duplicates are dropped, and a gap (or a reconnection
//! of the pub/sub connection) is filled from history, or the room's subscribers are reset
//! when history cannot fill it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rtgate_protocol::RoomName;

use super::Inner;
use super::replies::Read;
use crate::engine::bus;
use crate::hub::Publication;
use crate::ids::{Epoch, StreamPos};

/// A repair reads the whole gap at once: it is bounded by the history's size.
const REPAIR_PAGE: (usize, usize) = (usize::MAX, usize::MAX);

impl Inner {
    /// Fills the gap after the last position this node delivered in `room`, or resets the
    /// room's subscribers when history cannot. False when Redis could not be asked (the
    /// caller retries).
    pub(super) async fn repair(&self, room: &RoomName) -> bool {
        let tracked = match self.tracks.lock().expect("tracks lock").get(room) {
            Some(tracked) => tracked.clone(),
            None => return true,
        };
        // Nothing handed to the hub yet: start from the oldest position a local subscriber
        // has (subscribers drop what they already have).
        let Some(last) = tracked.or_else(|| self.hub.oldest_position(room)) else {
            return true;
        };
        match self.read(room, Some(&last), REPAIR_PAGE).await {
            Ok((top, Read::Replay(entries, _))) => {
                if !entries.is_empty() {
                    self.stats.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                }
                for (offset, event) in entries {
                    self.deliver(room, self.publication(room, &top.epoch, offset, &event));
                }
            }
            Ok((top, _)) => {
                tracing::warn!(%room, from = %last, to = %top, "history cannot fill the gap: resetting the room");
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                self.hub.reset(room, &top);
                if let Some(t) = self.tracks.lock().expect("tracks lock").get_mut(room) {
                    *t = Some(top);
                }
            }
            Err(err) => {
                tracing::debug!(%room, %err, "gap repair failed; retrying");
                return false;
            }
        }
        true
    }

    /// Hands a publication to the hub and advances the room's position.
    fn deliver(&self, room: &RoomName, p: Arc<Publication>) {
        let mut tracks = self.tracks.lock().expect("tracks lock");
        let Some(last) = tracks.get_mut(room) else {
            return;
        };
        if let Some(l) = last
            && l.epoch == p.pos.epoch
            && l.offset >= p.pos.offset
        {
            return;
        }
        *last = Some(p.pos.clone());
        self.hub.broadcast(&p);
    }

    /// A message from a room channel or the control channel.
    pub(super) async fn on_message(&self, channel: &[u8], payload: &[u8]) {
        if channel == self.keys.control().as_bytes() {
            match bus::decode_control(payload) {
                Some(message) => {
                    let _ = self.control.send(message);
                }
                None => tracing::warn!("undecodable message on the control channel"),
            }
            return;
        }
        let Some(room) = self.keys.room_of_channel(channel) else {
            return;
        };
        match bus::decode(payload) {
            Some(bus::BusMessage::Publication { epoch, offset, event }) => {
                let epoch = Epoch::from_wire(epoch);
                let arrival = {
                    let tracks = self.tracks.lock().expect("tracks lock");
                    match tracks.get(&room) {
                        None => return,
                        Some(last) => classify(last.as_ref(), &epoch, offset),
                    }
                };
                match arrival {
                    Arrival::Duplicate => {}
                    Arrival::Next | Arrival::NewEpoch => {
                        self.deliver(&room, self.publication(&room, &epoch, offset, event))
                    }
                    Arrival::Gap => {
                        // If history cannot be read now, deliver anyway: the pub/sub task
                        // retries the repair, and subscribers drop what they already have.
                        self.repair(&room).await;
                        self.deliver(&room, self.publication(&room, &epoch, offset, event));
                    }
                }
            }
            Some(bus::BusMessage::Ephemeral {
                private,
                exclude,
                frame,
            }) => {
                self.hub
                    .broadcast_ephemeral(&room, &Bytes::copy_from_slice(frame), Some(exclude), private);
            }
            None => tracing::warn!(%room, "undecodable message on a room channel"),
        }
    }
}

/// How a publication relates to the last position a node delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Already delivered.
    Duplicate,
    /// The next one (or the first this node sees).
    Next,
    /// Some were missed: fill from history first.
    Gap,
    /// Another epoch: history was reset.
    NewEpoch,
}

/// Classifies an arriving publication against the last delivered position.
pub(crate) fn classify(last: Option<&StreamPos>, epoch: &Epoch, offset: u64) -> Arrival {
    match last {
        None => Arrival::Next,
        Some(l) if l.epoch != *epoch => Arrival::NewEpoch,
        Some(l) if offset <= l.offset => Arrival::Duplicate,
        Some(l) if offset == l.offset + 1 => Arrival::Next,
        Some(_) => Arrival::Gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> StreamPos {
        StreamPos {
            epoch: Epoch::from_wire(epoch),
            offset,
        }
    }

    #[test]
    fn arrivals_are_classified() {
        let e = Epoch::from_wire("e");
        assert_eq!(classify(None, &e, 9), Arrival::Next);
        assert_eq!(classify(Some(&pos("e", 4)), &e, 5), Arrival::Next);
        assert_eq!(classify(Some(&pos("e", 4)), &e, 4), Arrival::Duplicate);
        assert_eq!(classify(Some(&pos("e", 4)), &e, 2), Arrival::Duplicate);
        assert_eq!(classify(Some(&pos("e", 4)), &e, 7), Arrival::Gap);
        assert_eq!(classify(Some(&pos("f", 4)), &e, 1), Arrival::NewEpoch);
    }
}
