//! One message is one trace: the spans of ingest's `SubmitMessage`, routing's handling of
//! the inbound message, the fan-out and history reading its record, and the delivery onto
//! the operator's desk share one trace id, carried in gRPC metadata and NATS headers and
//! exported over OTLP to a collector (here a local one speaking the real OTLP/gRPC).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use parley_e2e::{Desk, set_status, submit};
use parley_kit::config::TelemetryConfig;
use parley_proto::v1;
use parley_testkit::App;
use tokio::sync::mpsc;

/// Collects exported spans as (trace id, span name).
struct Collector(mpsc::UnboundedSender<(Vec<u8>, String)>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.0.send((span.trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_message_is_one_trace_from_ingest_to_the_desk() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // This test process's telemetry exports to the collector (installed before any service).
    let config =
        TelemetryConfig { otlp_endpoint: format!("http://{addr}"), log_filter: "info".into(), ..Default::default() };
    let telemetry = parley_kit::telemetry::init("e2e", &config).unwrap();

    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let mut desk = Desk::open(&app, fx.operator_token("anna"), 0).await.unwrap();
    set_status(&app, fx.operator_token("anna"), v1::OperatorStatus::Online).await;
    app.ingest_client(&fx.integrator_token).await.submit_message(submit("c-1", "Трассировка", "k1")).await.unwrap();
    desk.event(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // history's batch, the last spans closing
    telemetry.shutdown(); // flushes the batch exporter

    let mut spans: Vec<(Vec<u8>, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let submit_trace = loop {
        while let Ok(s) = rx.try_recv() {
            spans.push(s);
        }
        if let Some((trace, _)) = spans.iter().find(|(_, n)| n == "/parley.v1.ApiChannelService/SubmitMessage") {
            break trace.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no SubmitMessage span exported; got {spans:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(s) = rx.try_recv() {
        spans.push(s);
    }
    let mut in_trace: HashMap<String, usize> = HashMap::new();
    for (trace, name) in &spans {
        if *trace == submit_trace {
            *in_trace.entry(name.clone()).or_default() += 1;
        }
    }
    for hop in [
        "/parley.v1.ApiChannelService/SubmitMessage",
        "PARLEY_INBOUND process",
        "PARLEY_EVENTS process",
        "desk deliver",
    ] {
        assert!(in_trace.contains_key(hop), "{hop} missing from the message's trace: {in_trace:?}");
    }
    // Both readers of the record (the fan-out and history) are in it.
    assert!(in_trace["PARLEY_EVENTS process"] >= 2, "{in_trace:?}");
    app.stop().await;
}
