//! Fetching attachments over real HTTP from a local server standing in for a provider's
//! media host: a file comes with the provider's credential; names that resolve to private
//! addresses, redirects into the private network, oversized bodies (declared or streamed)
//! and content types a customer would not send are refused — the checks against
//! server-side request forgery, exercised on real connections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use parley_ingest::media::{FetchAuth, FetchError, FetchPolicy, Fetcher};
use parley_kit::axum::body::Body;
use parley_kit::axum::http::{HeaderMap, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use parley_kit::axum::{Router, routing};

const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 a small picture";
const LIMIT: usize = 64 * 1024;

async fn server() -> SocketAddr {
    let app = Router::new()
        .route(
            "/photo.jpg",
            routing::get(|headers: HeaderMap| async move {
                // The provider's own check: its bearer token.
                match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
                    Some("Bearer media-token") => ([(header::CONTENT_TYPE, "image/jpeg")], JPEG).into_response(),
                    _ => StatusCode::UNAUTHORIZED.into_response(),
                }
            }),
        )
        .route("/page.html", routing::get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html></html>") }))
        .route("/big.jpg", routing::get(|| async { ([(header::CONTENT_TYPE, "image/jpeg")], vec![0u8; LIMIT + 1]) }))
        .route(
            "/streamed.jpg",
            routing::get(|| async {
                // No Content-Length: the limit must hold while reading.
                let chunks = (0..100).map(|_| Ok::<_, std::io::Error>(vec![0u8; 4096]));
                Response::builder()
                    .header(header::CONTENT_TYPE, "image/jpeg")
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .unwrap()
            }),
        )
        .route("/to-metadata", routing::get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }))
        .route("/to-private", routing::get(|| async { redirect("http://10.0.0.1/photo.jpg") }))
        .route("/to-localhost", routing::get(|| async { redirect("http://localhost/photo.jpg") }));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { parley_kit::axum::serve(listener, app).await });
    addr
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

/// The providers' policy, with plain HTTP and the one loopback address of the stand-in
/// allowed — nothing else of the local network.
fn policy() -> FetchPolicy {
    FetchPolicy {
        allow_http: true,
        allow_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        max_bytes: LIMIT,
        ..FetchPolicy::providers()
    }
}

fn fetcher(p: FetchPolicy) -> Fetcher {
    Fetcher::new(p, Duration::from_secs(5)).expect("client")
}

#[tokio::test]
async fn attachments_come_with_the_provider_s_credential_and_nothing_else_gets_through() {
    let addr = server().await;
    let f = fetcher(policy());
    let url = |path: &str| format!("http://{addr}{path}");

    let got = f.fetch(&url("/photo.jpg"), Some(FetchAuth::Bearer("media-token"))).await.expect("the photo");
    assert_eq!((got.bytes.as_slice(), got.mime.as_str()), (JPEG, "image/jpeg"));
    assert!(matches!(f.fetch(&url("/photo.jpg"), None).await, Err(FetchError::Status(401))));

    // Content a customer would not send, and too much of it.
    assert!(matches!(f.fetch(&url("/page.html"), None).await, Err(FetchError::Type(t)) if t == "text/html"));
    assert!(matches!(f.fetch(&url("/big.jpg"), None).await, Err(FetchError::TooLarge { limit: LIMIT })));
    assert!(matches!(f.fetch(&url("/streamed.jpg"), None).await, Err(FetchError::TooLarge { limit: LIMIT })));

    // Redirects into the private network, whatever the first hop was.
    for path in ["/to-metadata", "/to-private", "/to-localhost"] {
        match f.fetch(&url(path), Some(FetchAuth::Bearer("media-token"))).await {
            Err(FetchError::Refused(why)) => assert!(why.contains("redirect"), "{path}: {why}"),
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    }

    // A media host whose name resolves to a private address (a rebinding attacker's DNS, or
    // a misconfiguration) is refused at connection time, not trusted for its name.
    let by_name = fetcher(FetchPolicy { hosts: vec!["localhost".into()], allow_addresses: Vec::new(), ..policy() });
    let port = addr.port();
    match by_name.fetch(&format!("http://localhost:{port}/photo.jpg"), Some(FetchAuth::Bearer("media-token"))).await {
        Err(FetchError::Refused(why)) => assert!(why.contains("no public address"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // And the providers' policy as shipped refuses the stand-in in every spelling.
    let shipped = fetcher(FetchPolicy::providers());
    for u in [
        format!("https://127.0.0.1:{port}/photo.jpg"),
        format!("https://2130706433:{port}/photo.jpg"),
        format!("https://0x7f.1:{port}/photo.jpg"),
        format!("https://[::ffff:127.0.0.1]:{port}/photo.jpg"),
        format!("http://api.telegram.org:{port}/photo.jpg"),
    ] {
        assert!(matches!(shipped.fetch(&u, None).await, Err(FetchError::Refused(_))), "{u}");
    }
}
