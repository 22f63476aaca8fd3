//! The routing policy: which operator gets a waiting conversation, and why; and in which
//! order waiting conversations are served. Pure; its goals are written in `README.md`
//! beside this crate and each is a property test below.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use parley_domain::routing::{Requirements, Selection};
use parley_domain::{Channel, ConversationId, OperatorId, OperatorStatus, SkillId, SkillLevel, Timestamp};

/// One full seat, in thousandths.
pub const SEAT: u32 = 1000;

/// What one waiting conversation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub channel: Channel,
    /// After any expansion for the time waited.
    pub requirements: Requirements,
    /// Operators who declined it or let its offer expire.
    pub excluded: Vec<OperatorId>,
    pub selection: Selection,
    /// Only these operators may take it (it waits for them: known operator, fast track, the
    /// fast-track operator's team); empty: anyone.
    pub only: Vec<OperatorId>,
    /// The queue's last choice, for round robin.
    pub last_chosen: Option<OperatorId>,
}

impl Request {
    /// A request with the defaults: least occupied, nothing excluded.
    pub fn new(channel: Channel, requirements: Requirements) -> Self {
        Self {
            channel,
            requirements,
            excluded: Vec::new(),
            selection: Selection::default(),
            only: Vec::new(),
            last_chosen: None,
        }
    }
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
    /// Seats for the request's channel.
    pub capacity: u32,
    /// Conversations held (assigned or offered) on the request's channel.
    pub load: u32,
    /// Seats in use, in thousandths: conversations waiting on the customer or idle weigh
    /// less than a full seat.
    pub weighted_load_milli: u32,
    /// When they last got a conversation; `None` if never (counts as idle longest).
    pub last_assigned: Option<Timestamp>,
}

/// The first rule that made an operator ineligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    Disabled,
    Status(OperatorStatus),
    Disconnected,
    /// The conversation waits for these operators.
    WaitingForAnother(Vec<OperatorId>),
    Declined,
    MissingSkill(SkillId),
    LowProficiency {
        skill: SkillId,
        has: u8,
        needs: u8,
    },
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
            Exclusion::WaitingForAnother(ops) => {
                f.write_str("conversation waits for ")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if i == 3 {
                        return write!(f, "and {} more", ops.len() - 3);
                    }
                    write!(f, "{op}")?;
                }
                Ok(())
            }
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
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub operator: OperatorId,
    pub excluded: Option<Exclusion>,
    pub load: u32,
    pub weighted_load_milli: u32,
    pub capacity: u32,
    /// What the strategy ranks by, lower preferred: occupancy (0..1), idle rank, or
    /// round-robin distance. Meaningful for the eligible.
    pub score: f64,
}

/// The outcome: who, and the whole reasoning.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub chosen: Option<OperatorId>,
    /// Every operator of the snapshot, in operator id order.
    pub assessments: Vec<Assessment>,
    pub reason: String,
    pub strategy: &'static str,
    /// What separated the chosen from the runner-up, when several were eligible.
    pub tie_breaker: Option<&'static str>,
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
    if !request.only.is_empty() && !request.only.contains(&view.id) {
        return Some(Exclusion::WaitingForAnother(request.only.clone()));
    }
    if request.excluded.contains(&view.id) {
        return Some(Exclusion::Declined);
    }
    for need in &request.requirements.skills {
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
    if let Some(lang) = &request.requirements.language
        && !view.languages.contains(lang)
    {
        return Some(Exclusion::Language(lang.clone()));
    }
    if view.capacity == 0 {
        return Some(Exclusion::NoCapacity);
    }
    // Room for a conversation at full weight.
    if u64::from(view.weighted_load_milli) + u64::from(SEAT) > u64::from(view.capacity) * u64::from(SEAT) {
        return Some(Exclusion::Full);
    }
    None
}

/// `a`'s occupancy against `b`'s, exactly (cross-multiplied, capacities > 0).
fn occupancy(a: &OperatorView, b: &OperatorView) -> Ordering {
    (u64::from(a.weighted_load_milli) * u64::from(b.capacity))
        .cmp(&(u64::from(b.weighted_load_milli) * u64::from(a.capacity)))
}

