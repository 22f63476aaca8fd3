//! The routing gRPC API: presence, offers, transfers, close, queue status. Tenant and
//! caller come from the token; operators act on themselves, supervisors and admins on any
//! operator of their tenant.

use std::sync::Arc;

use parley_domain::conversation::{Actor, Command, TransferTarget};
use parley_domain::{Channel, Conversation, ConversationId, OperatorId, OperatorStatus, QueueId, Role, TenantId};
use parley_kit::auth::{Principal, principal, require};
use parley_kit::clock;
use parley_kit::error::{ApiError, ApiResult};
use parley_proto::v1::routing_service_server::RoutingService;
use parley_proto::{convert, v1};
use tonic::{Request, Response, Status};

use crate::engine::{self, Applied, Engine, weights};
use crate::{fast_track, preview};
use parley_nats::config_store::{Kind, key};

/// The gRPC service.
pub struct RoutingApi {
    pub engine: Arc<Engine>,
}

const MANAGERS: [Role; 2] = [Role::Supervisor, Role::Admin];

fn conversation_id(value: &str) -> ApiResult<ConversationId> {
    ConversationId::parse(value).map_err(|e| ApiError::invalid(format!("conversation_id: {e}")))
}

fn check_reason(field: &str, reason: &str) -> ApiResult<()> {
    if reason.chars().count() > 200 {
        return Err(ApiError::invalid(format!("{field} must be at most 200 characters")));
    }
    Ok(())
}

impl RoutingApi {
    /// The operator a call is about: the caller for operators (who may name only
    /// themselves), anyone of the tenant for supervisors and admins.
    fn target_operator(&self, p: &Principal, requested: &str) -> ApiResult<OperatorId> {
        let id = match (p.role, requested.is_empty()) {
            (Role::Operator, true) => p.subject.clone(),
            (Role::Operator, false) if requested == p.subject => p.subject.clone(),
            (Role::Operator, false) => {
                return Err(ApiError::PermissionDenied("operators may act only on themselves".into()));
            }
            (_, true) => return Err(ApiError::invalid("operator_id is required")),
            (_, false) => requested.to_owned(),
        };
        let id = OperatorId::parse(&id).map_err(|e| ApiError::invalid(format!("operator_id: {e}")))?;
        if self.engine.cache.operator(&p.tenant, id.as_str()).is_none() {
            return Err(ApiError::not_found(format!("operator {id} not found")));
        }
        Ok(id)
    }

    fn actor(p: &Principal) -> Actor {
        match p.role {
            Role::Operator => OperatorId::parse(&p.subject).map(Actor::Operator).unwrap_or(Actor::System),
            _ => Actor::Supervisor(p.subject.clone()),
        }
    }

    async fn presence(&self, tenant: &TenantId, op: &OperatorId) -> ApiResult<v1::OperatorPresence> {
        let p = self
            .engine
            .redis
            .presence(tenant, op, clock::now(), weights(&self.engine.cache.routing_settings(tenant)))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let model = self.engine.cache.operator_model(tenant, op.as_str());
        let capacity = |channel: Channel| model.as_ref().map_or(0, |o| o.capacity_for(channel));
        let load = Channel::ALL
            .into_iter()
            .filter_map(|ch| {
                let (active, weighted) = p.load.iter().find(|(c, ..)| *c == ch).map_or((0, 0), |(_, n, w)| (*n, *w));
                let max = capacity(ch);
                (active > 0 || max > 0).then(|| v1::ChannelLoad {
                    channel: convert::channel(ch) as i32,
                    active_conversations: active,
                    max_conversations: max,
                    weighted_load: f64::from(weighted) / 1000.0,
                })
            })
            .collect();
        Ok(v1::OperatorPresence {
            operator_id: op.to_string(),
            status: convert::operator_status(p.status) as i32,
            reason: p.reason,
            connected: p.connected,
            load,
            status_change_time: p.since.map(convert::timestamp),
        })
    }

