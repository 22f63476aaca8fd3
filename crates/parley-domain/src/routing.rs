//! Routing configuration beyond the queue basics, and the pure rules that read it: which
//! requirements apply after a wait (bullseye expansion), whether a queue is open (business
//! hours, computed from a time zone handed in as a value), and how much of a seat a
//! conversation takes (weights for conversations waiting on the customer or idle).

use std::time::Duration;

use crate::{InvalidConfig, QueueId, SkillId, SkillLevel, Timestamp};

/// How an operator is chosen among the eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// The lowest share of capacity in use; ties to the one idle longest.
    #[default]
    LeastOccupied,
    /// The one whose last assignment is oldest.
    LongestIdle,
    /// The next operator after the queue's last choice, in id order.
    RoundRobin,
}

impl Selection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Selection::LeastOccupied => "least_occupied",
            Selection::LongestIdle => "longest_idle",
            Selection::RoundRobin => "round_robin",
        }
    }
}

/// One relaxation of a queue's requirements once a conversation has waited `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpansionStep {
    pub after: Duration,
    pub proficiency_drop: u8,
    pub remove_skills: Vec<SkillId>,
    pub drop_language: bool,
}

/// What an operator must have to take a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements {
    pub skills: Vec<SkillLevel>,
    pub language: Option<String>,
}

impl Requirements {
    /// Merges conversation-level requirements into the queue's: a skill required by both
    /// takes the higher proficiency; the conversation's language wins.
    pub fn merged(mut self, extra: &Requirements) -> Requirements {
        for s in &extra.skills {
            match self.skills.iter_mut().find(|q| q.skill == s.skill) {
                Some(q) => q.proficiency = q.proficiency.max(s.proficiency),
                None => self.skills.push(s.clone()),
            }
        }
        if extra.language.is_some() {
            self.language = extra.language.clone();
        }
        self
    }

    /// The requirements left after the expansion steps that apply to a wait of `waited`.
    /// Monotone: waiting longer never requires more.
    pub fn expanded(mut self, steps: &[ExpansionStep], waited: Duration) -> Requirements {
        for step in steps.iter().filter(|s| s.after <= waited) {
            self.skills.retain(|s| !step.remove_skills.contains(&s.skill));
            for s in &mut self.skills {
                s.proficiency = s.proficiency.saturating_sub(step.proficiency_drop).max(1);
            }
            if step.drop_language {
                self.language = None;
            }
        }
        self
    }

    /// Nothing required at all (what a conversation past its queue's maximum wait, with
    /// no overflow queue, falls back to).
    pub fn none() -> Requirements {
        Requirements::default()
    }
}

/// Validates expansion steps: strictly later one after another, each relaxing something.
pub fn check_expansion(steps: &[ExpansionStep]) -> Result<(), InvalidConfig> {
    let mut last = Duration::ZERO;
    for (i, s) in steps.iter().enumerate() {
        if s.after.is_zero() || (i > 0 && s.after <= last) {
            return Err(InvalidConfig::new(
                "expansion",
                "steps must come after a wait, each later than the one before",
            ));
        }
        if s.proficiency_drop == 0 && s.remove_skills.is_empty() && !s.drop_language {
            return Err(InvalidConfig::new(format!("expansion[{i}]"), "relaxes nothing"));
        }
        if s.proficiency_drop > 4 {
            return Err(InvalidConfig::new(format!("expansion[{i}].proficiency_drop"), "must be 0 to 4"));
        }
        if s.after > Duration::from_secs(7 * 24 * 3600) {
            return Err(InvalidConfig::new(format!("expansion[{i}].after"), "must be at most 7 days"));
        }
        last = s.after;
    }
    Ok(())
}

/// One opening window: a weekday (1 = Monday … 7 = Sunday) and local minutes of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub day: u8,
    pub open_minute: u16,
    pub close_minute: u16,
}

/// When a queue is open, in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessHours {
    /// The IANA name, as configured.
    pub time_zone_name: String,
    pub time_zone: jiff::tz::TimeZone,
    pub windows: Vec<Window>,
}

