//! The pure policy's speed: `decide` calls per second over a shortlist of operators (what
//! routing hands it per decision) and over a whole large snapshot, for each strategy.

use std::time::{Duration, Instant};

use parley_domain::routing::{Requirements, Selection};
use parley_domain::{Channel, OperatorId, OperatorStatus, SkillId, SkillLevel, Timestamp};
use parley_policy::{OperatorView, Request, SEAT, decide};

/// Decisions per second for one snapshot size and strategy.
#[derive(Debug, Clone)]
pub struct Figure {
    pub operators: usize,
    pub selection: Selection,
    pub decisions_per_second: f64,
}

/// A varied snapshot: some operators away, disconnected, unskilled, full or speaking
/// another language, the rest with different loads and idle times.
fn snapshot(n: usize) -> Vec<OperatorView> {
    let skill = |s: &str| SkillId::parse(s).expect("valid skill id");
    (0..n)
        .map(|i| {
            let load = (i % 4) as u32;
            OperatorView {
                id: OperatorId::parse(&format!("op-{i:05}")).expect("valid operator id"),
                status: if i % 17 == 0 { OperatorStatus::Away } else { OperatorStatus::Online },
                connected: i % 23 != 0,
                disabled: false,
                skills: vec![
                    SkillLevel { skill: skill("support"), proficiency: (i % 5 + 1) as u8 },
                    SkillLevel { skill: skill(if i % 3 == 0 { "billing" } else { "sales" }), proficiency: 3 },
                ],
                languages: vec![if i % 7 == 0 { "en".into() } else { "ru".into() }],
                capacity: 3,
                load,
                weighted_load_milli: load * SEAT - (i as u32 % 2) * 500 * load.min(1),
                last_assigned: Some(Timestamp::from_millis(1_700_000_000_000 + (i as i64 * 7919) % 100_000)),
            }
        })
        .collect()
}

fn request(selection: Selection) -> Request {
    let mut r = Request::new(
        Channel::Api,
        Requirements {
            skills: vec![SkillLevel { skill: SkillId::parse("support").expect("valid skill id"), proficiency: 2 }],
            language: Some("ru".into()),
        },
    );
    r.selection = selection;
    r.excluded = vec![OperatorId::parse("op-00001").expect("valid operator id")];
    r.last_chosen = Some(OperatorId::parse("op-00010").expect("valid operator id"));
    r
}

/// Calls `decide` for about `seconds` for each size and strategy.
pub fn run(sizes: &[usize], seconds: f64) -> Vec<Figure> {
    let mut figures = Vec::new();
    for &n in sizes {
        let ops = snapshot(n);
        for selection in [Selection::LeastOccupied, Selection::LongestIdle, Selection::RoundRobin] {
            let r = request(selection);
            let budget = Duration::from_secs_f64(seconds);
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < budget {
                for _ in 0..16 {
                    let d = decide(std::hint::black_box(&r), std::hint::black_box(&ops));
                    std::hint::black_box(d);
                }
                calls += 16;
            }
            let decisions_per_second = calls as f64 / started.elapsed().as_secs_f64();
            println!("   {n:>6} operators, {:<14} {decisions_per_second:>10.0} decisions/s", selection.as_str());
            figures.push(Figure { operators: n, selection, decisions_per_second });
        }
    }
    figures
}
