//! Room names: parsed and validated once, at the edge.
//!
//! A room is `KIND:ID` where KIND is one of `user`, `contact`, `account`, `inbox`,
//! `conversation` with a canonical decimal id (no sign, no leading zero), or `public:NAME`
//! with NAME made of 1–64 characters from `a-z 0-9 _ - .`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a room is about; decides who may join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// `user:ID`: one agent's private room (all their devices).
    User(u64),
    /// `contact:ID`: one contact's private room.
    Contact(u64),
    /// `account:ID`: everyone of an account.
    Account(u64),
    /// `inbox:ID`: members of an inbox and the account's administrators (a token lists the
    /// inboxes its holder may read; for administrators, every inbox of the account).
    Inbox(u64),
    /// `conversation:ID`: granted per conversation by a backend-signed subscription token.
    Conversation(u64),
    /// `public:ACCOUNT:NAME`: any authenticated connection of that account (public rooms
    /// never cross tenants).
    Public(u64),
}

impl RoomKind {
    /// The kind's name, as written before the first `:` (`conversation`, `public`, …).
    pub fn label(&self) -> &'static str {
        match self {
            RoomKind::User(_) => "user",
            RoomKind::Contact(_) => "contact",
            RoomKind::Account(_) => "account",
            RoomKind::Inbox(_) => "inbox",
            RoomKind::Conversation(_) => "conversation",
            RoomKind::Public(_) => "public",
        }
    }
}

/// Why a string is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// Longer than [`RoomName::MAX_LEN`].
    #[error("room name longer than {} bytes", RoomName::MAX_LEN)]
    TooLong,
    /// No `KIND:` prefix, or an unknown kind.
    #[error("unknown room kind")]
    UnknownKind,
    /// The id is not a canonical positive decimal number.
    #[error("room id must be a canonical decimal number")]
    BadId,
    /// A public room name not of the form `public:ACCOUNT:NAME`, NAME 1-64 characters
    /// of `a-z 0-9 _ - .`.
    #[error("public rooms are public:ACCOUNT:NAME, NAME 1-64 characters of a-z 0-9 _ - .")]
    BadName,
}

/// A validated room name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Longest accepted room name, in bytes.
    pub const MAX_LEN: usize = 96;

    /// Parses and validates a room name.
    pub fn parse(s: &str) -> Result<Self, RoomNameError> {
        parse_kind(s)?;
        Ok(RoomName(Arc::from(s)))
    }

    /// The room for kind and id, e.g. `RoomName::user(7)` is `user:7`.
    pub fn user(id: u64) -> Self {
        RoomName(Arc::from(format!("user:{id}")))
    }

    /// `contact:ID`.
    pub fn contact(id: u64) -> Self {
        RoomName(Arc::from(format!("contact:{id}")))
    }

    /// `account:ID`.
    pub fn account(id: u64) -> Self {
        RoomName(Arc::from(format!("account:{id}")))
    }

    /// `inbox:ID`.
    pub fn inbox(id: u64) -> Self {
        RoomName(Arc::from(format!("inbox:{id}")))
    }

    /// `conversation:ID`.
    pub fn conversation(id: u64) -> Self {
        RoomName(Arc::from(format!("conversation:{id}")))
    }

    /// The kind (and id) of this room.
    pub fn kind(&self) -> RoomKind {
        parse_kind(&self.0).expect("validated at construction")
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_id(s: &str) -> Result<u64, RoomNameError> {
    if s.is_empty() || s.len() > 20 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RoomNameError::BadId);
    }
    s.parse().map_err(|_| RoomNameError::BadId)
}

fn parse_kind(s: &str) -> Result<RoomKind, RoomNameError> {
    if s.len() > RoomName::MAX_LEN {
        return Err(RoomNameError::TooLong);
    }
    let (kind, rest) = s.split_once(':').ok_or(RoomNameError::UnknownKind)?;
    Ok(match kind {
        "user" => RoomKind::User(parse_id(rest)?),
        "contact" => RoomKind::Contact(parse_id(rest)?),
        "account" => RoomKind::Account(parse_id(rest)?),
        "inbox" => RoomKind::Inbox(parse_id(rest)?),
        "conversation" => RoomKind::Conversation(parse_id(rest)?),
        "public" => {
            let (account, name) = rest.split_once(':').ok_or(RoomNameError::BadName)?;
            let account = parse_id(account)?;
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
            if !ok {
                return Err(RoomNameError::BadName);
            }
            RoomKind::Public(account)
        }
        _ => return Err(RoomNameError::UnknownKind),
    })
}

impl FromStr for RoomName {
    type Err = RoomNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoomName::parse(s)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomName({})", self.0)
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(RoomName::parse("user:7").unwrap().kind(), RoomKind::User(7));
        assert_eq!(RoomName::parse("contact:3").unwrap().kind(), RoomKind::Contact(3));
        assert_eq!(RoomName::parse("account:1").unwrap().kind(), RoomKind::Account(1));
        assert_eq!(RoomName::parse("inbox:12").unwrap().kind(), RoomKind::Inbox(12));
        assert_eq!(
            RoomName::parse("conversation:18446744073709551615")
                .unwrap()
                .kind(),
            RoomKind::Conversation(u64::MAX)
        );
        assert_eq!(
            RoomName::parse("public:1:lobby-1.a_b").unwrap().kind(),
            RoomKind::Public(1)
        );
        assert_eq!(RoomName::user(7).as_str(), "user:7");
    }

    #[test]
    fn refuses_non_canonical_and_unknown_forms() {
        for bad in [
            "",
            "user",
            "user:",
            "user:07",
            "user:0",
            "user:-1",
            "user:+1",
            "user:1a",
            "user: 1",
            "USER:1",
            "room:1",
            "public:",
            "public:lobby",
            "public:1:",
            "public:01:lobby",
            "public:1:Lobby",
            "public:1:a b",
            "public:1:a/b",
            "public:1:a:b",
            "conversation:18446744073709551616",
            "inbox:1:2",
        ] {
            assert!(RoomName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            RoomName::parse(&format!("public:1:{}", "a".repeat(100))),
            Err(RoomNameError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(room) = RoomName::parse(&s) {
                prop_assert_eq!(room.as_str(), s.as_str());
                let _ = room.kind();
            }
        }

        #[test]
        fn ids_round_trip(id in 1u64..) {
            prop_assert_eq!(RoomName::parse(&format!("inbox:{id}")).unwrap().kind(), RoomKind::Inbox(id));
        }
    }
}
