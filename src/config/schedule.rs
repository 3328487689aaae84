//! A route's `schedule`: days, a daily window and an IANA time zone, e.g.
//! `"mon-fri 09:00-17:00 Europe/Berlin"`. The zone comes from jiff's
//! bundled copy of the tz database (the same on every machine, none read
//! from the host), so daylight saving time is applied as the zone says:
//! 09:00 is 09:00 on the wall clock in winter and in summer.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// When a route is open.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after local midnight: `start <= t < end`.
    start: u16,
    end: u16,
    tz: TimeZone,
    /// As written, for messages and the explainer.
    pub text: String,
}

fn day_index(name: &str) -> Option<usize> {
    DAYS.iter().position(|(n, _)| *n == name)
}

/// `HH:MM` (00:00 to 24:00) as minutes.
fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
}

impl Schedule {
    /// Parse `DAYS HH:MM-HH:MM ZONE`. `DAYS` is a comma list of days
    /// (`mon`…`sun`) and ranges (`mon-fri`, `fri-mon` wraps); the window
    /// ends after it starts (an overnight shift is two routes' worth of
    /// days, or `00:00-24:00` on the days it covers).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days_s, window, zone] = parts[..] else {
            return Err(format!(
                "'{}' is not \"DAYS HH:MM-HH:MM ZONE\" (e.g. \"mon-fri 09:00-17:00 Europe/Berlin\")",
                text.escape_debug()
            ));
        };
        let mut days = [false; 7];
        for item in days_s.to_ascii_lowercase().split(',') {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (Some(a), Some(b)) = (day_index(a), day_index(b)) else {
                return Err(format!(
                    "'{item}' is not a day or a range of days (mon, tue, wed, thu, fri, sat, sun)"
                ));
            };
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (start, end) = window
            .split_once('-')
            .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
            .filter(|(a, b)| a < b)
            .ok_or_else(|| {
                format!("'{window}' is not a window HH:MM-HH:MM that ends after it starts")
            })?;
        let tz = jiff::tz::db()
            .get(zone)
            .map_err(|_| format!("'{zone}' is not an IANA time zone name"))?;
        Ok(Schedule {
            days,
            start,
            end,
            tz,
            text: text.to_string(),
        })
    }

    /// Is the route open at `unix_secs` (the gateway's clock)?
    pub fn allows(&self, unix_secs: i64) -> bool {
        let Ok(ts) = Timestamp::from_second(unix_secs) else {
            return false;
        };
        let local = self.tz.to_datetime(ts);
        let day = local.weekday().to_monday_zero_offset() as usize;
        let t = local.hour() as u16 * 60 + local.minute() as u16;
        self.days[day] && self.start <= t && t < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn windows_follow_the_wall_clock_across_dst() {
        let s = Schedule::parse("mon-fri 09:00-17:00 Europe/Berlin").unwrap();
        // Friday 2026-03-27, winter time (UTC+1): 09:00 local is 08:00Z.
        assert!(!s.allows(at("2026-03-27T07:59:59Z")));
        assert!(s.allows(at("2026-03-27T08:00:00Z")));
        assert!(s.allows(at("2026-03-27T15:59:59Z")));
        assert!(!s.allows(at("2026-03-27T16:00:00Z")));
        // Saturday: closed.
        assert!(!s.allows(at("2026-03-28T10:00:00Z")));
        // Monday 2026-03-30, summer time (UTC+2): 09:00 local is 07:00Z.
        assert!(s.allows(at("2026-03-30T07:00:00Z")));
        assert!(!s.allows(at("2026-03-30T06:59:59Z")));
        assert!(!s.allows(at("2026-03-30T15:00:00Z")));
    }

    #[test]
    fn bad_schedules_say_why() {
        for bad in [
            "",
            "mon-fri 09:00-17:00",
            "mon-fri 09:00-17:00 Mars/Olympus",
            "mon-fry 09:00-17:00 UTC",
            "mon-fri 17:00-09:00 UTC",
            "mon-fri 9:00-17:00 UTC",
            "mon-fri 09:00-25:00 UTC",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
        let s = Schedule::parse("fri-mon,wed 00:00-24:00 UTC").unwrap();
        assert_eq!(s.days, [true, false, true, false, true, true, true]);
    }
}
