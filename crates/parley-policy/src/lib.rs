//! The routing policy: which operator gets a waiting conversation, and why. Pure; its
//! goals are written in `README.md` beside this crate and each is a property test below.

use std::cmp::Ordering;
use std::fmt;

use parley_domain::{Channel, OperatorId, OperatorStatus, SkillId, SkillLevel, Timestamp};

/// What one waiting conversation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub channel: Channel,
    pub required_skills: Vec<SkillLevel>,
    pub language: Option<String>,
    /// Operators who declined it or let its offer expire.
    pub excluded: Vec<OperatorId>,
}

/// One operator as routing sees them at decision time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorView {
    pub id: OperatorId,
    pub status: OperatorStatus,
    /// At least one desk session alive.
    pub connected: bool,
    pub disabled: bool,
    pub skills: Vec<SkillLevel>,
    pub languages: Vec<String>,
    /// Capacity for the request's channel.
    pub capacity: u32,
    /// Conversations held (assigned or offered) on the request's channel.
    pub load: u32,
    /// When they last got a conversation; `None` if never (counts as idle longest).
    pub last_assigned: Option<Timestamp>,
}

/// The first rule that made an operator ineligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    Disabled,
    Status(OperatorStatus),
    Disconnected,
    Declined,
    MissingSkill(SkillId),
    LowProficiency { skill: SkillId, has: u8, needs: u8 },
    Language(String),
    NoCapacity,
    Full,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Disabled => f.write_str("disabled"),
            Exclusion::Status(s) => write!(f, "status {}", s.as_str()),
            Exclusion::Disconnected => f.write_str("no live desk session"),
            Exclusion::Declined => f.write_str("declined this conversation"),
            Exclusion::MissingSkill(s) => write!(f, "no skill {s}"),
            Exclusion::LowProficiency { skill, has, needs } => {
                write!(f, "skill {skill} at {has}, needs {needs}")
            }
            Exclusion::Language(l) => write!(f, "does not speak {l}"),
            Exclusion::NoCapacity => f.write_str("no capacity for this channel"),
            Exclusion::Full => f.write_str("at capacity"),
        }
    }
}

/// One operator's assessment in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub operator: OperatorId,
    pub excluded: Option<Exclusion>,
    pub load: u32,
    pub capacity: u32,
}

/// The outcome: who, and the whole reasoning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub chosen: Option<OperatorId>,
    /// Every operator of the snapshot, in operator id order.
    pub assessments: Vec<Assessment>,
    pub reason: String,
}

/// Why `view` cannot take `request`, or `None` if they can.
pub fn exclusion(request: &Request, view: &OperatorView) -> Option<Exclusion> {
    if view.disabled {
        return Some(Exclusion::Disabled);
    }
    if !view.status.takes_new_work() {
        return Some(Exclusion::Status(view.status));
    }
    if !view.connected {
        return Some(Exclusion::Disconnected);
    }
    if request.excluded.contains(&view.id) {
        return Some(Exclusion::Declined);
    }
    for need in &request.required_skills {
        match view.skills.iter().find(|s| s.skill == need.skill) {
            None => return Some(Exclusion::MissingSkill(need.skill.clone())),
            Some(has) if has.proficiency < need.proficiency => {
                return Some(Exclusion::LowProficiency {
                    skill: need.skill.clone(),
                    has: has.proficiency,
                    needs: need.proficiency,
                });
            }
            Some(_) => {}
        }
    }
    if let Some(lang) = &request.language
        && !view.languages.contains(lang)
    {
        return Some(Exclusion::Language(lang.clone()));
    }
    if view.capacity == 0 {
        return Some(Exclusion::NoCapacity);
    }
    if view.load >= view.capacity {
        return Some(Exclusion::Full);
    }
    None
}

