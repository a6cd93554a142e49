//! The follower: what the node does with the messages its pub/sub connection hands it.
//! It keeps, for every room with local subscribers, the last position it handed to the
//! hub; in-order events go to the hub, duplicates are dropped, and a gap (or a reconnection
//! of the pub/sub connection) is filled from history, or the room's subscribers are reset
//! when history cannot fill it.
//!
//! The decisions are pure functions of positions ([`classify`], [`advance`],
//! [`repair_from`], [`plan_repair`]); the methods on the engine's state carry them out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rtgate_protocol::RoomName;

use super::Inner;
use super::replies::Read;
use crate::engine::{bus, encode_publication};
use crate::hub::Publication;
use crate::ids::{Epoch, StreamPos};

/// A repair reads the whole gap at once: it is bounded by the history's size.
const REPAIR_PAGE: (usize, usize) = (usize::MAX, usize::MAX);

/// How a publication relates to the last position the node handed to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next one, or the first the node sees in the room: hand it over.
    Next,
    /// At or before the last one handed over: drop it.
    Duplicate,
    /// Some were missed: fill the gap from the history after `after` (the last position
    /// handed over), then hand it over.
    Gap {
        /// The last position handed over.
        after: StreamPos,
    },
    /// Of another epoch (the room's history was reset): hand it over; subscribers send a
    /// `RoomReset` ahead of it. Epochs have no order: any other epoch counts as new.
    NewEpoch,
}

/// Classifies a publication at `pos` against the last position handed over (`None`:
/// nothing yet).
pub(crate) fn classify(last: Option<&StreamPos>, pos: &StreamPos) -> Arrival {
    match last {
        None => Arrival::Next,
        Some(l) if l.epoch != pos.epoch => Arrival::NewEpoch,
        Some(l) if pos.offset <= l.offset => Arrival::Duplicate,
        Some(l) if pos.offset == l.offset + 1 => Arrival::Next,
        Some(l) => Arrival::Gap { after: l.clone() },
    }
}

/// Moves the room's last position to `pos` unless `pos` was already handed over; true
/// when it moved (the publication is to be handed over). Gaps are not checked here:
/// whoever hands over has dealt with them.
pub(crate) fn advance(last: &mut Option<StreamPos>, pos: &StreamPos) -> bool {
    if classify(last.as_ref(), pos) == Arrival::Duplicate {
        return false;
    }
    *last = Some(pos.clone());
    true
}

/// Where a repair reads history from: after the last position handed over or, when
/// nothing was handed over yet, after the oldest position a local subscriber has reached
/// (subscribers drop what they already have). `None`: nothing to repair.
pub(crate) fn repair_from(
    last: Option<StreamPos>,
    oldest_local: impl FnOnce() -> Option<StreamPos>,
) -> Option<StreamPos> {
    last.or_else(oldest_local)
}

/// What a repair does with history's answer (the room's `top` and what was read after
/// the repair's position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repair<'a> {
    /// Nothing was missed.
    UpToDate,
    /// History holds the gap: hand over these events of `epoch`, in order.
    Fill {
        /// The room's epoch.
        epoch: &'a Epoch,
        /// Offset and encoded event of each missed event.
        events: &'a [(u64, Bytes)],
    },
    /// History cannot fill the gap (trimmed, expired, or the room's epoch changed): reset
    /// the room's subscribers to the room's top and follow on from there.
    Reset(&'a StreamPos),
}

/// Decides what a repair does with history's answer.
pub(crate) fn plan_repair<'a>(top: &'a StreamPos, read: &'a Read) -> Repair<'a> {
    match read {
        Read::Replay(events, _) if events.is_empty() => Repair::UpToDate,
        Read::Replay(events, _) => Repair::Fill {
            epoch: &top.epoch,
            events,
        },
        Read::Fresh | Read::Lost => Repair::Reset(top),
    }
}

impl Inner {
    /// Fills the gap after the last position this node handed over in `room` (after a
    /// reconnection of the pub/sub connection), or resets the room's subscribers when
    /// history cannot. False when Redis could not be asked (the caller retries).
    pub(super) async fn repair(&self, room: &RoomName) -> bool {
        let tracked = match self.tracks.lock().expect("tracks lock").get(room) {
            Some(tracked) => tracked.clone(),
            None => return true,
        };
        match repair_from(tracked, || self.hub.oldest_position(room)) {
            Some(from) => self.fill(room, &from).await,
            None => true,
        }
    }