impl BusinessHours {
    /// Parses "HH:MM" (00:00 to 24:00) into minutes of the day.
    pub fn parse_time(field: &str, value: &str) -> Result<u16, InvalidConfig> {
        let bad = || InvalidConfig::new(field, format!("{value:?} is not HH:MM (00:00 to 24:00)"));
        let (h, m) = value.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.windows.is_empty() {
            return Err(InvalidConfig::new(
                "business_hours.windows",
                "at least one window (or no business hours at all)",
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            if !(1..=7).contains(&w.day) {
                return Err(InvalidConfig::new(format!("business_hours.windows[{i}].day"), "must be specified"));
            }
            if w.close_minute <= w.open_minute {
                return Err(InvalidConfig::new(format!("business_hours.windows[{i}]"), "close must be after open"));
            }
        }
        Ok(())
    }

    /// Whether `now` falls in a window.
    pub fn is_open(&self, now: Timestamp) -> bool {
        let Some(local) = self.local(now) else { return true };
        let day = local.weekday().to_monday_one_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.windows.iter().any(|w| w.day == day && w.open_minute <= minute && minute < w.close_minute)
    }

    /// The start of the next window after `now` (within a week), if any.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let local = self.local(now)?;
        let mut best: Option<jiff::Zoned> = None;
        for days_ahead in 0..8i64 {
            let date = local.date().checked_add(jiff::Span::new().days(days_ahead)).ok()?;
            let day = date.weekday().to_monday_one_offset() as u8;
            for w in self.windows.iter().filter(|w| w.day == day) {
                let time = jiff::civil::Time::new((w.open_minute / 60) as i8, (w.open_minute % 60) as i8, 0, 0).ok()?;
                let Ok(start) = date.to_datetime(time).to_zoned(self.time_zone.clone()) else { continue };
                if start.timestamp() > local.timestamp()
                    && best.as_ref().is_none_or(|b| start.timestamp() < b.timestamp())
                {
                    best = Some(start);
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.map(|z| Timestamp::from_micros(z.timestamp().as_microsecond()))
    }

    fn local(&self, now: Timestamp) -> Option<jiff::Zoned> {
        let ts = jiff::Timestamp::from_microsecond(now.as_micros()).ok()?;
        Some(ts.to_zoned(self.time_zone.clone()))
    }
}

/// A tenant's routing behaviour beyond its queues.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingSettings {
    /// `None`: returning customers are not sent back to their last operator.
    pub known_operator_window: Option<Duration>,
    pub known_operator_wait: Duration,
    /// Seat share, in thousandths, of a conversation waiting on the customer.
    pub waiting_weight_milli: u32,
    /// Seat share, in thousandths, of a conversation idle for `idle_after`.
    pub idle_weight_milli: u32,
    pub idle_after: Duration,
    /// `None`: a gone operator keeps their open conversations.
    pub reroute_after: Option<Duration>,
    pub fast_track_ttl: Duration,
    pub fast_track_max_attempts: u32,
    /// After coming online, an operator's capacity grows from one conversation to full over
    /// this time (zero: at once), so a backlog at shift start is spread over everyone
    /// logging in rather than dumped on the first.
    pub ramp_up: Duration,
    /// An operator who lets this many offers in a row expire is set away (zero: never).
    pub away_after_missed_offers: u32,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            known_operator_window: Some(Duration::from_secs(24 * 3600)),
            known_operator_wait: Duration::from_secs(60),
            waiting_weight_milli: 500,
            idle_weight_milli: 250,
            idle_after: Duration::from_secs(300),
            reroute_after: Some(Duration::from_secs(120)),
            fast_track_ttl: Duration::from_secs(3600),
            fast_track_max_attempts: 5,
            ramp_up: Duration::from_secs(30),
            away_after_missed_offers: 3,
        }
    }
}

impl RoutingSettings {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        for (field, w) in [("waiting_weight", self.waiting_weight_milli), ("idle_weight", self.idle_weight_milli)] {
            if !(100..=1000).contains(&w) {
                return Err(InvalidConfig::new(field, "must be 0.1 to 1"));
            }
        }
        if self.known_operator_window.is_some_and(|w| w > Duration::from_secs(90 * 24 * 3600)) {
            return Err(InvalidConfig::new("known_operator_window", "must be at most 90 days"));
        }
        if self.known_operator_wait > Duration::from_secs(3600) {
            return Err(InvalidConfig::new("known_operator_wait", "must be at most 1 h"));
        }
        if self.reroute_after.is_some_and(|w| w > Duration::from_secs(24 * 3600)) {
            return Err(InvalidConfig::new("reroute_after", "must be at most 24 h"));
        }
        if self.ramp_up > Duration::from_secs(3600) {
            return Err(InvalidConfig::new("ramp_up", "must be at most 1 h"));
        }
        if self.away_after_missed_offers > 100 {
            return Err(InvalidConfig::new("away_after_missed_offers", "must be 0 (never) to 100"));
        }
        if self.idle_after < Duration::from_secs(1) || self.idle_after > Duration::from_secs(24 * 3600) {
            return Err(InvalidConfig::new("idle_after", "must be 1 s to 24 h"));
        }
        if self.fast_track_ttl < Duration::from_secs(60) || self.fast_track_ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(InvalidConfig::new("fast_track_ttl", "must be 1 min to 30 days"));
        }
        if !(1..=100).contains(&self.fast_track_max_attempts) {
            return Err(InvalidConfig::new("fast_track_max_attempts", "must be 1 to 100"));
        }
        Ok(())
    }

    /// The capacity an operator online for `online_for` may fill now: growing from one
    /// conversation to `capacity` over the ramp-up, in whole seats.
    pub fn ramped_capacity(&self, capacity: u32, online_for: Duration) -> u32 {
        if capacity == 0 || self.ramp_up.is_zero() || online_for >= self.ramp_up {
            return capacity;
        }
        let grown = (u128::from(capacity) * online_for.as_millis()).div_ceil(self.ramp_up.as_millis());
        (grown as u32).clamp(1, capacity)
    }

    /// How much of a seat (in thousandths) a held conversation takes now: a full seat while
    /// the customer spoke last, less while it waits on the customer, less again once idle.
    pub fn weight_milli(&self, operator_spoke_last: bool, last_activity: Timestamp, now: Timestamp) -> u32 {
        if now.since(last_activity) >= self.idle_after {
            self.idle_weight_milli
        } else if operator_spoke_last {
            self.waiting_weight_milli
        } else {
            1000
        }
    }
}

