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

use crate::engine::{Applied, Engine};

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
            .presence(tenant, op, clock::now())
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let config = self.engine.cache.operator(tenant, op.as_str());
        let capacity = |channel: Channel| {
            config.as_ref().and_then(|o| convert::from_operator(tenant, o).ok()).map_or(0, |o| o.capacity_for(channel))
        };
        let load = Channel::ALL
            .into_iter()
            .filter_map(|ch| {
                let active = p.load.iter().find(|(c, _)| *c == ch).map_or(0, |(_, n)| *n);
                let max = capacity(ch);
                (active > 0 || max > 0).then(|| v1::ChannelLoad {
                    channel: convert::channel(ch) as i32,
                    active_conversations: active,
                    max_conversations: max,
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
        // Offer it to someone else now rather than at the next tick.
        if let Err(e) = self.engine.try_dispatch(&p.tenant, id, false).await {
            tracing::warn!(conversation = %id, error = %e, "re-dispatch after decline failed");
        }
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
            None => return Err(ApiError::invalid("a target (operator_id or queue_id) is required").into()),
        };
        let current = self.load(tenant, id).await?;
        // A target operator's capacity is reserved first; without room there is no transfer.
        let reserved = if let TransferTarget::Operator(to) = &target {
            let capacity = self
                .engine
                .cache
                .operator(tenant, to.as_str())
                .and_then(|o| convert::from_operator(tenant, &o).ok())
                .map_or(0, |o| o.capacity_for(current.channel));
            let claim = self
                .engine
                .redis
                .claim(tenant, to, current.channel, capacity, id, &current.queue, false, clock::now())
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            if let Err(why) = claim {
                return Err(ApiError::precondition(format!("operator {to} cannot take it now ({why:?})")).into());
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
                if matches!(target, TransferTarget::Queue(_))
                    && let Err(e) = self.engine.try_dispatch(tenant, id, false).await
                {
                    tracing::warn!(conversation = %id, error = %e, "dispatch after transfer failed");
                }
                Ok(Response::new(v1::TransferConversationResponse { conversation: Some(convert::conversation(&c)) }))
            }
            Err(e) => {
                if let Some(to) = reserved
                    && let Err(re) = self.engine.redis.release(tenant, &to, current.channel, id).await
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
        let (waiting, head) =
            self.engine.redis.queue_stats(&p.tenant, &q).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let oldest_wait_seconds = match head {
            Some(score) => {
                // The score is priority * 1e13 + wait start (ms): the remainder is the time.
                let millis = (score as i64).rem_euclid(10_000_000_000_000);
                u32::try_from((clock::now().as_millis() - millis).max(0) / 1000).unwrap_or(u32::MAX)
            }
            None => 0,
        };
        let queue = self.engine.queue_config(&p.tenant, &q);
        let request = parley_policy::Request {
            channel: Channel::Api,
            required_skills: queue.required_skills.clone(),
            language: queue.language.clone(),
            excluded: Vec::new(),
        };
        let views = self.engine.operator_views(&p.tenant, Channel::Api).await.map_err(ApiError::from)?;
        let available_operators = views
            .iter()
            .filter(|v| {
                matches!(
                    parley_policy::exclusion(&request, v),
                    None | Some(parley_policy::Exclusion::Full) | Some(parley_policy::Exclusion::NoCapacity)
                )
            })
            .count() as u32;
        Ok(Response::new(v1::GetQueueStatusResponse {
            queue_id: q.to_string(),
            waiting_conversations: waiting,
            oldest_wait_seconds,
            available_operators,
        }))
    }
}