    /// Loads a conversation of the tenant, or NOT_FOUND.
    async fn load(&self, tenant: &TenantId, id: ConversationId) -> ApiResult<Conversation> {
        self.engine
            .log
            .load(tenant, id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .map(|l| l.conversation)
            .ok_or_else(|| ApiError::not_found(format!("conversation {id} not found")))
    }
}

fn done(applied: Applied) -> Conversation {
    match applied {
        Applied::Done(c) | Applied::Duplicate(c) | Applied::Skipped(c) => c,
    }
}

#[tonic::async_trait]
impl RoutingService for RoutingApi {
    async fn set_operator_status(
        &self,
        request: Request<v1::SetOperatorStatusRequest>,
    ) -> Result<Response<v1::SetOperatorStatusResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let r = request.into_inner();
        let op = self.target_operator(&p, &r.operator_id)?;
        let status = convert::from_operator_status("status", r.status).map_err(|e| ApiError::invalid(e.to_string()))?;
        check_reason("reason", &r.reason)?;
        if status == OperatorStatus::Away && r.reason.trim().is_empty() {
            return Err(ApiError::invalid("reason is required when going away").into());
        }
        let reason = if status == OperatorStatus::Away { r.reason.trim() } else { "" };
        self.engine.set_status(&p.tenant, &op, status, reason).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SetOperatorStatusResponse { presence: Some(self.presence(&p.tenant, &op).await?) }))
    }

    async fn get_operator_presence(
        &self,
        request: Request<v1::GetOperatorPresenceRequest>,
    ) -> Result<Response<v1::GetOperatorPresenceResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let op = self.target_operator(&p, &request.get_ref().operator_id)?;
        Ok(Response::new(v1::GetOperatorPresenceResponse { presence: Some(self.presence(&p.tenant, &op).await?) }))
    }

    async fn list_operator_presences(
        &self,
        request: Request<v1::ListOperatorPresencesRequest>,
    ) -> Result<Response<v1::ListOperatorPresencesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &MANAGERS)?;
        let ids: Vec<String> = self
            .engine
            .cache
            .with_tenant(&p.tenant, |t| t.map(|t| t.operators.keys().cloned().collect()).unwrap_or_default());
        let mut presences = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(op) = OperatorId::parse(&id) else { continue };
            presences.push(self.presence(&p.tenant, &op).await?);
        }
        Ok(Response::new(v1::ListOperatorPresencesResponse { presences }))
    }

    async fn list_operator_conversations(
        &self,
        request: Request<v1::ListOperatorConversationsRequest>,
    ) -> Result<Response<v1::ListOperatorConversationsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let op = self.target_operator(&p, &request.get_ref().operator_id)?;
        let held = self.engine.held_conversations(&p.tenant, &op).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ListOperatorConversationsResponse {
            conversations: held.iter().map(convert::conversation).collect(),
        }))
    }

    async fn accept_offer(
        &self,
        request: Request<v1::AcceptOfferRequest>,
    ) -> Result<Response<v1::AcceptOfferResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator])?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        let op = self.target_operator(&p, "")?;
        let applied = self
            .engine
            .apply(&p.tenant, id, None, |_| Ok(Some(Command::Accept { operator: op.clone() })))
            .await
            .map_err(ApiError::from)?;
        // Answering clears the run of offers left to expire.
        if let Err(e) = self.engine.redis.clear_missed_offers(&p.tenant, &op).await {
            tracing::warn!(operator = %op, error = %e, "clearing missed offers failed");
        }
        Ok(Response::new(v1::AcceptOfferResponse { conversation: Some(convert::conversation(&done(applied))) }))
    }

    async fn decline_offer(
        &self,
        request: Request<v1::DeclineOfferRequest>,
    ) -> Result<Response<v1::DeclineOfferResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator])?;
        let r = request.get_ref();
        let id = conversation_id(&r.conversation_id)?;
        check_reason("reason", &r.reason)?;
        let op = self.target_operator(&p, "")?;
        self.engine
            .apply(&p.tenant, id, None, |_| Ok(Some(Command::Decline { operator: op.clone() })))
            .await
            .map_err(ApiError::from)?;
        // Offer it to someone else now rather than at the next tick, in serving order.
        self.engine.wake.notify_one();
        Ok(Response::new(v1::DeclineOfferResponse {}))
    }

    async fn transfer_conversation(
        &self,
        request: Request<v1::TransferConversationRequest>,
    ) -> Result<Response<v1::TransferConversationResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let r = request.into_inner();
        let id = conversation_id(&r.conversation_id)?;
        if r.note.chars().count() > 2000 {
            return Err(ApiError::invalid("note must be at most 2000 characters").into());
        }
        let actor = Self::actor(&p);
        let tenant = &p.tenant;
        let target = match r.target {
            Some(v1::transfer_conversation_request::Target::OperatorId(op)) => {
                let op = OperatorId::parse(&op).map_err(|e| ApiError::invalid(format!("operator_id: {e}")))?;
                if self.engine.cache.operator(tenant, op.as_str()).is_none() {
                    return Err(ApiError::not_found(format!("operator {op} not found")).into());
                }
                TransferTarget::Operator(op)
            }
            Some(v1::transfer_conversation_request::Target::QueueId(q)) => {
                let q = QueueId::parse(&q).map_err(|e| ApiError::invalid(format!("queue_id: {e}")))?;
                if self.engine.cache.queue(tenant, q.as_str()).is_none() {
                    return Err(ApiError::not_found(format!("queue {q} not found")).into());
                }
                TransferTarget::Queue(q)
            }
            Some(v1::transfer_conversation_request::Target::Skill(skill)) => {
                let level = convert::from_skill_level("skill", &skill).map_err(|e| ApiError::invalid(e.to_string()))?;
                let known = self
                    .engine
                    .cache
                    .with_tenant(tenant, |t| t.is_some_and(|t| t.skills.contains_key(level.skill.as_str())));
                if !known {
                    return Err(ApiError::not_found(format!("skill {} not found", level.skill)).into());
                }
                TransferTarget::Skill(level)
            }
            None => return Err(ApiError::invalid("a target (operator_id, queue_id or skill) is required").into()),
        };
        let current = self.load(tenant, id).await?;
        // A target operator's capacity is reserved first; without room there is no transfer.
        let reserved = if let TransferTarget::Operator(to) = &target {
            let seat = self.engine.seat(tenant, to, current.channel);
            let claim = self
                .engine
                .redis
                .claim(&seat.ctx(), id, &current.queue, false, seat.capacity(), clock::now())
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            match claim {
                Ok(()) => {}
                // Nothing was reserved, so nothing is given back: their seat holds this
                // conversation (theirs already, or being released).
                Err(parley_redis::ClaimRefused::Held) => {
                    return Err(ApiError::precondition(format!("operator {to} holds this conversation already")).into());
                }
                Err(why) => {
                    let why = match why {
                        parley_redis::ClaimRefused::Status => "is not online",
                        parley_redis::ClaimRefused::Disconnected => "has no live desk session",
                        parley_redis::ClaimRefused::Full => "is at capacity on this channel",
                        parley_redis::ClaimRefused::Gone | parley_redis::ClaimRefused::Held => "cannot be given it",
                    };
                    return Err(ApiError::precondition(format!("operator {to} {why}; transfer refused")).into());
                }
            }
            Some(to.clone())
        } else {
            None
        };
        let note = r.note.clone();
        let result = self
            .engine
            .apply(tenant, id, None, |_| {
                Ok(Some(Command::Transfer { by: actor.clone(), target: target.clone(), note: note.clone() }))
            })
            .await;
        match result {
            Ok(applied) => {
                let c = done(applied);
                if !matches!(target, TransferTarget::Operator(_))
                    && let Err(e) = self.engine.try_dispatch(tenant, id, false).await
                {
                    tracing::warn!(conversation = %id, error = %e, "dispatch after transfer failed");
                }
                Ok(Response::new(v1::TransferConversationResponse { conversation: Some(convert::conversation(&c)) }))
            }
            Err(e) => {
                if let Some(to) = reserved
                    && let Err(re) = self
                        .engine
                        .redis
                        .release(&self.engine.seat(tenant, &to, current.channel).ctx(), id, clock::now())
                        .await
                {
                    tracing::warn!(error = %re, "releasing reservation after failed transfer");
                }
                Err(ApiError::from(e).into())
            }
        }
    }

    async fn close_conversation(
        &self,
        request: Request<v1::CloseConversationRequest>,
    ) -> Result<Response<v1::CloseConversationResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin, Role::Integrator])?;
        let r = request.get_ref();
        let id = conversation_id(&r.conversation_id)?;
        check_reason("reason", &r.reason)?;
        let c = self.engine.close(&p.tenant, id, Self::actor(&p), r.reason.clone()).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::CloseConversationResponse { conversation: Some(convert::conversation(&c)) }))
    }

    async fn get_queue_status(
        &self,
        request: Request<v1::GetQueueStatusRequest>,
    ) -> Result<Response<v1::GetQueueStatusResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin, Role::Integrator])?;
        let q = QueueId::parse(&request.get_ref().queue_id).map_err(|e| ApiError::invalid(format!("queue_id: {e}")))?;
        if self.engine.cache.queue(&p.tenant, q.as_str()).is_none() {
            return Err(ApiError::not_found(format!("queue {q} not found")).into());
        }
        let tenant = &p.tenant;
        let now = clock::now();
        let unavailable = |e: parley_redis::RedisError| ApiError::Unavailable(e.to_string());
        let (waiting, head) = self.engine.redis.queue_stats(tenant, &q).await.map_err(unavailable)?;
        let oldest_wait_seconds = head.map_or(0, |score| {
            let (_, wait_start) = engine::decode_score(score);
            u32::try_from(now.since(wait_start).as_secs()).unwrap_or(u32::MAX)
        });
        let queue = self.engine.queue_config(tenant, &q);
        let request = parley_policy::Request::new(Channel::Api, queue.requirements());
        let mut counts = [0u32; 5];
        let models = self.engine.cache.operator_models(tenant);
        let skilled: Vec<_> = models
            .iter()
            .filter(|m| {
                request
                    .requirements
                    .skills
                    .iter()
                    .all(|need| m.proficiency(&need.skill).is_some_and(|has| has >= need.proficiency))
                    && request.requirements.language.as_ref().is_none_or(|l| m.languages.contains(l))
            })
            .cloned()
            .collect();
        let ids: Vec<OperatorId> = skilled.iter().map(|m| m.id.clone()).collect();
        let w = engine::weights(&self.engine.cache.routing_settings(tenant));
        let snapshots = self.engine.redis.snapshot(tenant, &ids, Channel::Api, now, w).await.map_err(unavailable)?;
        for s in &snapshots {
            let i = match s.status {
                OperatorStatus::Online if s.connected => 4,
                OperatorStatus::Online => 0,
                OperatorStatus::Away => 1,
                OperatorStatus::Offline => 2,
                OperatorStatus::Draining => 3,
            };
            counts[i] += 1;
        }
        let estimated = self.engine.estimated_wait(tenant, &q, waiting + 1).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::GetQueueStatusResponse {
            queue_id: q.to_string(),
            waiting_conversations: waiting,
            oldest_wait_seconds,
            available_operators: counts[4],
            estimated_wait_seconds: estimated,
            operators_online: counts[0] + counts[4],
            operators_away: counts[1],
            operators_offline: counts[2],
            operators_draining: counts[3],
            open: queue.is_open(now),
        }))
    }

    async fn get_conversation_position(
        &self,
        request: Request<v1::GetConversationPositionRequest>,
    ) -> Result<Response<v1::GetConversationPositionResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin, Role::Integrator])?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        let c = self.load(&p.tenant, id).await?;
        let now = clock::now();
        if c.status != parley_domain::Status::Queued {
            return Ok(Response::new(v1::GetConversationPositionResponse {
                queue_id: c.queue.to_string(),
                ..Default::default()
            }));
        }
        let score = parley_policy::queue_score(c.priority, c.wait_start);
        let ahead = self
            .engine
            .redis
            .ahead_of(&p.tenant, &c.queue, score)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let estimated = self.engine.estimated_wait(&p.tenant, &c.queue, ahead + 1).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::GetConversationPositionResponse {
            queue_id: c.queue.to_string(),
            position: ahead + 1,
            estimated_wait_seconds: estimated,
            waited_seconds: u32::try_from(now.since(c.wait_start).as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_conversation_decisions(
        &self,
        request: Request<v1::ListConversationDecisionsRequest>,
    ) -> Result<Response<v1::ListConversationDecisionsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Supervisor, Role::Admin, Role::Integrator])?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        let records = self.engine.log.history(&p.tenant, id).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if records.is_empty() {
            return Err(ApiError::not_found(format!("conversation {id} not found")).into());
        }
        let decisions = records
            .into_iter()
            .flat_map(|r| r.events)
            .filter_map(|e| match e.kind {
                Some(parley_proto::events::conversation_event::Kind::Decision(d)) => Some(d),
                _ => None,
            })
            .collect();
        Ok(Response::new(v1::ListConversationDecisionsResponse { decisions }))
    }

    async fn issue_fast_track_code(
        &self,
        request: Request<v1::IssueFastTrackCodeRequest>,
    ) -> Result<Response<v1::IssueFastTrackCodeResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator])?;
        let op = self.target_operator(&p, "")?;
        let r = request.into_inner();
        let settings = self.engine.cache.routing_settings(&p.tenant);
        let ttl = convert::from_duration("ttl", r.ttl.as_ref())
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .unwrap_or(settings.fast_track_ttl);
        if ttl < std::time::Duration::from_secs(60) || ttl > std::time::Duration::from_secs(30 * 24 * 3600) {
            return Err(ApiError::invalid("ttl must be 1 minute to 30 days").into());
        }
        if r.max_uses > 1000 {
            return Err(ApiError::invalid("max_uses must be 0 (unlimited) to 1000").into());
        }
        let now = clock::now();
        let store = self.engine.cache.store();
        for _ in 0..10 {
            let code = {
                use rand::Rng;
                let mut rng = rand::rng();
                fast_track::generate(|n| rng.random_range(0..n))
            };
            let record = parley_proto::events::FastTrackRecord {
                code: code.clone(),
                operator_id: op.to_string(),
                issue_time: Some(convert::timestamp(now)),
                expire_time: Some(convert::timestamp(now.saturating_add(ttl))),
                uses_left: r.max_uses,
                revoked: false,
            };
            match store.create(&key(&p.tenant, Kind::FastTrack, &code), &record).await {
                Ok(rev) => {
                    self.engine.cache.wait_for(rev).await;
                    return Ok(Response::new(v1::IssueFastTrackCodeResponse { code: Some(fast_track_proto(&record)) }));
                }
                // The same code is live already: draw another.
                Err(parley_nats::StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(ApiError::Unavailable(e.to_string()).into()),
            }
        }
        Err(ApiError::Unavailable("could not draw a free code; retry".into()).into())
    }

    async fn list_fast_track_codes(
        &self,
        request: Request<v1::ListFastTrackCodesRequest>,
    ) -> Result<Response<v1::ListFastTrackCodesResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let op = self.target_operator(&p, &request.get_ref().operator_id)?;
        let now = clock::now();
        let codes = self.engine.cache.with_tenant(&p.tenant, |t| {
            t.map(|t| {
                t.fast_track
                    .values()
                    .filter(|r| {
                        r.operator_id == op.as_str()
                            && !r.revoked
                            && convert::from_timestamp(r.expire_time.as_ref()) > now
                    })
                    .map(fast_track_proto)
                    .collect()
            })
            .unwrap_or_default()
        });
        Ok(Response::new(v1::ListFastTrackCodesResponse { codes }))
    }

    async fn revoke_fast_track_code(
        &self,
        request: Request<v1::RevokeFastTrackCodeRequest>,
    ) -> Result<Response<v1::RevokeFastTrackCodeResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Operator, Role::Supervisor, Role::Admin])?;
        let code = request.into_inner().code.to_ascii_uppercase();
        if !fast_track::is_code_shaped(&code) {
            return Err(ApiError::invalid("code is not a fast-track code").into());
        }
        let store = self.engine.cache.store();
        let k = key(&p.tenant, Kind::FastTrack, &code);
        let (mut record, revision) = store
            .get::<parley_proto::events::FastTrackRecord>(&k)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("code {code} not found")))?;
        if p.role == Role::Operator && record.operator_id != p.subject {
            return Err(ApiError::not_found(format!("code {code} not found")).into());
        }
        record.revoked = true;
        let rev = store.update(&k, &record, revision).await.map_err(|e| ApiError::Aborted(e.to_string()))?;
        self.engine.cache.wait_for(rev).await;
        Ok(Response::new(v1::RevokeFastTrackCodeResponse {}))
    }

    async fn get_routing_settings(
        &self,
        request: Request<v1::GetRoutingSettingsRequest>,
    ) -> Result<Response<v1::GetRoutingSettingsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &MANAGERS)?;
        let revision = self
            .engine
            .cache
            .with_tenant(&p.tenant, |t| t.and_then(|t| t.routing.as_ref().map(|r| r.revision)).unwrap_or(0));
        let settings = convert::routing_settings(&self.engine.cache.routing_settings(&p.tenant), revision);
        Ok(Response::new(v1::GetRoutingSettingsResponse { settings: Some(settings) }))
    }

    async fn update_routing_settings(
        &self,
        request: Request<v1::UpdateRoutingSettingsRequest>,
    ) -> Result<Response<v1::UpdateRoutingSettingsResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &[Role::Admin])?;
        let s = request.into_inner().settings.ok_or_else(|| ApiError::invalid("settings is required"))?;
        let model = convert::from_routing_settings(&s).map_err(|e| ApiError::invalid(format!("settings.{e}")))?;
        let store = self.engine.cache.store();
        let k = key(&p.tenant, Kind::Routing, "settings");
        let stored = convert::routing_settings(&model, 0);
        let rev = match store.update(&k, &stored, s.revision).await {
            Ok(rev) => rev,
            Err(parley_nats::StoreError::NotFound(_)) if s.revision == 0 => {
                store.create(&k, &stored).await.map_err(|e| ApiError::Aborted(e.to_string()))?
            }
            Err(parley_nats::StoreError::Conflict(_)) => {
                return Err(
                    ApiError::Aborted("settings were changed concurrently; re-read them and retry".into()).into()
                );
            }
            Err(e) => return Err(ApiError::Unavailable(e.to_string()).into()),
        };
        self.engine.cache.wait_for(rev).await;
        Ok(Response::new(v1::UpdateRoutingSettingsResponse { settings: Some(convert::routing_settings(&model, rev)) }))
    }

    async fn preview_queue(
        &self,
        request: Request<v1::PreviewQueueRequest>,
    ) -> Result<Response<v1::PreviewQueueResponse>, Status> {
        let p = principal(&request)?;
        require(&p, &MANAGERS)?;
        let r = request.into_inner();
        let proposed = r.queue.ok_or_else(|| ApiError::invalid("queue is required"))?;
        let queue = convert::from_queue(&p.tenant, &proposed).map_err(|e| ApiError::invalid(e.to_string()))?;
        let limit = match r.limit {
            0 => 20,
            1..=100 => r.limit as usize,
            n => return Err(ApiError::invalid(format!("limit must be 0 to 100, got {n}")).into()),
        };
        let decisions = preview::run(&self.engine, &p.tenant, &queue, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::PreviewQueueResponse { decisions, open: queue.is_open(clock::now()) }))
    }
}

fn fast_track_proto(r: &parley_proto::events::FastTrackRecord) -> v1::FastTrackCode {
    v1::FastTrackCode {
        code: r.code.clone(),
        operator_id: r.operator_id.clone(),
        expire_time: r.expire_time,
        uses_left: r.uses_left,
    }
}
