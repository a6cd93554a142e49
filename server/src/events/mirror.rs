//! The backend's configuration the business listeners decide with, as the backend mirrors
//! it (`/api/v1/mirror/...`): inboxes (members, business hours, CSAT settings), account
//! users (role and notification settings), teams, campaigns and automation rules. Pure:
//! records in, indexes out, and the checks a record passes before it is stored. Kept in
//! the same store as the destinations, and reloaded with them.

use std::collections::HashMap;

use rtgate_protocol::pb;

/// The events an automation rule may be for (Chatwoot's).
pub const RULE_EVENTS: [&str; 5] = [
    "conversation_created",
    "conversation_updated",
    "conversation_opened",
    "conversation_resolved",
    "message_created",
];

/// The operators of rule conditions.
pub const RULE_OPERATORS: [&str; 10] = [
    "equal_to",
    "not_equal_to",
    "contains",
    "does_not_contain",
    "is_present",
    "is_not_present",
    "is_greater_than",
    "is_less_than",
    "days_before",
    "attribute_changed",
];

/// The actions of rules (Chatwoot's); `send_webhook_event` is rtgate's to carry out.
pub const RULE_ACTIONS: [&str; 16] = [
    "send_message",
    "add_private_note",
    "assign_agent",
    "assign_team",
    "add_label",
    "remove_label",
    "mute_conversation",
    "snooze_conversation",
    "resolve_conversation",
    "open_conversation",
    "pending_conversation",
    "change_priority",
    "send_email_transcript",
    "send_email_to_team",
    "send_attachment",
    "send_webhook_event",
];

/// The notification types (Chatwoot's) a user's settings name.
pub const NOTIFICATION_TYPES: [&str; 5] = [
    "conversation_creation",
    "conversation_assignment",
    "conversation_mention",
    "assigned_conversation_new_message",
    "participating_conversation_new_message",
];

/// The mirrored configuration, indexed for the listeners.
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    inboxes: HashMap<u64, pb::InboxSettings>,
    /// Per account, by user id.
    account_users: HashMap<u64, HashMap<u64, pb::AccountUser>>,
    teams: HashMap<u64, pb::Team>,
    /// Per account and display id.
    campaigns: HashMap<(u64, u64), pb::Campaign>,
    /// Per account, then per event, in id order (looked up by `&str`, without allocating).
    rules: HashMap<u64, HashMap<String, Vec<pb::AutomationRule>>>,
}

impl Mirror {
    /// Adds an inbox.
    pub fn add_inbox(&mut self, inbox: pb::InboxSettings) {
        self.inboxes.insert(inbox.inbox_id, inbox);
    }

    /// Adds an account user.
    pub fn add_account_user(&mut self, user: pb::AccountUser) {
        self.account_users
            .entry(user.account_id)
            .or_default()
            .insert(user.user_id, user);
    }

    /// Adds a team.
    pub fn add_team(&mut self, team: pb::Team) {
        self.teams.insert(team.id, team);
    }

    /// Adds a campaign.
    pub fn add_campaign(&mut self, campaign: pb::Campaign) {
        self.campaigns
            .insert((campaign.account_id, campaign.display_id), campaign);
    }

    /// Adds an automation rule.
    pub fn add_rule(&mut self, rule: pb::AutomationRule) {
        let list = self
            .rules
            .entry(rule.account_id)
            .or_default()
            .entry(rule.event_name.clone())
            .or_default();
        list.push(rule);
        list.sort_by_key(|r| r.id);
    }

    /// An inbox.
    pub fn inbox(&self, inbox_id: u64) -> Option<&pb::InboxSettings> {
        self.inboxes.get(&inbox_id)
    }

    /// A user of an account.
    pub fn account_user(&self, account_id: u64, user_id: u64) -> Option<&pb::AccountUser> {
        self.account_users.get(&account_id)?.get(&user_id)
    }

