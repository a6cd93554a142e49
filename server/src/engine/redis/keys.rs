//! The Redis key layout (see docs/architecture.md, "Redis key layout").

use rtgate_protocol::RoomName;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `rtgate`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The room's metadata hash: `e` (epoch), `o` (last offset).
    pub fn meta(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:m", self.prefix, room)
    }

    /// The room's history stream: entries `o` (offset), `d` (encoded Event).
    pub fn history(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:h", self.prefix, room)
    }

    /// The room's idempotency keys: ZSET event id → offset.
    pub fn ids(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:i", self.prefix, room)
    }

    /// The room's pub/sub channel.
    pub fn channel(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:c", self.prefix, room)
    }

    /// The channel nodes ask each other things on (kicks).
    pub fn control(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// The channel only this engine instance listens on: its pub/sub liveness probes.
    pub fn probe(&self, instance: &str) -> String {
        format!("{}:probe:{instance}", self.prefix)
    }

    /// Revoked tokens: ZSET `u:7`/`c:3` → revoked-before unix seconds; hash `…:until`.
    pub fn revocations(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// The room a channel belongs to.
    pub fn room_of_channel(&self, channel: &[u8]) -> Option<RoomName> {
        let s = std::str::from_utf8(channel).ok()?;
        let rest = s.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let room = rest.strip_suffix("}:c")?;
        RoomName::parse(room).ok()
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the first non-empty
/// `{…}`), or of the whole key without one, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_back_to_rooms() {
        let keys = Keys::new("rt:test");
        let room = RoomName::parse("conversation:42").unwrap();
        assert_eq!(keys.meta(&room), "rt:test:{conversation:42}:m");
        assert_eq!(keys.room_of_channel(keys.channel(&room).as_bytes()), Some(room));
        assert_eq!(keys.room_of_channel(b"other:{conversation:42}:c"), None);
        assert_eq!(keys.room_of_channel(b"rt:test:{nope}:c"), None);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"x:{foo}:y"), 12182);
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot(b"x{}foo"), slot(b"foo"));
    }
}