/// Orders eligible operators: least occupied, then idle longest, then smallest id.
fn preference(a: &OperatorView, b: &OperatorView) -> Ordering {
    // load_a / cap_a < load_b / cap_b  ⇔  load_a * cap_b < load_b * cap_a (caps > 0).
    let occupancy = (u64::from(a.load) * u64::from(b.capacity)).cmp(&(u64::from(b.load) * u64::from(a.capacity)));
    occupancy.then_with(|| a.last_assigned.cmp(&b.last_assigned)).then_with(|| a.id.cmp(&b.id))
}

/// Decides who should get the conversation described by `request`. Operators who declined
/// it are passed over only while someone else can take it: if they are all that is left,
/// it is offered to them again rather than wait forever.
pub fn decide(request: &Request, operators: &[OperatorView]) -> Decision {
    let first = decide_strictly(request, operators);
    let only_decliners_left = first.chosen.is_none()
        && !request.excluded.is_empty()
        && first.assessments.iter().any(|a| a.excluded == Some(Exclusion::Declined));
    if !only_decliners_left {
        return first;
    }
    let relaxed = Request { excluded: Vec::new(), ..request.clone() };
    let mut second = decide_strictly(&relaxed, operators);
    if second.chosen.is_some() {
        second.reason = format!("everyone eligible had declined; offering again: {}", second.reason);
    }
    second
}

fn decide_strictly(request: &Request, operators: &[OperatorView]) -> Decision {
    let mut sorted: Vec<&OperatorView> = operators.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let assessments: Vec<Assessment> = sorted
        .iter()
        .map(|v| Assessment {
            operator: v.id.clone(),
            excluded: exclusion(request, v),
            load: v.load,
            capacity: v.capacity,
        })
        .collect();
    let eligible: Vec<&OperatorView> =
        sorted.iter().zip(&assessments).filter(|(_, a)| a.excluded.is_none()).map(|(v, _)| *v).collect();
    let best = eligible.iter().copied().min_by(|a, b| preference(a, b));
    let reason = match best {
        None if operators.is_empty() => "no operators configured".to_owned(),
        None => format!("none of {} operators eligible; waiting", operators.len()),
        Some(best) => {
            let tied = eligible.iter().filter(|v| preference(v, best).then(Ordering::Equal) == Ordering::Equal).count();
            let same_occupancy = eligible
                .iter()
                .filter(|v| {
                    u64::from(v.load) * u64::from(best.capacity) == u64::from(best.load) * u64::from(v.capacity)
                })
                .count();
            if eligible.len() == 1 {
                "only eligible operator".to_owned()
            } else if same_occupancy == 1 {
                format!("least occupied of {} eligible ({}/{})", eligible.len(), best.load, best.capacity)
            } else if tied == 1 && same_occupancy > 1 {
                format!("idle longest of {same_occupancy} equally occupied ({}/{})", best.load, best.capacity)
            } else {
                format!("first by id of {same_occupancy} equally occupied and idle")
            }
        }
    };
    Decision { chosen: best.map(|v| v.id.clone()), assessments, reason }
}

