//! Bearer tokens: compact JWTs signed with HMAC-SHA256 (`alg: HS256`), naming a tenant, a
//! subject and a role; and the gRPC interceptor that admits a call only with a valid one.
//!
//! Only HS256 is accepted: the header's `alg` must say exactly that, so a token cannot
//! choose a weaker check (`none`) or a different key type. Signatures are compared in
//! constant time.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parley_domain::{Role, TenantId, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The tenant id platform tokens carry; reserved, so no tenant can be created with it.
pub const PLATFORM_TENANT: &str = "platform";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: i64 = 30;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the operator id for operators, a free name otherwise.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Role name, as [`Role::as_str`].
    pub role: String,
    /// Token id, for listing and revocation.
    pub jti: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Who is calling, after the token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub subject: String,
    pub role: Role,
    pub token_id: String,
}

impl Principal {
    pub fn is_platform(&self) -> bool {
        self.role == Role::Platform
    }
}

/// Why a token is refused. The messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization metadata (expected `authorization: Bearer <token>`)")]
    Missing,
    #[error("authorization metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token names unknown role {0:?}")]
    UnknownRole(String),
    #[error("token names invalid tenant {0:?}")]
    BadTenant(String),
    #[error("tenant {0:?} does not exist or is disabled")]
    UnknownTenant(String),
    #[error("token has been revoked")]
    Revoked,
    #[error("operator {0:?} does not exist or is disabled")]
    UnknownOperator(String),
}

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies tokens with one shared key.
#[derive(Clone)]
pub struct TokenKey {
    key: Arc<Secret>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenKey {
    pub fn new(key: Secret) -> Self {
        Self { key: Arc::new(key) }
    }

    fn mac(&self, signing_input: &[u8]) -> [u8; 32] {
        // A MAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes()).expect("hmac accepts any key length");
        mac.update(signing_input);
        mac.finalize().into_bytes().into()
    }

    /// Encodes and signs claims.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = URL_SAFE_NO_PAD.encode(HEADER);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let sig = self.mac(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        token
    }

    /// Checks signature, algorithm, time and shape; returns who is calling.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<(Principal, Claims), AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };
        let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| AuthError::Malformed("header is not base64url"))?;
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header =
            serde_json::from_slice(&header).map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed("alg must be HS256"));
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let expected = self.mac(&token.as_bytes()[..h.len() + 1 + p.len()]);
        if sig.len() != expected.len() || !bool::from(sig.ct_eq(&expected)) {
            return Err(AuthError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed("payload lacks required claims"))?;
        let now_s = now.as_millis() / 1000;
        if claims.exp + LEEWAY_SECONDS < now_s {
            return Err(AuthError::Expired);
        }
        if claims.iat - LEEWAY_SECONDS > now_s {
            return Err(AuthError::NotYetValid);
        }
        let role = Role::parse(&claims.role).ok_or_else(|| AuthError::UnknownRole(claims.role.clone()))?;
        let tenant = TenantId::parse(&claims.tid).map_err(|_| AuthError::BadTenant(claims.tid.clone()))?;
        if (role == Role::Platform) != (tenant.as_str() == PLATFORM_TENANT) {
            return Err(AuthError::BadTenant(claims.tid.clone()));
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(AuthError::Malformed("sub must be 1 to 128 bytes"));
        }
        let principal = Principal { tenant, subject: claims.sub.clone(), role, token_id: claims.jti.clone() };
        Ok((principal, claims))
    }
}

/// What authentication asks of the installation's configuration: is this principal's
/// tenant live, its token not revoked, its operator enabled. Implemented over the watched
/// config store (which reads through to the store on a miss, so a tenant created a moment
/// ago on another replica is already known).
pub trait Directory: Send + Sync + 'static {
    fn check<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<(), AuthError>>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Checks a bearer token fully: signature, time, then tenant, revocation and operator.
#[derive(Clone)]
pub struct Authenticator {
    key: TokenKey,
    directory: Arc<dyn Directory>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(..)")
    }
}

impl Authenticator {
    pub fn new(key: TokenKey, directory: Arc<dyn Directory>) -> Self {
        Self { key, directory }
    }

    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// Authenticates the value of an `authorization` header.
    pub async fn authenticate(&self, authorization: Option<&str>, now: Timestamp) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::NotBearer)?.trim();
        let (principal, _) = self.key.verify(token, now)?;
        self.directory.check(&principal).await?;
        Ok(principal)
    }
}

/// A tower layer for gRPC servers: admits a call only with a valid bearer token and puts
/// the [`Principal`] in the request's extensions. Health checks and reflection
/// (`/grpc.*`) pass without one.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// The service [`AuthLayer`] wraps.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready inner service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            if request.uri().path().starts_with("/grpc.") {
                return inner.call(request).await;
            }
            let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
            match auth.authenticate(header, crate::clock::now()).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(e) => Ok(tonic::Status::unauthenticated(e.to_string()).into_http()),
            }
        })
    }
}

