//! Dry runs: what a proposed queue configuration would do to the conversations waiting in
//! that queue right now, decided one after another (each taking the seat the previous
//! took), with nothing changed anywhere.

use std::collections::HashMap;

use parley_domain::{Channel, OperatorId, Queue, Status, TenantId};
use parley_kit::clock;
use parley_policy::{SEAT, decide};
use parley_proto::v1;

use crate::engine::{Engine, EngineError};
use crate::record::{Explained, decision_proto};

/// Operators looked at per preview decision in a large tenant.
const PREVIEW_SHORTLIST: usize = 256;

pub async fn run(
    engine: &Engine,
    tenant: &TenantId,
    queue: &Queue,
    limit: usize,
) -> Result<Vec<v1::RoutingDecision>, EngineError> {
    let now = clock::now();
    let mut taken: HashMap<(OperatorId, Channel), u32> = HashMap::new();
    let mut out = Vec::new();
    for id in engine.redis.waiting(tenant, &queue.id, limit).await? {
        let Some(loaded) = engine.log.load(tenant, id).await? else { continue };
        let c = loaded.conversation;
        if c.status != Status::Queued {
            continue;
        }
        let request = engine.request_for(tenant, &c, queue, now).await?;
        let mut views = engine.candidate_views(tenant, &request, PREVIEW_SHORTLIST, now).await?;
        for v in &mut views {
            if let Some(extra) = taken.get(&(v.id.clone(), c.channel)) {
                v.weighted_load_milli += extra;
                v.load += extra / SEAT;
            }
        }
        let decision = decide(&request, &views);
        if let Some(op) = &decision.chosen {
            *taken.entry((op.clone(), c.channel)).or_default() += SEAT;
        }
        let explained = Explained { requirements: request.requirements.clone(), strategy: None, decision };
        out.push(decision_proto(&c, &explained, parley_kit::clock::new_id(), now));
    }
    Ok(out)
}
