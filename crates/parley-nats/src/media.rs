//! The media store: the bytes of customers' attachments, kept per tenant under the
//! attachment's id, behind one trait ([`MediaStore`]) so that an S3-compatible store can
//! stand where JetStream's Object Store stands now ([`ObjectMedia`]).
//!
//! An attachment that could not be fetched for good (too large, a type customers may not
//! send, refused by the provider) is kept as a *failure* in its place, with the reason, so
//! that whoever asks for it learns why instead of waiting for it forever.
//!
//! Every name starts with the tenant: a request for another tenant's attachment id finds
//! nothing, whatever the id.

use std::collections::HashMap;

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parley_domain::{AttachmentId, TenantId};
use parley_kit::axum::http::{HeaderValue, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use crate::topology;

/// What is known of a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The type the provider served it with.
    pub mime: String,
    /// The name to offer for download; may be empty.
    pub file_name: String,
    pub size: u64,
    /// `SHA-256=<base64url>`, as the store computed it.
    pub digest: String,
    /// Who put it there, when only they may use it (a web chat visitor:
    /// `webchat:<config>:<address>`); empty otherwise.
    pub owner: String,
}

impl StoredFile {
    /// The file, served so that a browser never runs it: its stored type with `nosniff`, a
    /// sandboxing content security policy, and inline display only for pictures, sound and
    /// video (never SVG, which can carry scripts).
    pub fn response(&self, bytes: Bytes) -> Response {
        let mime = HeaderValue::from_str(&self.mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let essence = self.mime.split(';').next().unwrap_or_default().trim();
        let inline =
            ["image/", "audio/", "video/"].iter().any(|p| essence.starts_with(p)) && essence != "image/svg+xml";
        let disposition = format!(
            "{}{}",
            if inline { "inline" } else { "attachment" },
            if self.file_name.is_empty() {
                String::new()
            } else {
                format!("; filename*=UTF-8''{}", rfc5987(&self.file_name))
            }
        );
        let mut response = (StatusCode::OK, bytes).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, mime);
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable"));
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", self.digest)) {
            h.insert(header::ETAG, v);
        }
        response
    }
}

/// A file name as an RFC 5987 `ext-value` (UTF-8, percent-encoded beyond `attr-char`).
fn rfc5987(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the store holds for an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    File(StoredFile),
    /// Given up for good, with the reason (safe to show an operator).
    Failed(String),
}

/// The store failed (not: the file does not exist, which is `Ok(None)`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("media store: {0}")]
pub struct MediaError(pub String);

/// Where attachments' bytes live.
pub trait MediaStore: Send + Sync + 'static {
    /// Stores a file (replacing whatever was stored under the id).
    fn put(
        &self,
        tenant: &TenantId,
        id: AttachmentId,
        file: StoredFile,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<StoredFile, MediaError>>;
    /// Records that a file cannot be had, and why.
    fn put_failure(&self, tenant: &TenantId, id: AttachmentId, reason: &str) -> BoxFuture<'_, Result<(), MediaError>>;
    /// What is stored, without the bytes.
    fn head(&self, tenant: &TenantId, id: AttachmentId) -> BoxFuture<'_, Result<Option<Stored>, MediaError>>;
    /// The file and its bytes; `None` when nothing or a failure is stored.
    fn get(
        &self,
        tenant: &TenantId,
        id: AttachmentId,
    ) -> BoxFuture<'_, Result<Option<(StoredFile, Bytes)>, MediaError>>;
    /// Removes whatever is stored (erasure); removing nothing is not an error.
    fn delete(&self, tenant: &TenantId, id: AttachmentId) -> BoxFuture<'_, Result<(), MediaError>>;
}

/// The object's name: tenant first.
fn name(tenant: &TenantId, id: AttachmentId) -> String {
    format!("{tenant}/{id}")
}

const MIME: &str = "mime";
const FILE_NAME: &str = "file-name";
const FAILED: &str = "failed";
const OWNER: &str = "owner";

/// JetStream Object Store as the media store: one bucket, chunked objects, SHA-256 digests.
#[derive(Clone)]
pub struct ObjectMedia {
    store: object_store::ObjectStore,
}

impl ObjectMedia {
    /// The bucket `topology::buckets::MEDIA` (made by `topology::ensure`).
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        let store = js
            .get_object_store(topology::buckets::MEDIA)
            .await
            .map_err(|e| anyhow::anyhow!("media bucket {}: {e}", topology::buckets::MEDIA))?;
        Ok(Self { store })
    }

    async fn info(&self, tenant: &TenantId, id: AttachmentId) -> Result<Option<object_store::ObjectInfo>, MediaError> {
        match self.store.info(name(tenant, id)).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(MediaError(e.to_string())),
        }
    }
}