/// Round robin: ids after the last chosen come first, in id order, then the rest.
fn rotation<'a>(last: Option<&OperatorId>, a: &'a OperatorView) -> (bool, &'a OperatorId) {
    (last.is_some_and(|last| a.id <= *last), &a.id)
}

/// Orders eligible operators by the strategy; returns the ordering and which criterion
/// decided it.
fn preference(
    selection: Selection,
    last: Option<&OperatorId>,
    a: &OperatorView,
    b: &OperatorView,
) -> (Ordering, &'static str) {
    let criteria: [(Ordering, &'static str); 3] = match selection {
        Selection::LeastOccupied => [
            (occupancy(a, b), "occupancy"),
            (a.last_assigned.cmp(&b.last_assigned), "idle time"),
            (a.id.cmp(&b.id), "operator id"),
        ],
        Selection::LongestIdle => [
            (a.last_assigned.cmp(&b.last_assigned), "idle time"),
            (occupancy(a, b), "occupancy"),
            (a.id.cmp(&b.id), "operator id"),
        ],
        Selection::RoundRobin => [
            (rotation(last, a).cmp(&rotation(last, b)), "rotation"),
            (Ordering::Equal, "rotation"),
            (Ordering::Equal, "rotation"),
        ],
    };
    criteria.into_iter().find(|(o, _)| *o != Ordering::Equal).unwrap_or((Ordering::Equal, "operator id"))
}

/// The score shown for an eligible operator (lower is preferred). For round robin, its
/// place in the rotation: `index` is its place among the eligible in id order, `after` how
/// many of those come after the last chosen.
fn score(selection: Selection, v: &OperatorView, index: usize, eligible: usize, after: usize) -> f64 {
    match selection {
        Selection::LeastOccupied => {
            if v.capacity == 0 {
                f64::INFINITY
            } else {
                f64::from(v.weighted_load_milli) / (f64::from(v.capacity) * f64::from(SEAT))
            }
        }
        Selection::LongestIdle => v.last_assigned.map_or(0.0, |t| t.as_millis() as f64),
        Selection::RoundRobin => {
            let before = eligible - after;
            (if index >= before { index - before } else { after + index }) as f64
        }
    }
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
    // One pass after sorting by id: no step here grows faster than the snapshot.
    let mut sorted: Vec<&OperatorView> = operators.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let exclusions: Vec<Option<Exclusion>> = sorted.iter().map(|v| exclusion(request, v)).collect();
    let last = request.last_chosen.as_ref();
    let better = |a: &OperatorView, b: &OperatorView| preference(request.selection, last, a, b).0 == Ordering::Less;
    // The best two eligible (the preference is a total order: it ends with the id).
    let (mut best, mut runner_up): (Option<&OperatorView>, Option<&OperatorView>) = (None, None);
    let (mut eligible, mut after_last) = (0usize, 0usize);
    for (v, excluded) in sorted.iter().zip(&exclusions) {
        if excluded.is_some() {
            continue;
        }
        eligible += 1;
        if last.is_some_and(|last| v.id > *last) {
            after_last += 1;
        }
        match best {
            Some(b) if !better(v, b) => {
                if runner_up.is_none_or(|r| better(v, r)) {
                    runner_up = Some(v);
                }
            }
            _ => {
                runner_up = best;
                best = Some(v);
            }
        }
    }
    if last.is_none() {
        after_last = eligible;
    }
    let mut index = 0;
    let assessments: Vec<Assessment> = sorted
        .iter()
        .zip(exclusions)
        .map(|(v, excluded)| {
            let score = match excluded {
                None => {
                    index += 1;
                    score(request.selection, v, index - 1, eligible, after_last)
                }
                Some(_) => f64::INFINITY,
            };
            Assessment {
                operator: v.id.clone(),
                score,
                excluded,
                load: v.load,
                weighted_load_milli: v.weighted_load_milli,
                capacity: v.capacity,
            }
        })
        .collect();
    let strategy = request.selection.as_str();
    let tie_breaker = match (best, runner_up) {
        (Some(a), Some(b)) => Some(preference(request.selection, last, a, b).1),
        _ => None,
    };
    let reason = match best {
        None if operators.is_empty() => "no operators available".to_owned(),
        None => format!("none of {} operators eligible; waiting", operators.len()),
        Some(best) if eligible == 1 => format!("only eligible operator ({})", best.id),
        Some(best) => format!(
            "{} of {} eligible by {} ({}/{} seats)",
            match request.selection {
                Selection::LeastOccupied => "least occupied",
                Selection::LongestIdle => "idle longest",
                Selection::RoundRobin => "next in turn",
            },
            eligible,
            tie_breaker.unwrap_or("operator id"),
            f64::from(best.weighted_load_milli) / f64::from(SEAT),
            best.capacity
        ),
    };
    Decision { chosen: best.map(|v| v.id.clone()), assessments, reason, strategy, tie_breaker }
}

/// The sort score of a waiting conversation in its queue (lower is served first):
/// priority first, then the longest wait. Exact in an `f64` (Redis sorted-set scores)
/// for priorities in -100..=100 and times until the year 2255.
pub fn queue_score(priority: i32, wait_start: Timestamp) -> f64 {
    let priority = i64::from(priority.clamp(-100, 100));
    ((-priority) * 10_000_000_000_000 + wait_start.as_millis()) as f64
}

/// A waiting conversation as the serving order sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub conversation: ConversationId,
    pub priority: i32,
    pub wait_start: Timestamp,
    /// Its queue's aging delay.
    pub aging_delay: Option<Duration>,
}

