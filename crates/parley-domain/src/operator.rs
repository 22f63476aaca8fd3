//! Operators, skills, queues and roles: the configuration routing decides with.

use std::time::Duration;

use crate::routing::{BusinessHours, ExpansionStep, Requirements, Selection, check_expansion};
use crate::{Channel, OperatorId, QueueId, SkillId, TeamId, TenantId};

/// What a token lets its holder do. Exactly one per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Supervisor,
    Admin,
    Integrator,
    /// The installation's own operator: tenants themselves.
    Platform,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
            Role::Integrator => "integrator",
            Role::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Operator, Role::Supervisor, Role::Admin, Role::Integrator, Role::Platform]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An operator's availability as they set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OperatorStatus {
    Online,
    Away,
    #[default]
    Offline,
    /// Finishing current work (shift end); takes nothing new.
    Draining,
}

impl OperatorStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorStatus::Online => "online",
            OperatorStatus::Away => "away",
            OperatorStatus::Offline => "offline",
            OperatorStatus::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<OperatorStatus> {
        [OperatorStatus::Online, OperatorStatus::Away, OperatorStatus::Offline, OperatorStatus::Draining]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Only an online operator is given new conversations.
    pub const fn takes_new_work(self) -> bool {
        matches!(self, OperatorStatus::Online)
    }
}

/// A skill at a proficiency from 1 (basic) to 5 (expert).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SkillLevel {
    pub skill: SkillId,
    pub proficiency: u8,
}

/// Why a configuration value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InvalidConfig {
    pub field: String,
    pub why: String,
}

impl InvalidConfig {
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self { field: field.into(), why: why.into() }
    }
}

impl SkillLevel {
    pub fn new(skill: SkillId, proficiency: u8) -> Result<Self, InvalidConfig> {
        if !(1..=5).contains(&proficiency) {
            return Err(InvalidConfig::new(
                format!("skill {skill}"),
                format!("proficiency must be 1 to 5, got {proficiency}"),
            ));
        }
        Ok(Self { skill, proficiency })
    }
}

/// An operator's configuration (not their presence, which lives with routing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub tenant: TenantId,
    pub id: OperatorId,
    pub display_name: String,
    pub skills: Vec<SkillLevel>,
    pub languages: Vec<String>,
    /// Conversations at once per channel; a channel not listed takes none.
    pub capacity: Vec<(Channel, u32)>,
    pub disabled: bool,
    /// Fast-track conversations the operator cannot take go to their team first.
    pub team: Option<TeamId>,
}

impl Operator {
    pub fn capacity_for(&self, channel: Channel) -> u32 {
        self.capacity.iter().find(|(c, _)| *c == channel).map_or(0, |(_, n)| *n)
    }

    /// The operator's proficiency in a skill, if they have it.
    pub fn proficiency(&self, skill: &SkillId) -> Option<u8> {
        self.skills.iter().find(|s| &s.skill == skill).map(|s| s.proficiency)
    }

    /// Checks the invariants the admin API promises.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_display_name(&self.display_name)?;
        let mut seen = Vec::new();
        for s in &self.skills {
            if seen.contains(&&s.skill) {
                return Err(InvalidConfig::new("skills", format!("skill {} listed twice", s.skill)));
            }
            seen.push(&s.skill);
        }
        for lang in &self.languages {
            check_language(lang)?;
        }
        let mut channels = Vec::new();
        for (channel, max) in &self.capacity {
            if channels.contains(channel) {
                return Err(InvalidConfig::new("capacity", format!("channel {channel} listed twice")));
            }
            channels.push(*channel);
            if !(1..=100).contains(max) {
                return Err(InvalidConfig::new(
                    "capacity",
                    format!("max conversations for {channel} must be 1 to 100, got {max}"),
                ));
            }
        }
        Ok(())
    }
}

/// A queue's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub tenant: TenantId,
    pub id: QueueId,
    pub display_name: String,
    pub required_skills: Vec<SkillLevel>,
    pub language: Option<String>,
    pub priority: i32,
    /// `None`: assign at once without an offer.
    pub offer_timeout: Option<Duration>,
    pub selection: Selection,
    /// Once waited this long, served before newer conversations of higher-priority queues.
    pub aging_delay: Option<Duration>,
    /// Once waited this long in this queue, moved to `overflow` (or, without it, anyone
    /// may take it).
    pub max_wait: Option<Duration>,
    pub overflow: Option<QueueId>,
    pub expansion: Vec<ExpansionStep>,
    /// `None`: always open.
    pub business_hours: Option<BusinessHours>,
    /// Where conversations go while closed; `None`: they wait for opening time.
    pub after_hours: Option<QueueId>,
}