fn stored(info: &object_store::ObjectInfo) -> Stored {
    if let Some(reason) = info.metadata.get(FAILED) {
        return Stored::Failed(reason.clone());
    }
    Stored::File(StoredFile {
        mime: info.metadata.get(MIME).cloned().unwrap_or_else(|| "application/octet-stream".into()),
        file_name: info.metadata.get(FILE_NAME).cloned().unwrap_or_default(),
        size: info.size as u64,
        digest: info.digest.clone().unwrap_or_default(),
        owner: info.metadata.get(OWNER).cloned().unwrap_or_default(),
    })
}

impl MediaStore for ObjectMedia {
    fn put(
        &self,
        tenant: &TenantId,
        id: AttachmentId,
        file: StoredFile,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<StoredFile, MediaError>> {
        let meta = object_store::ObjectMetadata {
            name: name(tenant, id),
            metadata: HashMap::from([
                (MIME.to_owned(), file.mime.clone()),
                (FILE_NAME.to_owned(), file.file_name.clone()),
                (OWNER.to_owned(), file.owner.clone()),
            ]),
            ..Default::default()
        };
        Box::pin(async move {
            let info = self.store.put(meta, &mut bytes.as_ref()).await.map_err(|e| MediaError(e.to_string()))?;
            Ok(StoredFile { size: info.size as u64, digest: info.digest.unwrap_or_default(), ..file })
        })
    }

    fn put_failure(&self, tenant: &TenantId, id: AttachmentId, reason: &str) -> BoxFuture<'_, Result<(), MediaError>> {
        let meta = object_store::ObjectMetadata {
            name: name(tenant, id),
            metadata: HashMap::from([(FAILED.to_owned(), reason.chars().take(500).collect())]),
            ..Default::default()
        };
        Box::pin(async move {
            self.store.put(meta, &mut &[][..]).await.map_err(|e| MediaError(e.to_string()))?;
            Ok(())
        })
    }

    fn head(&self, tenant: &TenantId, id: AttachmentId) -> BoxFuture<'_, Result<Option<Stored>, MediaError>> {
        let tenant = tenant.clone();
        Box::pin(async move { Ok(self.info(&tenant, id).await?.as_ref().map(stored)) })
    }

    fn get(
        &self,
        tenant: &TenantId,
        id: AttachmentId,
    ) -> BoxFuture<'_, Result<Option<(StoredFile, Bytes)>, MediaError>> {
        let tenant = tenant.clone();
        Box::pin(async move {
            let Some(info) = self.info(&tenant, id).await? else { return Ok(None) };
            let Stored::File(file) = stored(&info) else { return Ok(None) };
            let mut object = match self.store.get(name(&tenant, id)).await {
                Ok(o) => o,
                // Deleted between the two calls.
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(MediaError(e.to_string())),
            };
            let mut bytes = Vec::with_capacity(info.size);
            object.read_to_end(&mut bytes).await.map_err(|e| MediaError(format!("reading {id}: {e}")))?;
            Ok(Some((file, Bytes::from(bytes))))
        })
    }

    fn delete(&self, tenant: &TenantId, id: AttachmentId) -> BoxFuture<'_, Result<(), MediaError>> {
        let tenant = tenant.clone();
        Box::pin(async move {
            match self.store.delete(name(&tenant, id)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(MediaError(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_kit::axum::http::header;

    #[test]
    fn file_names_are_encoded_for_content_disposition() {
        assert_eq!(rfc5987("счёт 1.pdf"), "%D1%81%D1%87%D1%91%D1%82%201.pdf");
        assert_eq!(rfc5987("a\"b\r\n.txt"), "a%22b%0D%0A.txt");
    }

    #[test]
    fn only_pictures_sound_and_video_show_inline() {
        let file = |mime: &str| StoredFile {
            mime: mime.into(),
            file_name: "x".into(),
            size: 1,
            digest: "d".into(),
            owner: String::new(),
        };
        let disposition = |mime: &str| {
            file(mime).response(Bytes::new()).headers()[header::CONTENT_DISPOSITION].to_str().unwrap().to_owned()
        };
        assert!(disposition("image/jpeg").starts_with("inline"));
        assert!(disposition("audio/ogg; codecs=opus").starts_with("inline"));
        assert!(disposition("image/svg+xml").starts_with("attachment"));
        assert!(disposition("text/html").starts_with("attachment"));
        assert!(disposition("application/pdf").starts_with("attachment"));
        let r = file("text/html").response(Bytes::new());
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("sandbox"));
    }
}
