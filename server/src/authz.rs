//! Who may join which room. A pure function of the principal, the room and, for rooms
//! granted one at a time, a verified subscription token.
//!
//! | room | who may join |
//! |---|---|
//! | `user:ID` | that user (agents and admins) |
//! | `contact:ID` | that contact |
//! | `account:ID` | agents and admins of that account (never contacts) |
//! | `inbox:ID` | agents and admins whose token lists the inbox |
//! | `conversation:ID` | whoever holds a subscription token for it |
//! | `public:ACCOUNT:NAME` | any authenticated connection of that account |
//!
//! Any room may also be granted by a subscription token; the token is the backend's word.
//! A refusal is always the same `permission_denied`, whether the room exists, belongs to
//! another account or is simply not the caller's: nothing leaks about other tenants.

use rtgate_protocol::{RoomKind, RoomName};

use crate::auth::{Principal, Role};

/// How a subscription is being justified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Only the principal's claims.
    Claims,
    /// A subscription token for exactly this room and principal, already verified.
    SubscriptionToken,
}

/// Whether `principal` may join `room`.
pub fn may_join(principal: &Principal, room: &RoomName, grant: Grant) -> bool {
    if grant == Grant::SubscriptionToken {
        return true;
    }
    let agent = matches!(principal.role, Role::Agent | Role::Admin);
    match room.kind() {
        RoomKind::User(id) => agent && id == principal.id,
        RoomKind::Contact(id) => principal.role == Role::Contact && id == principal.id,
        RoomKind::Account(id) => agent && id == principal.account_id,
        RoomKind::Inbox(id) => agent && principal.inboxes.binary_search(&id).is_ok(),
        RoomKind::Conversation(_) => false,
        RoomKind::Public(account) => account == principal.account_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, id: u64, account: u64, inboxes: &[u64]) -> Principal {
        Principal {
            id,
            account_id: account,
            role,
            inboxes: inboxes.to_vec(),
            expires_at: None,
            auto_inboxes: false,
        }
    }

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    #[test]
    fn authorization_matrix() {
        let agent = principal(Role::Agent, 7, 1, &[10, 11]);
        let admin = principal(Role::Admin, 8, 1, &[10, 11, 12]);
        let contact = principal(Role::Contact, 7, 1, &[]);
        let other_tenant = principal(Role::Admin, 9, 2, &[20]);

        let cases: &[(&Principal, &str, bool)] = &[
            (&agent, "user:7", true),
            (&agent, "user:8", false),
            (&agent, "contact:7", false),
            (&agent, "account:1", true),
            (&agent, "account:2", false),
            (&agent, "inbox:10", true),
            (&agent, "inbox:12", false),
            (&agent, "inbox:20", false),
            (&agent, "conversation:5", false),
            (&agent, "public:1:lobby", true),
            (&agent, "public:2:lobby", false),
            (&admin, "inbox:12", true),
            (&admin, "inbox:20", false),
            (&admin, "account:2", false),
            (&contact, "contact:7", true),
            (&contact, "user:7", false),
            (&contact, "account:1", false),
            (&contact, "inbox:10", false),
            (&contact, "public:1:lobby", true),
            (&other_tenant, "public:1:lobby", false),
            (&other_tenant, "public:2:lobby", true),
            (&other_tenant, "account:1", false),
            (&other_tenant, "inbox:10", false),
            (&other_tenant, "user:7", false),
            (&other_tenant, "account:2", true),
        ];
        for (who, name, expected) in cases {
            assert_eq!(
                may_join(who, &room(name), Grant::Claims),
                *expected,
                "{:?} {} on {name}",
                who.role,
                who.id
            );
        }
        assert!(may_join(
            &contact,
            &room("conversation:5"),
            Grant::SubscriptionToken
        ));
    }
}
