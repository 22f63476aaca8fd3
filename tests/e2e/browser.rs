//! The desk and the widget in a real headless Chromium: Debian's `/usr/bin/chromium`, driven
//! by playwright-core from `tests/browser/` (`scenario.mjs`), against the four services.
//! A customer writes in the widget on a page of another origin, an operator gets the offer
//! in the desk, accepts and replies, the customer sees it; the network drops on both sides
//! while each writes; the operator transfers the conversation to a second operator, who
//! sees its whole history. Files go both ways (a picture from the desk, one from the
//! widget); a WhatsApp customer gets a template the operator sends from the desk; a
//! supervisor sees an operator's status change live. Script payloads in every text are
//! shown as text; axe-core finds no WCAG 2.1 A/AA violation in the desk, the supervisor
//! view, the template dialog or the widget. Screenshots go to `test-artifacts/browser/`.
//! Afterwards history must hold every message exactly once, and WhatsApp's double the
//! template once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use parley_proto::v1;
use parley_proto::v1::channel_config::Settings;
use parley_testkit::{App, eventually};
use serde_json::Value;

/// Where the scenario and its npm packages are.
fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The Chromium to drive: `PARLEY_CHROMIUM`, else Debian's.
fn chromium() -> String {
    std::env::var("PARLEY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_and_two_operators_talk_through_the_widget_and_the_desk_in_chromium() {
    let dir = browser_dir();
    for package in ["playwright-core", "axe-core"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "{package} is not installed: run `deploy/local/infra.sh tools` (or `npm ci` in tests/browser)"
        );
    }
    assert!(std::path::Path::new(&chromium()).exists(), "no Chromium at {}: `apt-get install chromium`", chromium());

    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    for op in ["anna", "boris"] {
        fx.edit_operator(&app, op, |o| {
            o.capacity.push(v1::ChannelCapacity { channel: v1::Channel::Webchat as i32, max_conversations: 3 });
            // Only Anna takes WhatsApp: its customer is hers.
            if o.id == "anna" {
                o.capacity.push(v1::ChannelCapacity { channel: v1::Channel::Whatsapp as i32, max_conversations: 3 });
            }
        })
        .await;
    }
    fx.create_channel_config(&app, crate::webhooks::whatsapp()).await;
    let wa_body = parley_e2e::fixture("whatsapp_text.min.json");
    let wa_signature = crate::webhooks::signed(&crate::webhooks::whatsapp(), &wa_body)
        .into_iter()
        .find(|(h, _)| *h == "X-Hub-Signature-256")
        .expect("a signature")
        .1;
    // Offers wait a minute for accept, so the desk shows one with its countdown.
    fx.create_queue(
        &app,
        v1::Queue {
            id: "web".into(),
            display_name: "Web chat".into(),
            offer_timeout: Some(parley_proto::Duration { seconds: 60, nanos: 0 }),
            ..Default::default()
        },
    )
    .await;
    let settings = Settings::Webchat(v1::WebChatSettings {
        allowed_origins: Vec::new(),
        identity_secret: "site-identity-secret-0123456789".into(),
    });
    let config = v1::ChannelConfig {
        default_queue_id: "web".into(),
        ..parley_testkit::channel_config("site", v1::Channel::Webchat, settings)
    };
    fx.create_channel_config(&app, config).await;

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-artifacts/browser");
    std::fs::create_dir_all(&artifacts).expect("artifacts directory");
    let desk = app.notification.as_ref().expect("notification runs").http_addr;
    let run = tokio::process::Command::new("node")
        .arg("scenario.mjs")
        .current_dir(&dir)
        .env("PARLEY_DESK_URL", format!("http://{desk}"))
        .env("PARLEY_INGEST_URL", format!("http://{}", app.webhooks_addr()))
        .env("PARLEY_TENANT", "acme")
        .env("PARLEY_CHANNEL", "site")
        .env("PARLEY_ANNA_TOKEN", fx.operator_token("anna"))
        .env("PARLEY_BORIS_TOKEN", fx.operator_token("boris"))
        .env("PARLEY_SUPERVISOR_TOKEN", &fx.supervisor_token)
        .env("PARLEY_WA_BODY", String::from_utf8(wa_body).expect("a JSON fixture"))
        .env("PARLEY_WA_SIGNATURE", wa_signature)
        .env("PARLEY_ARTIFACTS", &artifacts)
        .env("PARLEY_CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the scenario ends in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser scenario failed ({}):\n{stdout}\n{stderr}", out.status);

    // The scenario's last line says what it saw; history must agree, every message once.
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let conversation = summary["conversationId"].as_str().expect("a conversation id").to_owned();
    let texts: Vec<String> = summary["texts"]
        .as_array()
        .expect("the texts written")
        .iter()
        .map(|t| t.as_str().expect("a text").to_owned())
        .collect();
    assert!(texts.len() >= 4, "the scenario wrote both ways: {texts:?}");
    let history = app.history_client(&fx.supervisor_token).await;
    let stored = eventually(Duration::from_secs(15), "history has every message", || {
        let (mut history, conversation, texts) = (history.clone(), &conversation, &texts);
        async move {
            let messages = history
                .list_messages(v1::ListMessagesRequest {
                    conversation_id: conversation.clone(),
                    page_size: 200,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .messages;
            texts.iter().all(|t| messages.iter().any(|m| &m.text == t)).then_some(messages)
        }
    })
    .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *counts.entry(m.text.as_str()).or_default() += 1;
    }
    for t in &texts {
        assert_eq!(counts.get(t.as_str()), Some(&1), "{t:?} is stored once: {counts:?}");
    }
    // The template Anna chose in the desk went to WhatsApp once, as Meta's API takes it.
    let templates: Vec<Value> =
        app.providers.received("whatsapp").iter().map(|r| r.json()).filter(|b| b["type"] == "template").collect();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(
        templates[0]["template"],
        serde_json::json!({"name": "order_update", "language": {"code": "ru"}, "components": [{"type": "body",
            "parameters": [{"type": "text", "text": "1001"}, {"type": "text", "text": "завтра"}]}]})
    );
    for shot in ["desk-anna.png", "desk-boris.png", "widget.png", "supervisor.png"] {
        let meta = std::fs::metadata(artifacts.join(shot)).unwrap_or_else(|e| panic!("screenshot {shot}: {e}"));
        assert!(meta.len() > 1000, "{shot} is a picture");
    }
    app.stop().await;
}
