//! Business hours: how much of a span of time fell within an inbox's working hours, in
//! its time zone (Chatwoot's `ReportingEventHelper#business_hours`, on the working_hours
//! gem). Pure.
//!
//! - An inbox without working hours enabled, or with every day closed, counts 0.
//! - A day open all day counts 00:00 to 23:59, as Chatwoot stores it.
//! - Days are taken in the inbox's zone, so a day's hours follow its daylight-saving
//!   offset; a local time that does not exist (the hour skipped in spring) is taken as
//!   the first instant after the gap.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use rtgate_protocol::pb;

/// Longest span counted day by day (about 10 years); a longer one is counted up to it.
const MAX_DAYS: i64 = 3660;

/// Seconds of `[from_ms, to_ms)` within the inbox's working hours.
pub fn business_seconds(inbox: &pb::InboxSettings, from_ms: i64, to_ms: i64) -> i64 {
    if !inbox.working_hours_enabled || to_ms <= from_ms {
        return 0;
    }
    let tz: Tz = inbox.timezone.parse().unwrap_or(Tz::UTC);
    let (Some(from), Some(to)) = (
        DateTime::<Utc>::from_timestamp_millis(from_ms),
        DateTime::<Utc>::from_timestamp_millis(to_ms),
    ) else {
        return 0;
    };
    let mut day = from.with_timezone(&tz).date_naive();
    let last = to.with_timezone(&tz).date_naive();
    let mut total_ms = 0i64;
    let mut counted = 0;
    while day <= last && counted < MAX_DAYS {
        if let Some((open, close)) = opening(inbox, day, &tz) {
            let start = open.max(from);
            let end = close.min(to);
            if end > start {
                total_ms += (end - start).num_milliseconds();
            }
        }
        counted += 1;
        match day.succ_opt() {
            Some(next) => day = next,
            None => break,
        }
    }
    total_ms / 1000
}

/// The instants a day's working hours open and close, if it is open.
fn opening(inbox: &pb::InboxSettings, day: NaiveDate, tz: &Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let weekday = day.weekday().num_days_from_sunday();
    let hours = inbox.working_hours.iter().find(|h| h.day_of_week == weekday)?;
    if hours.closed_all_day {
        return None;
    }
    let (open, close) = if hours.open_all_day {
        ((0, 0), (23, 59))
    } else {
        (
            (hours.open_hour, hours.open_minutes),
            (hours.close_hour, hours.close_minutes),
        )
    };
    let at = |(h, m): (u32, u32)| -> Option<DateTime<Utc>> {
        let local = day.and_time(NaiveTime::from_hms_opt(h, m, 0)?);
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            // The hour repeated in autumn: its first occurrence.
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            // The hour skipped in spring: the first instant after it.
            LocalResult::None => (1..=180).find_map(|minutes| {
                tz.from_local_datetime(&(local + Duration::minutes(minutes)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            }),
        }
    };
    let (open, close) = (at(open)?, at(close)?);
    (close > open).then_some((open, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    /// Monday to Friday 09:00–17:00, weekends closed, in `tz`.
    fn office(tz: &str) -> pb::InboxSettings {
        pb::InboxSettings {
            inbox_id: 1,
            account_id: 1,
            working_hours_enabled: true,
            timezone: tz.into(),
            working_hours: (0..7)
                .map(|day| pb::WorkingHours {
                    day_of_week: day,
                    closed_all_day: day == 0 || day == 6,
                    open_hour: 9,
                    close_hour: 17,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn within_one_working_day() {
        let inbox = office("UTC");
        // Monday 2026-11-30, 10:00 to 12:30.
        assert_eq!(
            business_seconds(&inbox, ms("2026-11-30T10:00:00Z"), ms("2026-11-30T12:30:00Z")),
            9000
        );
        // Starting before opening and ending after closing: the whole day.
        assert_eq!(
            business_seconds(&inbox, ms("2026-11-30T06:00:00Z"), ms("2026-11-30T20:00:00Z")),
            8 * 3600
        );
    }

    #[test]
    fn across_a_weekend() {
        let inbox = office("UTC");
        // Friday 16:00 to Monday 10:00: one hour on Friday, one on Monday.
        assert_eq!(
            business_seconds(&inbox, ms("2026-12-04T16:00:00Z"), ms("2026-12-07T10:00:00Z")),
            2 * 3600
        );
        // Saturday to Sunday: nothing.
        assert_eq!(
            business_seconds(&inbox, ms("2026-12-05T09:00:00Z"), ms("2026-12-06T23:00:00Z")),
            0
        );
    }

    #[test]
    fn in_the_inbox_time_zone() {
        // Tokyo is UTC+9: 09:00–17:00 there is 00:00–08:00 UTC.
        let inbox = office("Asia/Tokyo");
        assert_eq!(
            business_seconds(&inbox, ms("2026-11-30T00:00:00Z"), ms("2026-11-30T08:00:00Z")),
            8 * 3600
        );
        assert_eq!(
            business_seconds(&inbox, ms("2026-11-30T08:00:00Z"), ms("2026-11-30T23:59:00Z")),
            0
        );
        // Friday 16:00 in Tokyo (07:00 UTC) to Monday 10:00 in Tokyo (Monday 01:00 UTC).
        assert_eq!(
            business_seconds(&inbox, ms("2026-12-04T07:00:00Z"), ms("2026-12-07T01:00:00Z")),
            2 * 3600
        );
        // A Sunday in UTC that is already Monday in Tokyo: Monday's hours count.
        assert_eq!(
            business_seconds(&inbox, ms("2026-12-06T23:00:00Z"), ms("2026-12-07T02:00:00Z")),
            2 * 3600
        );
    }

    #[test]
    fn daylight_saving_days_keep_their_local_hours() {
        // Berlin moved from UTC+2 to UTC+1 on Sunday 2026-10-25: Friday 23rd 09:00 is
        // 07:00 UTC, Monday 26th 09:00 is 08:00 UTC.
        let inbox = office("Europe/Berlin");
        assert_eq!(
            business_seconds(&inbox, ms("2026-10-23T07:00:00Z"), ms("2026-10-23T15:00:00Z")),
            8 * 3600
        );
        assert_eq!(
            business_seconds(&inbox, ms("2026-10-26T07:00:00Z"), ms("2026-10-26T09:00:00Z")),
            3600
        );
    }

    #[test]
    fn disabled_closed_and_all_day() {
        let mut inbox = office("UTC");
        inbox.working_hours_enabled = false;
        assert_eq!(
            business_seconds(&inbox, ms("2026-11-30T10:00:00Z"), ms("2026-11-30T12:00:00Z")),
            0
        );
        let all_day = pb::InboxSettings {
            working_hours_enabled: true,
            working_hours: vec![pb::WorkingHours {
                day_of_week: 1,
                open_all_day: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        // A Monday open all day counts 23:59; the days without an entry are closed.
        assert_eq!(
            business_seconds(&all_day, ms("2026-11-29T00:00:00Z"), ms("2026-12-01T00:00:00Z")),
            23 * 3600 + 59 * 60
        );
        assert_eq!(
            business_seconds(&all_day, ms("2026-11-30T12:00:00Z"), ms("2026-11-30T11:00:00Z")),
            0,
            "an end before the start"
        );
    }
}