    /// The account's administrators, in id order.
    pub fn administrators(&self, account_id: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .account_users
            .get(&account_id)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|u| u.role() == pb::account_user::Role::Administrator)
            .map(|u| u.user_id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The inboxes of the account whose broadcasts the user gets (Chatwoot's `U(inbox)`):
    /// those listing the user as a member, and for an administrator every inbox of the
    /// account; sorted. Empty for a user who is not in the account.
    pub fn member_inboxes(&self, account_id: u64, user_id: u64) -> Vec<u64> {
        let Some(user) = self.account_user(account_id, user_id) else {
            return Vec::new();
        };
        let admin = user.role() == pb::account_user::Role::Administrator;
        let mut ids: Vec<u64> = self
            .inboxes
            .values()
            .filter(|i| i.account_id == account_id && (admin || i.member_ids.contains(&user_id)))
            .map(|i| i.inbox_id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A team of the account.
    pub fn team(&self, account_id: u64, team_id: u64) -> Option<&pb::Team> {
        self.teams.get(&team_id).filter(|t| t.account_id == account_id)
    }

    /// The account's campaign with this display id.
    pub fn campaign(&self, account_id: u64, display_id: u64) -> Option<&pb::Campaign> {
        self.campaigns.get(&(account_id, display_id))
    }

    /// The account's active rules for `event_name`, in id order.
    pub fn active_rules(&self, account_id: u64, event_name: &str) -> Vec<&pb::AutomationRule> {
        self.rules
            .get(&account_id)
            .and_then(|events| events.get(event_name))
            .into_iter()
            .flatten()
            .filter(|r| r.active)
            .collect()
    }

    /// Every inbox, in id order.
    pub fn inboxes(&self) -> Vec<pb::InboxSettings> {
        sorted(self.inboxes.values().cloned(), |i| i.inbox_id)
    }

    /// Every account user, in id order.
    pub fn account_users(&self) -> Vec<pb::AccountUser> {
        sorted(
            self.account_users.values().flat_map(HashMap::values).cloned(),
            |u| u.id,
        )
    }

    /// Every team, in id order.
    pub fn teams(&self) -> Vec<pb::Team> {
        sorted(self.teams.values().cloned(), |t| t.id)
    }

    /// Every campaign, in id order.
    pub fn campaigns(&self) -> Vec<pb::Campaign> {
        sorted(self.campaigns.values().cloned(), |c| c.id)
    }

    /// Every rule, in id order.
    pub fn rules(&self) -> Vec<pb::AutomationRule> {
        sorted(
            self.rules.values().flat_map(HashMap::values).flatten().cloned(),
            |r| r.id,
        )
    }
}

fn sorted<T>(items: impl Iterator<Item = T>, key: impl Fn(&T) -> u64) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(key);
    v
}

/// Most ids in one list of a record (members, values…).
const MAX_LIST: usize = 10_000;

fn check_list<T>(name: &str, list: &[T]) -> Result<(), String> {
    if list.len() > MAX_LIST {
        return Err(format!("{name}: at most {MAX_LIST} entries"));
    }
    Ok(())
}

/// Checks an inbox before it is stored.
pub fn check_inbox(inbox: &pb::InboxSettings) -> Result<(), String> {
    if inbox.inbox_id == 0 || inbox.account_id == 0 {
        return Err("inbox_id and account_id are required".into());
    }
    check_list("member_ids", &inbox.member_ids)?;
    if !inbox.timezone.is_empty() && inbox.timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err(format!("unknown time zone {:?}", inbox.timezone));
    }
    let mut days = [false; 7];
    for h in &inbox.working_hours {
        let day = h.day_of_week as usize;
        if day > 6 {
            return Err(format!("day_of_week {} is not 0 (Sunday) to 6", h.day_of_week));
        }
        if std::mem::replace(&mut days[day], true) {
            return Err(format!("day_of_week {day} is given twice"));
        }
        if h.open_hour > 23 || h.close_hour > 23 || h.open_minutes > 59 || h.close_minutes > 59 {
            return Err(format!("day {day}: hours are 0 to 23, minutes 0 to 59"));
        }
        if !h.closed_all_day
            && !h.open_all_day
            && (h.open_hour, h.open_minutes) >= (h.close_hour, h.close_minutes)
        {
            return Err(format!("day {day}: closes before it opens"));
        }
    }
    if let Some(rules) = inbox.csat.as_ref().and_then(|c| c.rules.as_ref()) {
        if !matches!(rules.operator.as_str(), "" | "contains" | "does_not_contain") {
            return Err(format!(
                "csat rules operator {:?} is not contains or does_not_contain",
                rules.operator
            ));
        }
        check_list("csat rules values", &rules.values)?;
    }
    Ok(())
}

/// Checks an account user before it is stored.
pub fn check_account_user(user: &pb::AccountUser) -> Result<(), String> {
    if user.id == 0 || user.account_id == 0 || user.user_id == 0 {
        return Err("id, account_id and user_id are required".into());
    }
    if let Some(bad) = user
        .notifications
        .iter()
        .find(|n| !NOTIFICATION_TYPES.contains(&n.as_str()))
    {
        return Err(format!(
            "unknown notification type {bad:?} (one of {})",
            NOTIFICATION_TYPES.join(", ")
        ));
    }
    Ok(())
}

/// Checks a team before it is stored.
pub fn check_team(team: &pb::Team) -> Result<(), String> {
    if team.id == 0 || team.account_id == 0 {
        return Err("id and account_id are required".into());
    }
    check_list("member_ids", &team.member_ids)
}

/// Checks a campaign before it is stored.
pub fn check_campaign(campaign: &pb::Campaign) -> Result<(), String> {
    if campaign.id == 0 || campaign.account_id == 0 || campaign.display_id == 0 || campaign.inbox_id == 0 {
        return Err("id, account_id, display_id and inbox_id are required".into());
    }
    Ok(())
}

/// Checks an automation rule before it is stored.
pub fn check_rule(rule: &pb::AutomationRule) -> Result<(), String> {
    if rule.id == 0 || rule.account_id == 0 {
        return Err("id and account_id are required".into());
    }
    if !RULE_EVENTS.contains(&rule.event_name.as_str()) {
        return Err(format!(
            "event_name {:?} is not one of {}",
            rule.event_name,
            RULE_EVENTS.join(", ")
        ));
    }
    if rule.conditions.len() > 64 || rule.actions.len() > 64 {
        return Err("at most 64 conditions and 64 actions".into());
    }
    for c in &rule.conditions {
        if c.attribute_key.is_empty() {
            return Err("a condition has no attribute_key".into());
        }
        if c.custom_attribute_type.is_empty()
            && !super::automation::conditions::ATTRIBUTES.contains(&c.attribute_key.as_str())
        {
            return Err(format!(
                "attribute_key {:?} is not one of {} (or set custom_attribute_type)",
                c.attribute_key,
                super::automation::conditions::ATTRIBUTES.join(", ")
            ));
        }
        if !RULE_OPERATORS.contains(&c.filter_operator.as_str()) {
            return Err(format!(
                "filter_operator {:?} is not one of {}",
                c.filter_operator,
                RULE_OPERATORS.join(", ")
            ));
        }
        if !matches!(c.query_operator.to_ascii_lowercase().as_str(), "" | "and" | "or") {
            return Err(format!("query_operator {:?} is not and or or", c.query_operator));
        }
        if !matches!(
            c.custom_attribute_type.as_str(),
            "" | "conversation_attribute" | "contact_attribute"
        ) {
            return Err(format!(
                "custom_attribute_type {:?} is not conversation_attribute or contact_attribute",
                c.custom_attribute_type
            ));
        }
        if matches!(
            c.filter_operator.as_str(),
            "is_greater_than" | "is_less_than" | "days_before"
        ) && c
            .values
            .first()
            .is_none_or(|v| v.trim().parse::<f64>().is_err() && !is_date(v))
        {
            return Err(format!(
                "{} on {} needs a number (or a date) as its value",
                c.filter_operator, c.attribute_key
            ));
        }
        check_list("values", &c.values)?;
    }
    for a in &rule.actions {
        if !RULE_ACTIONS.contains(&a.action_name.as_str()) {
            return Err(format!(
                "action_name {:?} is not one of {}",
                a.action_name,
                RULE_ACTIONS.join(", ")
            ));
        }
        if a.action_name == "send_webhook_event" {
            let url = a.action_params.first().map(String::as_str).unwrap_or("");
            crate::delivery::directory::check_url(url).map_err(|e| format!("send_webhook_event: {e}"))?;
        }
        check_list("action_params", &a.action_params)?;
    }
    Ok(())
}

/// Whether `value` is a date (`YYYY-MM-DD`) or an RFC 3339 time, as conditions compare.
pub fn is_date(value: &str) -> bool {
    super::automation::conditions::parse_time(value).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_indexed() {
        let mut m = Mirror::default();
        for (id, user, role) in [(1, 10, 1), (2, 11, 0), (3, 12, 1)] {
            m.add_account_user(pb::AccountUser {
                id,
                account_id: 1,
                user_id: user,
                role,
                ..Default::default()
            });
        }
        assert_eq!(m.administrators(1), [10, 12]);
        assert!(m.administrators(2).is_empty());
        m.add_rule(pb::AutomationRule {
            id: 9,
            account_id: 1,
            event_name: "message_created".into(),
            active: true,
            ..Default::default()
        });
        m.add_rule(pb::AutomationRule {
            id: 4,
            account_id: 1,
            event_name: "message_created".into(),
            active: false,
            ..Default::default()
        });
        assert_eq!(
            m.active_rules(1, "message_created")
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [9]
        );
        m.add_team(pb::Team {
            id: 5,
            account_id: 2,
            member_ids: vec![1],
        });
        assert!(m.team(1, 5).is_none(), "a team of another account");
        assert!(m.team(2, 5).is_some());
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let inbox = |change: &dyn Fn(&mut pb::InboxSettings)| {
            let mut i = pb::InboxSettings {
                inbox_id: 1,
                account_id: 1,
                timezone: "Europe/Berlin".into(),
                ..Default::default()
            };
            change(&mut i);
            check_inbox(&i)
        };
        assert_eq!(inbox(&|_| {}), Ok(()));
        assert!(
            inbox(&|i| i.timezone = "Mars/Olympus".into())
                .unwrap_err()
                .contains("time zone")
        );
        assert!(
            inbox(&|i| i.working_hours = vec![pb::WorkingHours {
                day_of_week: 1,
                open_hour: 17,
                close_hour: 9,
                ..Default::default()
            }])
            .unwrap_err()
            .contains("closes before")
        );
        assert!(
            inbox(&|i| i.working_hours = vec![pb::WorkingHours {
                day_of_week: 7,
                ..Default::default()
            }])
            .unwrap_err()
            .contains("day_of_week")
        );
        let rule = |change: &dyn Fn(&mut pb::AutomationRule)| {
            let mut r = pb::AutomationRule {
                id: 1,
                account_id: 1,
                event_name: "message_created".into(),
                active: true,
                conditions: vec![pb::RuleCondition {
                    attribute_key: "content".into(),
                    filter_operator: "contains".into(),
                    values: vec!["refund".into()],
                    ..Default::default()
                }],
                actions: vec![pb::RuleAction {
                    action_name: "add_label".into(),
                    action_params: vec!["billing".into()],
                }],
            };
            change(&mut r);
            check_rule(&r)
        };
        assert_eq!(rule(&|_| {}), Ok(()));
        assert!(
            rule(&|r| r.event_name = "message_updated".into())
                .unwrap_err()
                .contains("event_name")
        );
        assert!(
            rule(&|r| r.conditions[0].filter_operator = "like".into())
                .unwrap_err()
                .contains("filter_operator")
        );
        assert!(
            rule(&|r| {
                r.conditions[0].filter_operator = "is_greater_than".into();
                r.conditions[0].values = vec!["lots".into()];
            })
            .unwrap_err()
            .contains("needs a number")
        );
        assert!(
            rule(&|r| r.actions[0].action_name = "delete_everything".into())
                .unwrap_err()
                .contains("action_name")
        );
        assert!(
            rule(&|r| {
                r.actions[0] = pb::RuleAction {
                    action_name: "send_webhook_event".into(),
                    action_params: vec!["ftp://x/".into()],
                }
            })
            .unwrap_err()
            .contains("send_webhook_event")
        );
        assert!(
            check_account_user(&pb::AccountUser {
                id: 1,
                account_id: 1,
                user_id: 1,
                notifications: vec!["everything".into()],
                ..Default::default()
            })
            .unwrap_err()
            .contains("notification type")
        );
    }
}