/// The priority a waiting conversation is served with now: its queue's, or, once it has
/// waited past its queue's aging delay, above every priority (aged conversations are
/// served oldest first, before anything newer).
pub fn effective_priority(w: &Waiting, now: Timestamp) -> i32 {
    match w.aging_delay {
        Some(delay) if now.since(w.wait_start) >= delay => 101,
        _ => w.priority.clamp(-100, 100),
    }
}

/// Puts waiting conversations from several queues in the order they should be served:
/// effective priority, then the longest wait, then id (deterministic).
pub fn serve_order(waiting: &mut [Waiting], now: Timestamp) {
    waiting.sort_by(|a, b| {
        effective_priority(b, now)
            .cmp(&effective_priority(a, now))
            .then(a.wait_start.cmp(&b.wait_start))
            .then(a.conversation.cmp(&b.conversation))
    });
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
            weighted_load_milli: load * SEAT,
            last_assigned: None,
        }
    }

    fn request() -> Request {
        Request::new(
            Channel::Api,
            Requirements {
                skills: vec![SkillLevel { skill: skill("billing"), proficiency: 2 }],
                language: Some("ru".into()),
            },
        )
    }

    fn op(s: &str) -> OperatorId {
        OperatorId::parse(s).unwrap()
    }

    #[test]
    fn least_occupied_wins_by_ratio() {
        let d = decide(&request(), &[view("anna", 1, 2), view("boris", 1, 4), view("vera", 0, 0)]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
        assert_eq!(d.assessments[2].excluded, Some(Exclusion::NoCapacity));
        assert_eq!(d.strategy, "least_occupied");
        assert_eq!(d.tie_breaker, Some("occupancy"));
        assert!(d.reason.starts_with("least occupied of 2"), "{}", d.reason);
        assert!((d.assessments[1].score - 0.25).abs() < 1e-9);
    }

    #[test]
    fn conversations_waiting_on_the_customer_weigh_less() {
        // Anna holds two conversations but both wait on customers (half a seat each): she
        // has room on 2 seats; Boris, with one full conversation, is more occupied.
        let mut anna = view("anna", 2, 2);
        anna.weighted_load_milli = 1000;
        let boris = view("boris", 1, 1);
        let d = decide(&request(), &[anna, boris]);
        assert_eq!(d.chosen.unwrap().as_str(), "anna");
        assert_eq!(d.assessments[1].excluded, Some(Exclusion::Full));
    }

    #[test]
    fn idle_longest_breaks_ties() {
        let mut a = view("anna", 0, 2);
        a.last_assigned = Some(Timestamp::from_millis(20));
        let mut b = view("boris", 0, 2);
        b.last_assigned = Some(Timestamp::from_millis(10));
        let d = decide(&request(), &[a, b]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
        assert_eq!(d.tie_breaker, Some("idle time"));
    }

    #[test]
    fn longest_idle_ignores_occupancy_first() {
        let mut a = view("anna", 0, 4);
        a.last_assigned = Some(Timestamp::from_millis(20));
        let mut b = view("boris", 2, 4);
        b.last_assigned = Some(Timestamp::from_millis(10));
        let mut r = request();
        r.selection = Selection::LongestIdle;
        assert_eq!(decide(&r, &[a, b]).chosen.unwrap().as_str(), "boris");
    }

    #[test]
    fn round_robin_takes_turns_in_id_order() {
        let ops = [view("anna", 0, 2), view("boris", 0, 2), view("vera", 1, 2)];
        let mut r = request();
        r.selection = Selection::RoundRobin;
        let mut order = Vec::new();
        for _ in 0..4 {
            let chosen = decide(&r, &ops).chosen.unwrap();
            order.push(chosen.to_string());
            r.last_chosen = Some(chosen);
        }
        assert_eq!(order, ["anna", "boris", "vera", "anna"]);
        // The scores are the places in the rotation after the last chosen (boris); the
        // full operator is out of it.
        r.last_chosen = Some(op("boris"));
        let ops = [view("anna", 0, 2), view("boris", 0, 2), view("dima", 2, 2), view("vera", 1, 2)];
        let d = decide(&r, &ops);
        let scores: Vec<(String, f64)> = d.assessments.iter().map(|a| (a.operator.to_string(), a.score)).collect();
        assert_eq!(
            scores,
            [("anna".into(), 1.0), ("boris".into(), 2.0), ("dima".into(), f64::INFINITY), ("vera".into(), 0.0)]
        );
        assert_eq!((d.chosen, d.tie_breaker), (Some(op("vera")), Some("rotation")));
    }

    #[test]
    fn a_conversation_waiting_for_one_operator_goes_to_no_other() {
        let mut r = request();
        r.only = vec![op("boris")];
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 2, 2)]);
        assert_eq!(d.chosen, None, "boris is full; anna may not take it yet");
        assert_eq!(d.assessments[0].excluded, Some(Exclusion::WaitingForAnother(vec![op("boris")])));
        assert_eq!(d.assessments[1].excluded, Some(Exclusion::Full));
    }

    #[test]
    fn a_conversation_waiting_for_a_team_goes_to_its_least_occupied_member() {
        let mut r = request();
        r.only = vec![op("boris"), op("vera")];
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 1, 2), view("vera", 2, 2)]);
        assert_eq!(d.chosen, Some(op("boris")), "anna is idle but not in the team; vera is full");
        assert_eq!(
            d.assessments[0].excluded.as_ref().map(ToString::to_string).as_deref(),
            Some("conversation waits for boris, vera")
        );
    }

    #[test]
    fn each_rule_excludes_with_its_reason() {
        let mut r = request();
        r.excluded = vec![op("dima")];
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
        let mut draining = view("mila", 0, 2);
        draining.status = OperatorStatus::Draining;
        let ops = [away, gone, view("dima", 0, 2), weak, english, full, off, draining];
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
                "disabled",
                "status draining"
            ]
        );
        assert!(d.reason.contains("none of 8"));
        // Dima declined, but nobody else can take it: offered to him again.
        assert_eq!(decide(&r, &ops).chosen.unwrap().as_str(), "dima");
    }

    #[test]
    fn decliners_are_offered_again_when_nobody_else_can_take_it() {
        let mut r = request();
        r.excluded = vec![op("anna")];
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 2, 2)]);
        assert_eq!(d.chosen.unwrap().as_str(), "anna");
        assert!(d.reason.starts_with("everyone eligible had declined"), "{}", d.reason);
        let d = decide(&r, &[view("anna", 0, 2), view("boris", 1, 2)]);
        assert_eq!(d.chosen.unwrap().as_str(), "boris");
    }

    #[test]
    fn queue_score_orders_priority_then_wait() {
        let t = Timestamp::from_millis;
        assert!(queue_score(10, t(5_000)) < queue_score(0, t(1_000)));
        assert!(queue_score(0, t(1_000)) < queue_score(0, t(2_000)));
        assert!(queue_score(-100, t(0)) > queue_score(100, t(8_000_000_000_000)));
        assert!(queue_score(0, t(1_800_000_000_000)) < queue_score(0, t(1_800_000_000_001)));
    }

    fn waiting(n: u128, priority: i32, wait_ms: i64, aging: Option<u64>) -> Waiting {
        Waiting {
            conversation: ConversationId::from_uuid(uuid::Uuid::from_u128(n)),
            priority,
            wait_start: Timestamp::from_millis(wait_ms),
            aging_delay: aging.map(Duration::from_secs),
        }
    }

    #[test]
    fn aged_conversations_overtake_newer_higher_priority_ones() {
        let now = Timestamp::from_millis(100_000);
        // A low-priority conversation waiting 90 s with a 60 s aging delay, and a
        // high-priority one that arrived 10 s ago.
        let mut w = vec![waiting(1, 10, 90_000, None), waiting(2, -10, 10_000, Some(60))];
        serve_order(&mut w, now);
        assert_eq!(w[0].priority, -10, "aged: served first");
        // Without aging, priority wins.
        let mut w = vec![waiting(2, -10, 10_000, None), waiting(1, 10, 90_000, None)];
        serve_order(&mut w, now);
        assert_eq!(w[0].priority, 10);
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
            0u32..=1000,
            prop::option::of(0i64..5),
        )
            .prop_map(|(n, status, connected, disabled, prof, capacity, load, weight, last)| OperatorView {
                id: OperatorId::parse(&format!("op-{n}")).unwrap(),
                status,
                connected,
                disabled,
                skills: vec![SkillLevel { skill: skill("billing"), proficiency: prof }],
                languages: vec!["ru".into()],
                capacity,
                load,
                // Each held conversation weighs between a tenth and a whole seat.
                weighted_load_milli: load * weight.max(100),
                last_assigned: last.map(Timestamp::from_millis),
            })
    }

    fn arb_snapshot() -> impl Strategy<Value = Vec<OperatorView>> {
        prop::collection::vec(arb_view(), 0..10).prop_map(|mut v| {
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v.dedup_by(|a, b| a.id == b.id);
            v
        })
    }

    fn arb_selection() -> impl Strategy<Value = Selection> {
        prop_oneof![Just(Selection::LeastOccupied), Just(Selection::LongestIdle), Just(Selection::RoundRobin)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn chosen_is_eligible_and_never_over_capacity(ops in arb_snapshot(), need in 1u8..=5, sel in arb_selection()) {
            let mut r = request();
            r.requirements.skills[0].proficiency = need;
            r.selection = sel;
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                let v = ops.iter().find(|v| &v.id == chosen).unwrap();
                prop_assert!(v.weighted_load_milli + SEAT <= v.capacity * SEAT, "room for a full seat");
                prop_assert!(v.status == OperatorStatus::Online && v.connected && !v.disabled);
                prop_assert!(v.skills[0].proficiency >= need);
            }
        }

        #[test]
        fn someone_is_chosen_whenever_anyone_is_eligible(ops in arb_snapshot(), declined in prop::collection::vec(0u8..12, 0..4), sel in arb_selection()) {
            let mut r = request();
            r.selection = sel;
            r.excluded = declined.iter().map(|n| OperatorId::parse(&format!("op-{n}")).unwrap()).collect();
            let d = decide(&r, &ops);
            let relaxed = Request { excluded: vec![], ..r.clone() };
            let any_eligible = ops.iter().any(|v| exclusion(&relaxed, v).is_none());
            prop_assert_eq!(d.chosen.is_some(), any_eligible);
            prop_assert_eq!(d.assessments.len(), ops.len());
            if let Some(chosen) = &d.chosen && r.excluded.contains(chosen) {
                prop_assert!(!ops.iter().any(|v| exclusion(&r, v).is_none()));
            }
        }

        #[test]
        fn least_occupied_chooses_minimal_occupancy(ops in arb_snapshot()) {
            let r = request();
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                let c = ops.iter().find(|v| &v.id == chosen).unwrap();
                for v in ops.iter().filter(|v| exclusion(&r, v).is_none()) {
                    prop_assert!(occupancy(v, c) != Ordering::Less);
                }
            }
        }

        #[test]
        fn longest_idle_chooses_the_oldest_last_assignment(ops in arb_snapshot()) {
            let mut r = request();
            r.selection = Selection::LongestIdle;
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                let c = ops.iter().find(|v| &v.id == chosen).unwrap();
                for v in ops.iter().filter(|v| exclusion(&r, v).is_none()) {
                    prop_assert!(v.last_assigned >= c.last_assigned);
                }
            }
        }

        #[test]
        fn a_waiting_conversation_goes_only_to_its_operators(ops in arb_snapshot(), n in 0u8..12) {
            let mut r = request();
            r.only = (0..n % 3 + 1).map(|k| OperatorId::parse(&format!("op-{}", (n + k * 5) % 12)).unwrap()).collect();
            let d = decide(&r, &ops);
            if let Some(chosen) = &d.chosen {
                prop_assert!(r.only.contains(chosen), "{chosen} is not among {:?}", r.only);
            }
        }

        #[test]
        fn the_order_of_the_snapshot_does_not_matter(ops in arb_snapshot(), seed in any::<u64>(), sel in arb_selection()) {
            let mut r = request();
            r.selection = sel;
            r.last_chosen = ops.first().map(|v| v.id.clone());
            let mut shuffled = ops.clone();
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let (a, b) = (decide(&r, &ops), decide(&r, &shuffled));
            prop_assert_eq!(a.chosen, b.chosen);
            prop_assert_eq!(a.assessments.iter().map(|x| x.operator.clone()).collect::<Vec<_>>(), b.assessments.iter().map(|x| x.operator.clone()).collect::<Vec<_>>());
        }

        #[test]
        fn repeated_decisions_spread_a_backlog(n_ops in 1usize..6, backlog in 1usize..30) {
            let mut ops: Vec<OperatorView> = (0..n_ops).map(|i| view(&format!("op-{i}"), 0, 10)).collect();
            for step in 0..backlog {
                let d = decide(&request(), &ops);
                let Some(chosen) = d.chosen else { break };
                let v = ops.iter_mut().find(|v| v.id == chosen).unwrap();
                v.load += 1;
                v.weighted_load_milli += SEAT;
                v.last_assigned = Some(Timestamp::from_millis(step as i64));
                let max = ops.iter().map(|v| v.load).max().unwrap();
                let min = ops.iter().map(|v| v.load).min().unwrap();
                prop_assert!(max - min <= 1);
            }
        }

        #[test]
        fn serving_order_respects_priority_and_aging(
            items in prop::collection::vec((-100i32..=100, 0i64..100_000, prop::option::of(1u64..100)), 0..20),
            now_ms in 0i64..200_000,
        ) {
            let now = Timestamp::from_millis(now_ms);
            let mut w: Vec<Waiting> = items.iter().enumerate().map(|(i, (p, t, a))| waiting(i as u128, *p, *t, *a)).collect();
            serve_order(&mut w, now);
            for pair in w.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let (pa, pb) = (effective_priority(a, now), effective_priority(b, now));
                prop_assert!(pa > pb || (pa == pb && a.wait_start <= b.wait_start));
                // An aged conversation is never behind a non-aged one.
                prop_assert!(!(pb == 101 && pa != 101));
            }
        }
    }
}