/// A client-side interceptor that sends a bearer token (and the current trace context)
/// with every call: `XClient::with_interceptor(channel, Bearer::new(token)?)`.
#[derive(Clone, Debug)]
pub struct Bearer {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Bearer {
    pub fn new(token: &str) -> Result<Self, AuthError> {
        let value =
            format!("Bearer {token}").parse().map_err(|_| AuthError::Malformed("token is not printable ASCII"))?;
        Ok(Self { value })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.value.clone());
        crate::telemetry::inject_current(&mut crate::telemetry::MetadataInjector(request.metadata_mut()));
        Ok(request)
    }
}

/// The authenticated caller of a request (set by [`Authenticator`]).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("request was not authenticated"))
}

/// Fails with `PERMISSION_DENIED` unless the caller has one of `roles`.
pub fn require(principal: &Principal, roles: &[Role]) -> Result<(), tonic::Status> {
    if roles.contains(&principal.role) {
        Ok(())
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(tonic::Status::permission_denied(format!(
            "role {} may not do this (needs one of: {})",
            principal.role.as_str(),
            names.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir;
    impl Directory for Dir {
        fn check<'a>(&'a self, p: &'a Principal) -> BoxFuture<'a, Result<(), AuthError>> {
            Box::pin(async move {
                if p.role != Role::Platform && p.tenant.as_str() != "acme" {
                    return Err(AuthError::UnknownTenant(p.tenant.to_string()));
                }
                if p.role == Role::Operator && p.subject != "anna" {
                    return Err(AuthError::UnknownOperator(p.subject.clone()));
                }
                if p.token_id == "revoked" {
                    return Err(AuthError::Revoked);
                }
                Ok(())
            })
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn claims(tid: &str, role: &str, sub: &str) -> Claims {
        Claims { sub: sub.into(), tid: tid.into(), role: role.into(), jti: "t1".into(), iat: 1_000, exp: 2_000 }
    }

    fn auth() -> Authenticator {
        Authenticator::new(TokenKey::new(Secret::new("k".repeat(32))), Arc::new(Dir))
    }

    const NOW: Timestamp = Timestamp::from_millis(1_500_000);

    #[test]
    fn a_signed_token_round_trips() {
        let a = auth();
        let t = a.key().sign(&claims("acme", "operator", "anna"));
        let p = block(a.authenticate(Some(&format!("Bearer {t}")), NOW)).unwrap();
        assert_eq!((p.tenant.as_str(), p.subject.as_str(), p.role), ("acme", "anna", Role::Operator));
    }

    #[test]
    fn every_kind_of_bad_token_is_refused_with_its_reason() {
        let a = auth();
        let good = a.key().sign(&claims("acme", "admin", "root"));
        let other_key = TokenKey::new(Secret::new("x".repeat(32))).sign(&claims("acme", "admin", "root"));
        let mut tampered = good.clone();
        // Change the payload, keep the signature.
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("acme", "platform", "root")).unwrap());
        let parts: Vec<&str> = good.split('.').collect();
        tampered = tampered.replace(parts[1], &forged_payload);
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), parts[1]);
        let cases: Vec<(Option<String>, AuthError)> = vec![
            (None, AuthError::Missing),
            (Some(good.clone()), AuthError::NotBearer),
            (Some("Bearer abc".into()), AuthError::Malformed("expected three dot-separated parts")),
            (Some(format!("Bearer {other_key}")), AuthError::BadSignature),
            (Some(format!("Bearer {tampered}")), AuthError::BadSignature),
            (Some(format!("Bearer {none_alg}")), AuthError::Malformed("alg must be HS256")),
            (
                Some(format!("Bearer {}", a.key().sign(&claims("ghost", "admin", "root")))),
                AuthError::UnknownTenant("ghost".into()),
            ),
            (
                Some(format!("Bearer {}", a.key().sign(&claims("acme", "janitor", "root")))),
                AuthError::UnknownRole("janitor".into()),
            ),
            (
                Some(format!("Bearer {}", a.key().sign(&claims("acme", "operator", "boris")))),
                AuthError::UnknownOperator("boris".into()),
            ),
            (
                Some(format!("Bearer {}", a.key().sign(&claims("acme", "platform", "root")))),
                AuthError::BadTenant("acme".into()),
            ),
            (
                Some(format!(
                    "Bearer {}",
                    a.key().sign(&Claims { jti: "revoked".into(), ..claims("acme", "admin", "x") })
                )),
                AuthError::Revoked,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(block(a.authenticate(header.as_deref(), NOW)), Err(expected.clone()), "{expected}");
        }
        let late = Timestamp::from_millis(2_100_000);
        assert_eq!(block(a.authenticate(Some(&format!("Bearer {good}")), late)), Err(AuthError::Expired));
        let early = Timestamp::from_millis(900_000);
        assert_eq!(block(a.authenticate(Some(&format!("Bearer {good}")), early)), Err(AuthError::NotYetValid));
    }

    #[test]
    fn platform_tokens_skip_the_tenant_check() {
        let a = auth();
        let t = a.key().sign(&claims(PLATFORM_TENANT, "platform", "ops"));
        assert_eq!(block(a.authenticate(Some(&format!("Bearer {t}")), NOW)).unwrap().role, Role::Platform);
    }
}