    /// Reads the history after `from` and carries out what [`plan_repair`] decides. False
    /// when Redis could not be asked.
    async fn fill(&self, room: &RoomName, from: &StreamPos) -> bool {
        let (top, read) = match self.read(room, Some(from), REPAIR_PAGE).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::debug!(%room, %err, "gap repair failed; retrying");
                return false;
            }
        };
        match plan_repair(&top, &read) {
            Repair::UpToDate => {}
            Repair::Fill { epoch, events } => {
                self.stats.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                for (offset, event) in events {
                    self.deliver(room, self.publication(room, epoch, *offset, event));
                }
            }
            Repair::Reset(top) => {
                tracing::warn!(%room, %from, to = %top, "history cannot fill the gap: resetting the room");
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                self.hub.reset(room, top);
                if let Some(t) = self.tracks.lock().expect("tracks lock").get_mut(room) {
                    *t = Some(top.clone());
                }
            }
        }
        true
    }

    /// Hands a publication to the hub and advances the room's position, unless it was
    /// handed over already.
    fn deliver(&self, room: &RoomName, p: Arc<Publication>) {
        let mut tracks = self.tracks.lock().expect("tracks lock");
        let Some(last) = tracks.get_mut(room) else {
            return;
        };
        if advance(last, &p.pos) {
            self.hub.broadcast(&p);
        }
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
                let pos = StreamPos {
                    epoch: Epoch::from_wire(epoch),
                    offset,
                };
                let arrival = {
                    let tracks = self.tracks.lock().expect("tracks lock");
                    match tracks.get(&room) {
                        None => return,
                        Some(last) => classify(last.as_ref(), &pos),
                    }
                };
                match arrival {
                    Arrival::Duplicate => {}
                    Arrival::Next | Arrival::NewEpoch => {
                        self.deliver(&room, encode_publication(&room, pos, event))
                    }
                    Arrival::Gap { after } => {
                        if !self.fill(&room, &after).await {
                            // History cannot be read now, so the gap cannot be filled: the
                            // room's subscribers are told plainly (a reset to just before
                            // this event) rather than left with a silent hole.
                            let before = StreamPos {
                                epoch: pos.epoch.clone(),
                                offset: pos.offset.saturating_sub(1),
                            };
                            tracing::warn!(%room, from = %after, to = %before, "gap not repairable now: resetting the room");
                            self.stats.resets.fetch_add(1, Ordering::Relaxed);
                            self.hub.reset(&room, &before);
                            if let Some(t) = self.tracks.lock().expect("tracks lock").get_mut(&room) {
                                *t = Some(before);
                            }
                        }
                        self.deliver(&room, encode_publication(&room, pos, event));
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

#[cfg(test)]
mod tests {
    //! The follower's decisions, position by position: no Redis, no hub.
    use super::*;

    fn pos(epoch: &str, offset: u64) -> StreamPos {
        StreamPos {
            epoch: Epoch::from_wire(epoch),
            offset,
        }
    }

    fn gap(epoch: &str, offset: u64) -> Arrival {
        Arrival::Gap {
            after: pos(epoch, offset),
        }
    }

    #[test]
    fn the_first_publication_a_node_sees_is_handed_over_whatever_its_position() {
        for p in [pos("e", 1), pos("e", 9), pos("", 0), pos("f", 1_000)] {
            assert_eq!(classify(None, &p), Arrival::Next, "{p}");
        }
    }

    #[test]
    fn within_an_epoch_each_offset_is_next_a_duplicate_or_past_a_gap() {
        for last in 0..6 {
            for offset in 0..10 {
                let expected = if offset <= last {
                    Arrival::Duplicate
                } else if offset == last + 1 {
                    Arrival::Next
                } else {
                    gap("e", last)
                };
                assert_eq!(
                    classify(Some(&pos("e", last)), &pos("e", offset)),
                    expected,
                    "last {last}, arrived {offset}"
                );
            }
        }
    }

    #[test]
    fn another_epoch_is_new_whatever_its_offset_or_age() {
        let last = pos("e2", 4);
        // After the room's history was reset: a new epoch starts over from offset 1.
        assert_eq!(classify(Some(&last), &pos("e3", 1)), Arrival::NewEpoch);
        assert_eq!(classify(Some(&last), &pos("e3", 9)), Arrival::NewEpoch);
        // An epoch seen before is not told apart: epochs have no order.
        assert_eq!(classify(Some(&last), &pos("e1", 3)), Arrival::NewEpoch);
        // After a reset to "before anything" (the room's keys are gone), the room's first
        // event comes in a new epoch.
        assert_eq!(classify(Some(&pos("", 0)), &pos("e4", 1)), Arrival::NewEpoch);
    }

    #[test]
    fn advancing_hands_over_what_is_newer_and_drops_what_was_handed_over() {
        let mut last = None;
        assert!(advance(&mut last, &pos("e", 3)), "the first one");
        assert!(!advance(&mut last, &pos("e", 3)), "the same again");
        assert!(!advance(&mut last, &pos("e", 2)), "an older one");
        assert!(advance(&mut last, &pos("e", 4)), "the next one");
        assert!(advance(&mut last, &pos("e", 9)), "past a gap: already dealt with");
        assert_eq!(last, Some(pos("e", 9)));
        assert!(advance(&mut last, &pos("f", 1)), "another epoch");
        assert_eq!(last, Some(pos("f", 1)));
    }

    #[test]
    fn a_repair_starts_after_the_last_handed_over_else_after_the_oldest_local_subscriber() {
        assert_eq!(
            repair_from(Some(pos("e", 4)), || panic!("not asked when a position is known")),
            Some(pos("e", 4))
        );
        assert_eq!(repair_from(None, || Some(pos("e", 2))), Some(pos("e", 2)));
        assert_eq!(repair_from(None, || Some(pos("", 0))), Some(pos("", 0)));
        assert_eq!(repair_from(None, || None), None, "nobody to repair for");
    }

    #[test]
    fn history_fills_the_gap_or_the_room_is_reset_to_its_top() {
        let top = pos("e", 7);
        assert_eq!(
            plan_repair(&top, &Read::Replay(Vec::new(), None)),
            Repair::UpToDate
        );
        let events = vec![(5, Bytes::from_static(b"5")), (6, Bytes::from_static(b"6"))];
        assert_eq!(
            plan_repair(&top, &Read::Replay(events.clone(), None)),
            Repair::Fill {
                epoch: &top.epoch,
                events: &events,
            }
        );
        // Trimmed or expired history, or the repair's position of an older epoch.
        assert_eq!(plan_repair(&top, &Read::Lost), Repair::Reset(&top));
        assert_eq!(plan_repair(&top, &Read::Fresh), Repair::Reset(&top));
        // Redis lost the room: "before anything".
        let gone = pos("", 0);
        assert_eq!(plan_repair(&gone, &Read::Lost), Repair::Reset(&gone));
    }

    /// Offsets handed over by a follower at `last` that takes `arrived`, filling a gap
    /// with `history` (the events after the gap's start, as a read would answer).
    fn follow(last: StreamPos, arrived: StreamPos, history: Option<&[u64]>) -> (Vec<u64>, StreamPos) {
        let mut track = Some(last.clone());
        let mut handed = Vec::new();
        match classify(track.as_ref(), &arrived) {
            Arrival::Duplicate => {}
            Arrival::Next | Arrival::NewEpoch => {
                assert!(advance(&mut track, &arrived));
                handed.push(arrived.offset);
            }
            Arrival::Gap { after } => {
                assert_eq!(after, last);
                if let Some(offsets) = history {
                    let top = pos("e", offsets.last().copied().unwrap_or(after.offset));
                    let read = Read::Replay(offsets.iter().map(|o| (*o, Bytes::new())).collect(), None);
                    if let Repair::Fill { epoch, events } = plan_repair(&top, &read) {
                        for (offset, _) in events {
                            let p = StreamPos {
                                epoch: epoch.clone(),
                                offset: *offset,
                            };
                            if advance(&mut track, &p) {
                                handed.push(*offset);
                            }
                        }
                    }
                }
                if advance(&mut track, &arrived) {
                    handed.push(arrived.offset);
                }
            }
        }
        (handed, track.expect("a position"))
    }

    #[test]
    fn a_gap_is_filled_in_order_and_the_message_that_showed_it_is_not_handed_over_twice() {
        // In order.
        assert_eq!(follow(pos("e", 4), pos("e", 5), None), (vec![5], pos("e", 5)));
        // A duplicate.
        assert_eq!(follow(pos("e", 4), pos("e", 4), None), (vec![], pos("e", 4)));
        // 5 and 6 missed; by the time history is read, 8 is in it too.
        assert_eq!(
            follow(pos("e", 4), pos("e", 7), Some(&[5, 6, 7, 8])),
            (vec![5, 6, 7, 8], pos("e", 8))
        );
        // History could not be read: the message goes on regardless.
        assert_eq!(follow(pos("e", 4), pos("e", 7), None), (vec![7], pos("e", 7)));
    }
}