impl Queue {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_display_name(&self.display_name)?;
        if let Some(lang) = &self.language {
            check_language(lang)?;
        }
        if !(-100..=100).contains(&self.priority) {
            return Err(InvalidConfig::new("priority", format!("must be -100 to 100, got {}", self.priority)));
        }
        if let Some(t) = self.offer_timeout
            && (t < Duration::from_secs(1) || t > Duration::from_secs(600))
        {
            return Err(InvalidConfig::new("offer_timeout", "must be 0 (no offer) or 1 s to 10 min"));
        }
        if let Some(d) = self.aging_delay
            && d > Duration::from_secs(24 * 3600)
        {
            return Err(InvalidConfig::new("aging_delay", "must be at most 24 h"));
        }
        if let Some(d) = self.max_wait
            && (d < Duration::from_secs(1) || d > Duration::from_secs(7 * 24 * 3600))
        {
            return Err(InvalidConfig::new("max_wait", "must be 1 s to 7 days"));
        }
        if self.overflow.is_some() && self.max_wait.is_none() {
            return Err(InvalidConfig::new("overflow_queue_id", "needs a max_wait"));
        }
        for (field, target) in [("overflow_queue_id", &self.overflow), ("after_hours_queue_id", &self.after_hours)] {
            if target.as_ref() == Some(&self.id) {
                return Err(InvalidConfig::new(field, "must be another queue"));
            }
        }
        if self.after_hours.is_some() && self.business_hours.is_none() {
            return Err(InvalidConfig::new("after_hours_queue_id", "needs business_hours"));
        }
        check_expansion(&self.expansion)?;
        if let Some(h) = &self.business_hours {
            h.validate()?;
        }
        Ok(())
    }

    /// The queue's own requirements.
    pub fn requirements(&self) -> Requirements {
        Requirements { skills: self.required_skills.clone(), language: self.language.clone() }
    }

    /// Whether the queue is open at `now` (always, without business hours).
    pub fn is_open(&self, now: crate::Timestamp) -> bool {
        self.business_hours.as_ref().is_none_or(|h| h.is_open(now))
    }
}

/// A display name: 1 to 200 characters, no control characters.
pub fn check_display_name(name: &str) -> Result<(), InvalidConfig> {
    let n = name.chars().count();
    if n == 0 || n > 200 {
        return Err(InvalidConfig::new("display_name", format!("must be 1 to 200 characters, got {n}")));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidConfig::new("display_name", "must not contain control characters"));
    }
    Ok(())
}

fn check_language(lang: &str) -> Result<(), InvalidConfig> {
    if lang.len() == 2 && lang.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(InvalidConfig::new("language", format!("{lang:?} is not a lowercase ISO 639-1 code")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Operator {
        Operator {
            tenant: TenantId::parse("acme").unwrap(),
            id: OperatorId::parse("anna").unwrap(),
            display_name: "Anna".into(),
            skills: vec![SkillLevel::new(SkillId::parse("billing").unwrap(), 3).unwrap()],
            languages: vec!["ru".into()],
            capacity: vec![(Channel::Api, 3)],
            disabled: false,
            team: None,
        }
    }

    #[test]
    fn operator_validation_names_the_field() {
        assert!(op().validate().is_ok());
        let mut o = op();
        o.capacity.push((Channel::Api, 2));
        assert_eq!(o.validate().unwrap_err().field, "capacity");
        let mut o = op();
        o.capacity = vec![(Channel::Api, 0)];
        assert_eq!(o.validate().unwrap_err().field, "capacity");
        let mut o = op();
        o.languages = vec!["RUS".into()];
        assert_eq!(o.validate().unwrap_err().field, "language");
        let mut o = op();
        o.display_name = String::new();
        assert_eq!(o.validate().unwrap_err().field, "display_name");
    }

    #[test]
    fn proficiency_is_bounded() {
        let s = SkillId::parse("billing").unwrap();
        assert!(SkillLevel::new(s.clone(), 0).is_err());
        assert!(SkillLevel::new(s.clone(), 6).is_err());
        assert!(SkillLevel::new(s, 5).is_ok());
    }

    #[test]
    fn capacity_of_unlisted_channel_is_zero() {
        assert_eq!(op().capacity_for(Channel::Api), 3);
        assert_eq!(op().capacity_for(Channel::Email), 0);
    }
}