/// The sort score of a waiting conversation (lower is served first): priority first,
/// then the longest wait. Exact in an `f64` (Redis sorted-set scores) for priorities in
/// -100..=100 and times until the year 2255.
pub fn queue_score(priority: i32, wait_start: Timestamp) -> f64 {
    let priority = i64::from(priority.clamp(-100, 100));
    ((-priority) * 10_000_000_000_000 + wait_start.as_millis()) as f64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn skill(s: &str) -> SkillId {
        SkillId::parse(s).unwrap()
    }

    fn view(id: &str, load: u32, capacity: u32) -> OperatorView {
        OperatorView {
            id: OperatorId::parse(id).unwrap(),
            status: OperatorStatus::Online,
            connected: true,
            disabled: false,
            skills: vec![SkillLevel { skill: skill("billing"), proficiency: 3 }],
            languages: vec!["ru".into()],
            capacity,
            load,
            last_assigned: None,
        }
    }

    fn request() -> Request {
        Request {
            channel: Channel::Api,
            required_skills: vec![SkillLevel { skill: skill("billing"), proficiency: 2 }],
            language: Some("ru".into()),
            excluded: vec![],
        }
    }

    #[test]
    fn least_occupied_wins_by_ratio() {
        let d = decide(&request(), &[view("anna", 1, 2), view("boris", 1, 4), view("vera", 0, 0)]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
        assert_eq!(d.assessments[2].excluded, Some(Exclusion::NoCapacity));
        assert!(d.reason.starts_with("least occupied of 2"), "{}", d.reason);
    }

    #[test]
    fn idle_longest_breaks_ties() {
        let mut a = view("anna", 0, 2);
        a.last_assigned = Some(Timestamp::from_millis(20));
        let mut b = view("boris", 0, 2);
        b.last_assigned = Some(Timestamp::from_millis(10));
        let d = decide(&request(), &[a, b]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
        assert!(d.reason.starts_with("idle longest"), "{}", d.reason);
    }

    #[test]
    fn each_rule_excludes_with_its_reason() {
        let mut r = request();
        r.excluded = vec![OperatorId::parse("dima").unwrap()];
        let mut away = view("anna", 0, 2);
        away.status = OperatorStatus::Away;
        let mut gone = view("boris", 0, 2);
        gone.connected = false;
        let mut weak = view("gleb", 0, 2);
        weak.skills[0].proficiency = 1;
        let mut english = view("ivan", 0, 2);
        english.languages = vec!["en".into()];
        let full = view("kira", 2, 2);
        let mut off = view("lena", 0, 2);
        off.disabled = true;
        let ops = [away, gone, view("dima", 0, 2), weak, english, full, off];
        let d = decide_strictly(&r, &ops);
        assert_eq!(d.chosen, None);
        let reasons: Vec<String> = d.assessments.iter().map(|a| a.excluded.as_ref().unwrap().to_string()).collect();
        assert_eq!(
            reasons,
            [
                "status away",
                "no live desk session",
                "declined this conversation",
                "skill billing at 1, needs 2",
                "does not speak ru",
                "at capacity",
                "disabled"
            ]
        );
        assert!(d.reason.contains("none of 7"));
        // Dima declined, but nobody else can take it: offered to him again.
        assert_eq!(decide(&r, &ops).chosen.unwrap().as_str(), "dima");
    }

    #[test]
    fn decliners_are_offered_again_when_nobody_else_can_take_it() {
        let mut r = request();
        r.excluded = vec![OperatorId::parse("anna").unwrap()];
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 2, 2)]);
        assert_eq!(d.chosen.unwrap().as_str(), "anna");
        assert!(d.reason.starts_with("everyone eligible had declined"), "{}", d.reason);
        // While someone else has room, the decliner is passed over.
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 1, 2)]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
    }

    #[test]
    fn queue_score_orders_priority_then_wait() {
        let t = Timestamp::from_millis;
        assert!(queue_score(10, t(5_000)) < queue_score(0, t(1_000)));
        assert!(queue_score(0, t(1_000)) < queue_score(0, t(2_000)));
        assert!(queue_score(-100, t(0)) > queue_score(100, t(8_000_000_000_000)));
        // Exact: one millisecond apart stays apart at today's epoch times.
        assert!(queue_score(0, t(1_800_000_000_000)) < queue_score(0, t(1_800_000_000_001)));
    }

    fn arb_view() -> impl Strategy<Value = OperatorView> {
        (
            0u8..12,
            prop_oneof![
                Just(OperatorStatus::Online),
                Just(OperatorStatus::Away),
                Just(OperatorStatus::Offline),
                Just(OperatorStatus::Draining)
            ],
            any::<bool>(),
            prop::bool::weighted(0.1),
            1u8..=5,
            0u32..5,
            0u32..5,
            prop::option::of(0i64..5),
        )
            .prop_map(|(n, status, connected, disabled, prof, capacity, load, last)| OperatorView {
                id: OperatorId::parse(&format!("op-{n}")).unwrap(),
                status,
                connected,
                disabled,
                skills: vec![SkillLevel { skill: skill("billing"), proficiency: prof }],
                languages: vec!["ru".into()],
                capacity,
                load,
                last_assigned: last.map(Timestamp::from_millis),
            })
    }

    fn arb_snapshot() -> impl Strategy<Value = Vec<OperatorView>> {
        prop::collection::vec(arb_view(), 0..10).prop_map(|mut v| {
            // Operator ids are unique within a tenant.
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v.dedup_by(|a, b| a.id == b.id);
            v
        })
    }

    proptest! {
        #[test]
        fn chosen_is_eligible_and_never_over_capacity(ops in arb_snapshot(), need in 1u8..=5) {
            let mut r = request();
            r.required_skills[0].proficiency = need;
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                let v = ops.iter().find(|v| &v.id == chosen).unwrap();
                prop_assert!(v.load < v.capacity);
                prop_assert!(v.status == OperatorStatus::Online && v.connected && !v.disabled);
                prop_assert!(v.skills[0].proficiency >= need);
            }
        }

        #[test]
        fn someone_is_chosen_whenever_anyone_is_eligible(ops in arb_snapshot(), declined in prop::collection::vec(0u8..12, 0..4)) {
            let mut r = request();
            r.excluded = declined.iter().map(|n| OperatorId::parse(&format!("op-{n}")).unwrap()).collect();
            let d = decide(&r, &ops);
            // Declining only defers: anyone who could take it without the declines counts.
            let relaxed = Request { excluded: vec![], ..r.clone() };
            let any_eligible = ops.iter().any(|v| exclusion(&relaxed, v).is_none());
            prop_assert_eq!(d.chosen.is_some(), any_eligible);
            prop_assert_eq!(d.assessments.len(), ops.len());
            if let Some(chosen) = &d.chosen && r.excluded.contains(chosen) {
                // A decliner is chosen only when nobody else could be.
                prop_assert!(!ops.iter().any(|v| exclusion(&r, v).is_none()));
            }
        }

        #[test]
        fn no_eligible_operator_is_less_occupied_than_the_chosen(ops in arb_snapshot()) {
            let r = request();
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                let c = ops.iter().find(|v| &v.id == chosen).unwrap();
                for v in ops.iter().filter(|v| exclusion(&r, v).is_none()) {
                    prop_assert!(u64::from(v.load) * u64::from(c.capacity) >= u64::from(c.load) * u64::from(v.capacity));
                }
            }
        }

        #[test]
        fn the_order_of_the_snapshot_does_not_matter(ops in arb_snapshot(), seed in any::<u64>()) {
            let r = request();
            let mut shuffled = ops.clone();
            // A deterministic shuffle from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            prop_assert_eq!(decide(&r, &ops), decide(&r, &shuffled));
        }

        #[test]
        fn repeated_decisions_spread_a_backlog(n_ops in 1usize..6, backlog in 1usize..30) {
            // Everyone online with capacity 10, assigning the chosen each time: loads never
            // differ by more than one, so nobody gets the whole backlog.
            let mut ops: Vec<OperatorView> = (0..n_ops).map(|i| view(&format!("op-{i}"), 0, 10)).collect();
            for step in 0..backlog {
                let d = decide(&request(), &ops);
                let Some(chosen) = d.chosen else { break };
                let v = ops.iter_mut().find(|v| v.id == chosen).unwrap();
                v.load += 1;
                v.last_assigned = Some(Timestamp::from_millis(step as i64));
                let max = ops.iter().map(|v| v.load).max().unwrap();
                let min = ops.iter().map(|v| v.load).min().unwrap();
                prop_assert!(max - min <= 1);
            }
        }
    }
}
