//! Token refresh on a live connection: same principal only; rooms the new claims no
//! longer grant are left.

use super::{Action, Session};
use std::time::Instant;

use rtgate_protocol::ErrorCode;
use rtgate_protocol::pb::{self};

impl Session {
    pub(super) fn handle_refresh(&mut self, id: u32, token: &str, now: Instant) {
        let current = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        match self.auth.verify_connection(token, self.unix_ms(now) / 1000) {
            Ok(new)
                if new.id == current.id
                    && new.role == current.role
                    && new.account_id == current.account_id =>
            {
                let expires = new.expires_at;
                self.principal = Some(new);
                self.recheck_rooms(now);
                self.reply(pb::Reply {
                    id,
                    refreshed: Some(pb::RefreshResult {
                        token_expires_at_ms: expires.map_or(0, |e| (e * 1000) as i64),
                    }),
                    ..Default::default()
                });
            }
            Ok(_) => {
                self.actions.push_back(Action::AuthFailed("refresh_mismatch"));
                self.reply_error(
                    id,
                    ErrorCode::Unauthorized,
                    "the new token is for another principal",
                );
            }
            Err(err) => {
                self.actions.push_back(Action::AuthFailed(err.label()));
                self.reply_error(id, ErrorCode::Unauthorized, "token refused");
            }
        }
    }
}
