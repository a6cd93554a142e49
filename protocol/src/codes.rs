//! Numbered error codes (in `Reply.error`) and disconnect codes (in `Disconnect` and as the
//! close code of the transport). The table in docs/protocol.md is generated from the same
//! values; `codes_are_documented` keeps them in step.

use std::fmt;

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr, $label:expr;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every code, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The numeric value sent on the wire.
            pub fn code(self) -> u32 {
                self as u32
            }

            /// A short snake_case name, stable, used in logs and metrics.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }

            /// The code with this numeric value, if any.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ({})", self.label(), self.code())
            }
        }
    };
}

code_enum! {
    /// Why a request failed. The connection stays open.
    ErrorCode {
        /// The frame was well-formed protobuf but its content is invalid (missing fields…).
        BadRequest = 400, "bad_request";
        /// The token is invalid, expired or not accepted.
        Unauthorized = 401, "unauthorized";
        /// The connection may not do this (join this room, publish this event…). The message
        /// never says whether the room exists or belongs to someone else.
        PermissionDenied = 403, "permission_denied";
        /// Unsubscribe from, publish to or type in a room the connection has not joined.
        NotSubscribed = 404, "not_subscribed";
        /// Subscribe to a room the connection has already joined (the subscription stands).
        AlreadySubscribed = 409, "already_subscribed";
        /// The room name is not of a known form.
        InvalidRoom = 422, "invalid_room";
        /// Too many subscriptions or requests; retry later.
        LimitExceeded = 429, "limit_exceeded";
        /// An unexpected failure inside the gateway.
        Internal = 500, "internal";
        /// The engine (history, fan-out) is unavailable for now; retry later.
        Unavailable = 503, "unavailable";
    }
}

code_enum! {
    /// Why the server closed a connection. Values lie in 3000–3999, the range WebSocket
    /// leaves to applications, and are also the WebTransport session close code.
    DisconnectCode {
        /// Closed on purpose by either side, nothing wrong.
        Normal = 3000, "normal";
        /// The gateway is shutting down: reconnect (to it or another node) after the advised delay.
        Shutdown = 3001, "shutdown";
        /// No Hello arrived in time after the transport was set up.
        HelloTimeout = 3002, "hello_timeout";
        /// A frame could not be decoded.
        BadFrame = 3003, "bad_frame";
        /// A frame exceeded the maximum frame size.
        FrameTooLarge = 3004, "frame_too_large";
        /// The Hello token was refused.
        Unauthorized = 3005, "unauthorized";
        /// The token expired and no valid refresh arrived within the grace period.
        TokenExpired = 3006, "token_expired";
        /// The client did not read fast enough and its send queue overflowed.
        SlowConsumer = 3007, "slow_consumer";
        /// The backend asked for this user's connections to be closed.
        Kicked = 3008, "kicked";
        /// A frame arrived that is not allowed at this point (e.g. anything before Hello).
        ProtocolViolation = 3009, "protocol_violation";
        /// Nothing was received from the client for too long.
        Stale = 3010, "stale";
        /// The gateway failed internally.
        ServerError = 3011, "server_error";
        /// The gateway is at its connection limit.
        Overloaded = 3012, "overloaded";
    }
}

impl DisconnectCode {
    /// Whether a client should reconnect after this code, and after how long at least (ms).
    /// Clients add jitter on top.
    pub fn reconnect_advice(self) -> Option<u32> {
        match self {
            DisconnectCode::Shutdown => Some(500),
            DisconnectCode::SlowConsumer => Some(1_000),
            DisconnectCode::Stale | DisconnectCode::ServerError => Some(500),
            DisconnectCode::Overloaded => Some(5_000),
            // A new token is needed first; the client's token provider supplies it.
            DisconnectCode::TokenExpired => Some(0),
            DisconnectCode::Normal
            | DisconnectCode::HelloTimeout
            | DisconnectCode::BadFrame
            | DisconnectCode::FrameTooLarge
            | DisconnectCode::Unauthorized
            | DisconnectCode::Kicked
            | DisconnectCode::ProtocolViolation => None,
        }
    }

    /// The `Disconnect` frame announcing this code.
    pub fn frame(self, reason: impl Into<String>) -> crate::pb::Disconnect {
        let advice = self.reconnect_advice();
        crate::pb::Disconnect {
            code: self.code(),
            reason: reason.into(),
            reconnect: advice.is_some(),
            reconnect_after_ms: advice.unwrap_or(0),
        }
    }
}

impl ErrorCode {
    /// The `Error` message carrying this code.
    pub fn error(self, message: impl Into<String>) -> crate::pb::Error {
        crate::pb::Error {
            code: self.code(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
        }
        for code in DisconnectCode::ALL {
            assert_eq!(DisconnectCode::from_code(code.code()), Some(*code));
            assert!((3000..4000).contains(&code.code()));
        }
    }

    #[test]
    fn codes_are_documented() {
        let doc = include_str!("../../docs/protocol.md");
        for code in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.code(), code.label());
            assert!(doc.contains(&row), "docs/protocol.md lacks the row {row}");
        }
        for code in DisconnectCode::ALL {
            let reconnect = match code.reconnect_advice() {
                Some(ms) => format!("yes, after {ms} ms"),
                None => "no".to_string(),
            };
            let row = format!("| {} | `{}` | {} |", code.code(), code.label(), reconnect);
            assert!(doc.contains(&row), "docs/protocol.md lacks the row {row}");
        }
    }
}