/// Where a queue's waiting conversation should go because of time: nowhere, to its
/// overflow queue, or to its after-hours queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overflow {
    Stay,
    To(QueueId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_ramps_up_from_one_seat_to_full_and_never_shrinks() {
        let s = RoutingSettings { ramp_up: Duration::from_secs(30), ..RoutingSettings::default() };
        let at = |secs: u64| s.ramped_capacity(5, Duration::from_secs(secs));
        assert_eq!([at(0), at(1), at(6), at(7), at(13), at(29), at(30), at(600)], [1, 1, 1, 2, 3, 5, 5, 5]);
        let mut last = 0;
        for ms in (0..40_000).step_by(250) {
            let c = s.ramped_capacity(3, Duration::from_millis(ms));
            assert!((1..=3).contains(&c) && c >= last, "{c} at {ms} ms");
            last = c;
        }
        assert_eq!(s.ramped_capacity(0, Duration::ZERO), 0, "no seats stays no seats");
        let off = RoutingSettings { ramp_up: Duration::ZERO, ..RoutingSettings::default() };
        assert_eq!(off.ramped_capacity(5, Duration::ZERO), 5);
    }

    fn skill(s: &str, p: u8) -> SkillLevel {
        SkillLevel { skill: SkillId::parse(s).unwrap(), proficiency: p }
    }

    #[test]
    fn expansion_relaxes_step_by_step() {
        let base = Requirements { skills: vec![skill("billing", 4), skill("vip", 2)], language: Some("ru".into()) };
        let steps = vec![
            ExpansionStep {
                after: Duration::from_secs(30),
                proficiency_drop: 2,
                remove_skills: vec![],
                drop_language: false,
            },
            ExpansionStep {
                after: Duration::from_secs(60),
                proficiency_drop: 0,
                remove_skills: vec![SkillId::parse("vip").unwrap()],
                drop_language: true,
            },
        ];
        check_expansion(&steps).unwrap();
        assert_eq!(base.clone().expanded(&steps, Duration::from_secs(10)), base);
        let at_30 = base.clone().expanded(&steps, Duration::from_secs(30));
        assert_eq!(at_30.skills, vec![skill("billing", 2), skill("vip", 1)]);
        let at_60 = base.expanded(&steps, Duration::from_secs(61));
        assert_eq!(at_60, Requirements { skills: vec![skill("billing", 2)], language: None });
    }

    #[test]
    fn expansion_steps_must_go_forward_and_relax_something() {
        let step = |s, drop| ExpansionStep {
            after: Duration::from_secs(s),
            proficiency_drop: drop,
            remove_skills: vec![],
            drop_language: false,
        };
        assert!(check_expansion(&[step(30, 1), step(30, 1)]).is_err());
        assert!(check_expansion(&[step(0, 1)]).is_err());
        assert!(check_expansion(&[step(30, 0)]).is_err());
        assert!(check_expansion(&[step(30, 1), step(60, 1)]).is_ok());
    }

    #[test]
    fn merging_takes_the_stricter_requirement() {
        let queue = Requirements { skills: vec![skill("billing", 2)], language: Some("ru".into()) };
        let conv = Requirements { skills: vec![skill("billing", 4), skill("vip", 1)], language: Some("en".into()) };
        let m = queue.merged(&conv);
        assert_eq!(m.skills, vec![skill("billing", 4), skill("vip", 1)]);
        assert_eq!(m.language.as_deref(), Some("en"));
    }

    fn hours() -> BusinessHours {
        let tz = jiff::tz::TimeZone::fixed(jiff::tz::offset(3)); // like Europe/Moscow
        let weekdays = (1..=5).map(|day| Window { day, open_minute: 9 * 60, close_minute: 18 * 60 });
        BusinessHours { time_zone_name: "UTC+3".into(), time_zone: tz, windows: weekdays.collect() }
    }

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp::from_micros(rfc3339.parse::<jiff::Timestamp>().unwrap().as_microsecond())
    }

    #[test]
    fn business_hours_in_local_time() {
        let h = hours();
        // Monday 2026-11-23: 06:00Z is 09:00 local.
        assert!(h.is_open(at("2026-11-23T06:00:00Z")));
        assert!(!h.is_open(at("2026-11-23T05:59:59Z")));
        assert!(!h.is_open(at("2026-11-23T15:00:00Z")), "18:00 local is closed");
        // Saturday is closed; next opening is Monday 09:00 local.
        let saturday = at("2026-11-28T10:00:00Z");
        assert!(!h.is_open(saturday));
        assert_eq!(h.next_open(saturday), Some(at("2026-11-30T06:00:00Z")));
        // Late Monday evening: Tuesday morning.
        assert_eq!(h.next_open(at("2026-11-23T20:00:00Z")), Some(at("2026-11-24T06:00:00Z")));
    }

    #[test]
    fn times_parse_strictly() {
        assert_eq!(BusinessHours::parse_time("t", "09:30").unwrap(), 570);
        assert_eq!(BusinessHours::parse_time("t", "24:00").unwrap(), 1440);
        for bad in ["9:30", "24:01", "12:60", "ab:cd", ""] {
            assert!(BusinessHours::parse_time("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_fall_while_waiting_and_idle() {
        let s = RoutingSettings::default();
        let t0 = Timestamp::from_millis(1_000_000);
        assert_eq!(s.weight_milli(false, t0, t0), 1000);
        assert_eq!(s.weight_milli(true, t0, t0), 500);
        assert_eq!(s.weight_milli(false, t0, t0.saturating_add(Duration::from_secs(301))), 250);
    }
}
