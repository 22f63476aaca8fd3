//! The email channel end to end: the real `.eml` fixtures delivered over SMTP (a client
//! written here from RFC 5321, over plain TCP) to ingest's listener reach an operator's
//! desk once, with their Cyrillic text; automatic, misaddressed, oversized and unreadable
//! mail gets the answer a sending server acts on and publishes nothing; mail JetStream did
//! not take is deferred (451) so the sending server retries.

use std::net::SocketAddr;
use std::time::Duration;

use parley_e2e::{Desk, accepted, assigned, assigned_text, delivery_state, fixture, inbound_after, online};
use parley_proto::v1::channel_config::Settings;
use parley_proto::{events, v1};
use parley_testkit::{App, TenantFixture, eventually};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(10);

const KOI8R_TEXT: &str = "Здравствуйте! Прошу вернуть деньги за заказ 4711, ещё не пришёл.\nС уважением, Олег";
const CP1251_TEXT: &str = "Здравствуйте! Прошу вернуть деньги за заказ №4711, ещё не пришёл.\nС уважением, Олег";

/// A message as DATA carries it: every line starting with a dot gets another
/// (RFC 5321 § 4.5.2), a final line end, then the line with a single dot.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One SMTP client connection.
struct Smtp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Smtp {
    /// Connects and reads the greeting.
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the smtp listener");
        let (r, w) = stream.into_split();
        let mut smtp = Self { reader: BufReader::new(r), writer: w };
        let (code, text) = smtp.reply().await;
        assert_eq!((code, text.as_str()), (220, "mx.parley.test ESMTP Parley"));
        smtp
    }

    /// Connects and says EHLO; returns the message size limit the server announced.
    async fn ehlo(addr: SocketAddr) -> (Self, usize) {
        let mut smtp = Self::connect(addr).await;
        let (code, text) = smtp.command("EHLO client.example.org").await;
        assert_eq!(code, 250, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        for ext in ["8BITMIME", "PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
            assert!(lines.contains(&ext), "{ext} not announced: {text}");
        }
        let size = lines
            .iter()
            .find_map(|l| l.strip_prefix("SIZE ")?.parse().ok())
            .unwrap_or_else(|| panic!("no SIZE announced: {text}"));
        (smtp, size)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to the smtp listener");
    }

    /// The next reply: its code and its lines' text (after the code), one per line.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("a reply in time")
                .expect("read a reply");
            assert!(n > 0, "the server closed the connection");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 4, "short reply line {line:?}");
            text.push(line[4..].to_owned());
            if line.as_bytes()[3] == b' ' {
                return (line[..3].parse().expect("a reply code"), text.join("\n"));
            }
        }
    }

    async fn command(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// MAIL, one RCPT per recipient (each must be accepted), DATA and the message; returns
    /// the answer to the end of the data.
    async fn mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> (u16, String) {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).await.0, 250);
        for rcpt in to {
            let (code, text) = self.command(&format!("RCPT TO:<{rcpt}>")).await;
            assert_eq!(code, 250, "{rcpt}: {text}");
        }
        assert_eq!(self.command("DATA").await.0, 354);
        self.send(&stuffed(message)).await;
        self.reply().await
    }
}

/// Delivers one message on a connection of its own, as a sending server would.
pub(crate) async fn deliver(app: &App, from: &str, to: &[&str], message: &[u8]) -> (u16, String) {
    let (mut smtp, _) = Smtp::ehlo(app.smtp_addr()).await;
    let answer = smtp.mail(from, to, message).await;
    assert_eq!(smtp.command("QUIT").await.0, 221);
    answer
}

/// The answer to `RCPT TO:<address>` on a connection of its own (nothing is sent).
async fn rcpt_code(app: &App, address: &str) -> u16 {
    let (mut smtp, _) = Smtp::ehlo(app.smtp_addr()).await;
    assert_eq!(smtp.command("MAIL FROM:<probe@example.org>").await.0, 250);
    let code = smtp.command(&format!("RCPT TO:<{address}>")).await.0;
    assert_eq!(smtp.command("QUIT").await.0, 221);
    code
}

/// Waits until ingest answers `code` to a recipient (its config cache follows the admin
/// API within milliseconds).
async fn until_rcpt(app: &App, address: &str, code: u16) {
    eventually(WAIT, &format!("RCPT TO:<{address}> answered {code}"), || async move {
        (rcpt_code(app, address).await == code).then_some(())
    })
    .await;
}

fn email_config(id: &str, address: &str) -> v1::ChannelConfig {
    relayed_config(id, address, "smtp.example.com", 587)
}

fn relayed_config(id: &str, address: &str, relay_host: &str, relay_port: u32) -> v1::ChannelConfig {
    let settings = Settings::Email(v1::EmailSettings {
        address: address.into(),
        smtp_relay_host: relay_host.into(),
        smtp_relay_port: relay_port,
        ..Default::default()
    });
    parley_testkit::channel_config(id, v1::Channel::Email, settings)
}

/// A tenant whose operators take email conversations, with one email channel config.
async fn tenant(app: &App, id: &str, ops: &[&str], address: &str) -> TenantFixture {
    tenant_with(app, id, ops, email_config("mail", address)).await
}

async fn tenant_with(app: &App, id: &str, ops: &[&str], config: v1::ChannelConfig) -> TenantFixture {
    let fx = app.tenant(id, ops).await;
    for op in ops {
        fx.edit_operator(app, op, |o| {
            o.capacity.push(v1::ChannelCapacity { channel: v1::Channel::Email as i32, max_conversations: 5 });
        })
        .await;
    }
    fx.create_channel_config(app, config).await;
    fx
}

/// A fresh Parley with tenant acme (support@acme.example) and anna online at her desk,
/// once ingest takes mail for the address.
pub(crate) async fn start() -> (App, TenantFixture, Desk, parley_e2e::KeepAlive) {
    let app = App::spawn().await;
    let fx = tenant(&app, "acme", &["anna"], "support@acme.example").await;
    let desk = online(&app, &fx, "anna").await;
    let alive = desk.keep_alive();
    until_rcpt(&app, "support@acme.example", 250).await;
    (app, fx, desk, alive)
}

/// Like [`start`], with the tenant's replies going through a local relay that keeps them.
pub(crate) async fn start_relayed() -> (App, parley_testkit::mail::MailRelay, TenantFixture, Desk, parley_e2e::KeepAlive)
{
    let app = App::spawn().await;
    let relay = parley_testkit::mail::MailRelay::start().await.expect("relay");
    let config = relayed_config("mail", "support@acme.example", "127.0.0.1", u32::from(relay.addr.port()));
    let fx = tenant_with(&app, "acme", &["anna"], config).await;
    let desk = online(&app, &fx, "anna").await;
    let alive = desk.keep_alive();
    until_rcpt(&app, "support@acme.example", 250).await;
    (app, relay, fx, desk, alive)
}

/// The customer messages `PARLEY_INBOUND` holds after sequence `after`.
async fn messages_after(app: &App, after: u64) -> Vec<events::CustomerMessage> {
    inbound_after(app, after)
        .await
        .into_iter()
        .map(|e| match e.kind {
            Some(events::inbound_envelope::Kind::CustomerMessage(m)) => m,
            other => panic!("expected a customer message, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn koi8r_and_cp1251_mail_reaches_the_desk_once_however_often_it_is_delivered() {
    let (app, _fx, mut desk, _alive) = start().await;
    let before = app.stream_len("PARLEY_INBOUND").await;

    // The recipient in other letters than configured: addresses match case-insensitively.
    let koi8r = fixture("email_koi8r.eml");
    let answer = deliver(&app, "oleg@example.ru", &["Support@ACME.example"], &koi8r).await;
    assert_eq!(answer, (250, "2.0.0 message accepted".to_owned()));
    let (conversation, text) = assigned_text(&mut desk).await;
    assert_eq!(text, KOI8R_TEXT);
    assert_eq!((conversation.channel, conversation.operator_id.as_str()), (v1::Channel::Email as i32, "anna"));

    // The sending server delivers it again (it never saw the 250, say): stored once.
    for _ in 0..2 {
        assert_eq!(deliver(&app, "oleg@example.ru", &["support@acme.example"], &koi8r).await.0, 250);
    }
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, before + 1, "a redelivery stores nothing");

    // The same customer writes again in cp1251: into the same conversation.
    let cp1251 = fixture("email_cp1251.eml");
    assert_eq!(deliver(&app, "oleg@example.ru", &["support@acme.example"], &cp1251).await.0, 250);
    match desk.event(WAIT).await.kind.expect("event kind") {
        v1::desk_event::Kind::Message(m) => {
            assert_eq!((m.conversation_id.as_str(), m.text.as_str()), (conversation.id.as_str(), CP1251_TEXT));
        }
        other => panic!("expected the second mail as a message, got {other:?}"),
    }

    let stored = messages_after(&app, before).await;
    let seen: Vec<_> = stored
        .iter()
        .map(|m| {
            (
                m.channel,
                m.channel_config_id.as_str(),
                m.customer_address.as_str(),
                m.customer_display_name.as_str(),
                m.channel_message_id.as_str(),
            )
        })
        .collect();
    let email = v1::Channel::Email as i32;
    assert_eq!(
        seen,
        [
            (email, "mail", "oleg@example.ru", "Олег Сидоров", "koi8-r-1@example.ru"),
            (email, "mail", "oleg@example.ru", "Олег Сидоров", "windows-1251-1@example.ru"),
        ]
    );
    assert_eq!(stored[0].customer_id, stored[1].customer_id, "one customer, from the sender's address");
    desk.expect_quiet(Duration::from_millis(1500)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_pipelined_mail_to_two_tenants_reaches_each_unstuffed() {
    let app = App::spawn().await;
    let acme = tenant(&app, "acme", &["anna"], "support@acme.example").await;
    let globex = tenant(&app, "globex", &["boris"], "help@globex.example").await;
    let mut anna = online(&app, &acme, "anna").await;
    let _anna_alive = anna.keep_alive();
    let mut boris = online(&app, &globex, "boris").await;
    let _boris_alive = boris.keep_alive();
    until_rcpt(&app, "support@acme.example", 250).await;
    until_rcpt(&app, "help@globex.example", 250).await;
    let before = app.stream_len("PARLEY_INBOUND").await;

    // Lines that start with a dot, one of them a lone dot, which would end the data if it
    // were not stuffed.
    let body = "Добрый день!\r\n.\r\n.hidden by a dot\r\n..two dots\r\nКонец";
    // What the operator reads: unstuffed, with plain line ends.
    let read = body.replace("\r\n", "\n");
    let message = format!(
        "From: =?utf-8?B?0JjQstCw0L0=?= <Ivan@Example.org>\r\nTo: support@acme.example, help@globex.example\r\n\
         Subject: dots\r\nMessage-ID: <dots-1@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    );
    let (mut smtp, _) = Smtp::ehlo(app.smtp_addr()).await;
    // The whole envelope in one write (RFC 2920), an unknown recipient among them; the
    // replies come in order.
    smtp.send(
        b"MAIL FROM:<ivan@example.org> BODY=8BITMIME\r\nRCPT TO:<support@acme.example>\r\n\
          RCPT TO:<nobody@acme.example>\r\nRCPT TO:<HELP@globex.example>\r\nDATA\r\n",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(smtp.reply().await.0);
    }
    assert_eq!(codes, [250, 250, 550, 250, 354]);
    smtp.send(&stuffed(message.as_bytes())).await;
    assert_eq!(smtp.reply().await, (250, "2.0.0 message accepted".to_owned()));
    assert_eq!(smtp.command("QUIT").await.0, 221);

    for desk in [&mut anna, &mut boris] {
        let (conversation, text) = assigned_text(desk).await;
        assert_eq!(text, read);
        assert_eq!(conversation.channel, v1::Channel::Email as i32);
    }
    let stored = messages_after(&app, before).await;
    let mut seen: Vec<_> =
        stored.iter().map(|m| (m.tenant_id.as_str(), m.channel_config_id.as_str(), m.text.as_str())).collect();
    seen.sort();
    assert_eq!(
        seen,
        [("acme", "mail", read.as_str()), ("globex", "mail", read.as_str())],
        "one copy per recipient config"
    );
    assert!(stored.iter().all(|m| m.customer_address == "ivan@example.org" && m.customer_display_name == "Иван"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn automatic_misaddressed_oversized_and_unreadable_mail_publish_nothing() {
    let (app, fx, mut desk, _alive) = start().await;
    let before = app.stream_len("PARLEY_INBOUND").await;
    let to = ["support@acme.example"];

    // A mail transaction before the greeting.
    let mut smtp = Smtp::connect(app.smtp_addr()).await;
    let (code, text) = smtp.command("MAIL FROM:<oleg@example.ru>").await;
    assert_eq!((code, text.as_str()), (503, "5.5.1 send EHLO or HELO first"));
    assert_eq!(smtp.command("RCPT TO:<support@acme.example>").await.0, 503);
    assert_eq!(smtp.command("HELO client.example.org").await.0, 250);
    assert_eq!(smtp.command("MAIL FROM:<oleg@example.ru>").await.0, 250);
    // Unknown recipients, and an address that is no email channel's.
    for rcpt in ["nobody@acme.example", "support@globex.example", "postmaster@mx.parley.test"] {
        let (code, text) = smtp.command(&format!("RCPT TO:<{rcpt}>")).await;
        assert_eq!(code, 550, "{rcpt}: {text}");
        assert!(text.starts_with("5.1.1 "), "{text}");
    }
    assert_eq!(smtp.command("DATA").await.0, 554, "no recipient was accepted");
    assert_eq!(smtp.command("QUIT").await.0, 221);

    // An auto-reply (Auto-Submitted) and a bounce (null sender): accepted, not passed on.
    let auto = fixture("email_auto_reply.eml");
    assert_eq!(deliver(&app, "ivan@example.org", &to, &auto).await.0, 250);
    let bounce = b"From: MAILER-DAEMON@example.org\r\nSubject: Undelivered Mail\r\nMessage-ID: <b-1@example.org>\r\n\r\nIt bounced.\r\n";
    let (mut smtp, limit) = Smtp::ehlo(app.smtp_addr()).await;
    assert_eq!(smtp.mail("", &to, bounce).await.0, 250);

    // Over the size limit: announced at MAIL, or found while reading.
    let (code, text) = smtp.command(&format!("MAIL FROM:<oleg@example.ru> SIZE={}", limit + 1)).await;
    assert_eq!((code, text), (552, format!("5.3.4 message exceeds the fixed maximum size of {limit} bytes")));
    let mut big = b"From: oleg@example.ru\r\nMessage-ID: <big-1@example.ru>\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(998));
    while big.len() <= limit {
        big.extend_from_slice(line.as_bytes());
    }
    assert_eq!(smtp.mail("oleg@example.ru", &to, &big).await.0, 552);
    // Not a message Parley can read: no sender.
    let (code, text) = smtp.mail("oleg@example.ru", &to, b"Subject: who?\r\n\r\nNo From header.\r\n").await;
    assert_eq!(code, 554, "{text}");
    assert!(text.starts_with("5.6.0 "), "{text}");
    // The connection is still in step after all of that.
    assert_eq!(smtp.command("NOOP").await.0, 250);
    assert_eq!(smtp.command("QUIT").await.0, 221);
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, before, "nothing refused or automatic was published");

    // A disabled config takes no more mail.
    let mut disabled = email_config("mail", "support@acme.example");
    disabled.disabled = true;
    app.admin(&fx.admin_token)
        .await
        .update_channel_config(v1::UpdateChannelConfigRequest { channel_config: Some(disabled) })
        .await
        .expect("disable the email config");
    until_rcpt(&app, "support@acme.example", 550).await;

    // Enabled again, a genuine mail is the first thing the desk ever gets.
    app.admin(&fx.admin_token)
        .await
        .update_channel_config(v1::UpdateChannelConfigRequest {
            channel_config: Some(email_config("mail", "support@acme.example")),
        })
        .await
        .expect("enable the email config");
    until_rcpt(&app, "support@acme.example", 250).await;
    assert_eq!(deliver(&app, "oleg@example.ru", &to, &fixture("email_koi8r.eml")).await.0, 250);
    assert_eq!(assigned_text(&mut desk).await.1, KOI8R_TEXT);
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, before + 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_jetstream_did_not_take_is_deferred_for_a_retry() {
    let mut app = App::spawn().await;
    tenant(&app, "acme", &["anna"], "support@acme.example").await;
    until_rcpt(&app, "support@acme.example", 250).await;
    let (mut smtp, _) = Smtp::ehlo(app.smtp_addr()).await;
    // The recipient is known from the config cache; only the publish can fail now.
    app.infra.nats.kill();
    let (code, text) = smtp.mail("oleg@example.ru", &["support@acme.example"], &fixture("email_koi8r.eml")).await;
    assert_eq!((code, text.as_str()), (451, "4.3.0 message not stored, try again later"));
    // The connection goes on: the sending server may retry on it or on another.
    assert_eq!(smtp.command("NOOP").await.0, 250);
    assert_eq!(smtp.command("QUIT").await.0, 221);
    // No orderly stop without NATS: the services end with the test's runtime.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn email_replies_go_through_the_tenant_s_relay_in_the_customer_s_thread() {
    let (app, relay, fx, mut desk, _alive) = start_relayed().await;

    // The customer writes (KOI8-R, subject "Возврат денег"); the desk sees the subject.
    let answer = deliver(&app, "oleg@example.ru", &["support@acme.example"], &fixture("email_koi8r.eml")).await;
    assert_eq!(answer.0, 250, "{}", answer.1);
    let assigned = assigned(&mut desk).await;
    let conversation = assigned.conversation.expect("conversation").id;
    assert_eq!(assigned.recent_messages[0].subject, "Возврат денег");

    let text = "Олег, добрый день! Деньги за заказ 4711 вернём до пятницы.";
    let ok = accepted(desk.reply(&conversation, "mail-r1", text).await);
    delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;

    // The relay got one mail, from the support address to the customer, that a mail client
    // files in the customer's thread.
    let mails = relay.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(
        (mails[0].sender.as_str(), mails[0].recipients.as_slice()),
        ("support@acme.example", &["oleg@example.ru".to_owned()][..])
    );
    let parsed = mail_parser::MessageParser::default().parse(&mails[0].raw).expect("a readable mail");
    assert_eq!(parsed.subject(), Some("Re: Возврат денег"));
    assert_eq!(parsed.from().and_then(|f| f.first()).and_then(|a| a.address()), Some("support@acme.example"));
    assert_eq!(parsed.in_reply_to().as_text(), Some("koi8-r-1@example.ru"));
    assert_eq!(parsed.references().as_text(), Some("koi8-r-1@example.ru"));
    assert_eq!(parsed.body_text(0).map(|t| t.trim_end().to_owned()).as_deref(), Some(text));
    // Our Message-ID names the conversation (with a MAC the customer cannot forge).
    let ours = parsed.message_id().expect("a Message-ID");
    assert!(
        ours.starts_with(&format!("pm1.{conversation}.{}.", ok.message_id)) && ours.ends_with("@acme.example"),
        "{ours}"
    );

    // History keeps both subjects.
    eventually(WAIT, "history has the subjects", || async {
        let messages = app
            .history_client(&fx.supervisor_token)
            .await
            .list_messages(v1::ListMessagesRequest { conversation_id: conversation.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner()
            .messages;
        let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
        (subjects == ["Возврат денег", "Re: Возврат денег"]).then_some(())
    })
    .await;

    // A mailbox the relay refuses: the reply fails for good with the relay's answer.
    // (The cp1251 fixture, its sender's address replaced byte for byte.)
    let raw = fixture("email_cp1251.eml");
    let (old, new) = (b"oleg@example.ru".as_slice(), b"nobody@example.ru".as_slice());
    let mut bounce_prone = Vec::with_capacity(raw.len() + 16);
    let mut rest = raw.as_slice();
    while let Some(at) = rest.windows(old.len()).position(|w| w == old) {
        bounce_prone.extend_from_slice(&rest[..at]);
        bounce_prone.extend_from_slice(new);
        rest = &rest[at + old.len()..];
    }
    bounce_prone.extend_from_slice(rest);
    let answer = deliver(&app, "nobody@example.ru", &["support@acme.example"], &bounce_prone).await;
    assert_eq!(answer.0, 250, "{}", answer.1);
    let (second, _) = assigned_text(&mut desk).await;
    let ok = accepted(desk.reply(&second.id, "mail-r2", "Здравствуйте!").await);
    let reason = delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Failed).await;
    assert!(reason.starts_with("smtp_550"), "{reason}");
    assert_eq!(relay.mails().len(), 1, "nothing more reached the relay");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn email_and_web_chat_configs_are_checked_when_created() {
    let app = App::spawn().await;
    let acme = tenant(&app, "acme", &["anna"], "support@acme.example").await;
    let globex = app.tenant("globex", &["boris"]).await;
    let create = |fx: &TenantFixture, c: v1::ChannelConfig| {
        let (app, token) = (&app, fx.admin_token.clone());
        async move {
            app.admin(&token)
                .await
                .create_channel_config(v1::CreateChannelConfigRequest { channel_config: Some(c) })
                .await
                .map(|_| ())
        }
    };
    for bad in ["", "support", "@acme.example", "support@", "a b@acme.example", "x@y@z", "Support <s@acme.example>"] {
        let e = create(&acme, email_config("mail2", bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("settings.email.address"), "{}", e.message());
    }
    // Another tenant cannot take an address in use (in any letter case): its mail would be
    // stored twice, for both.
    let taken = eventually(WAIT, "the cache knows acme's address", || async {
        let e = create(&globex, email_config("mail", "SUPPORT@acme.example")).await.err()?;
        (e.code() == tonic::Code::AlreadyExists).then_some(e)
    })
    .await;
    assert!(taken.message().contains("already used"), "{}", taken.message());
    create(&globex, email_config("mail", "support@globex.example")).await.expect("a free address");
    // A web chat's origins are origins.
    for bad in ["shop.example", "https://shop.example/", "https://shop.example/path", "ftp://shop.example"] {
        let c = v1::ChannelConfig {
            id: "site".into(),
            channel: v1::Channel::Webchat as i32,
            display_name: "Site".into(),
            default_queue_id: "default".into(),
            settings: Some(Settings::Webchat(v1::WebChatSettings {
                allowed_origins: vec![bad.into()],
                identity_secret: String::new(),
            })),
            ..Default::default()
        };
        let e = create(&acme, c).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    app.stop().await;
}

/// The conversation the next customer mail landed in, and whether it opened it.
async fn landed(desk: &mut Desk) -> (String, bool) {
    loop {
        let event = desk.event(WAIT).await;
        match event.kind.expect("event kind") {
            v1::desk_event::Kind::Assigned(a) => return (a.conversation.expect("conversation").id, true),
            v1::desk_event::Kind::Message(m) if m.sender_kind == v1::SenderKind::Customer as i32 => {
                return (m.conversation_id, false);
            }
            _ => continue,
        }
    }
}

fn reply_mail(from: &str, id: &str, in_reply_to: &str, references: &str, text: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@acme.example\r\nSubject: Re: =?UTF-8?B?0JLQvtC30LLRgNCw0YIg0LTQtdC90LXQsw==?=\r\n\
         Message-ID: <{id}>\r\nIn-Reply-To: <{in_reply_to}>\r\nReferences: {references}\r\n\
         Date: Sat, 5 Dec 2026 12:00:00 +0300\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thread_of_mails_stays_one_conversation_by_our_thread_token() {
    let (app, relay, fx, mut desk, _alive) = start_relayed().await;

    // 1. The customer writes; 2. the operator answers, with our thread token in its Message-ID.
    let answer = deliver(&app, "oleg@example.ru", &["support@acme.example"], &fixture("email_koi8r.eml")).await;
    assert_eq!(answer.0, 250, "{}", answer.1);
    let (conversation, opened) = landed(&mut desk).await;
    assert!(opened);
    let ok = accepted(desk.reply(&conversation, "t-1", "Олег, проверяем.").await);
    delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let ours = mail_parser::MessageParser::default()
        .parse(&relay.mails()[0].raw)
        .and_then(|m| m.message_id().map(str::to_owned))
        .expect("our Message-ID");

    // 3. The customer answers it; 4. a colleague answers from another address: both join it.
    let refs = format!("<koi8-r-1@example.ru> <{ours}>");
    let third = reply_mail("oleg@example.ru", "oleg-2@example.ru", &ours, &refs, "Спасибо, жду.");
    assert_eq!(deliver(&app, "oleg@example.ru", &["support@acme.example"], &third).await.0, 250);
    assert_eq!(landed(&mut desk).await, (conversation.clone(), false));
    let fourth =
        reply_mail("Мария <masha@example.ru>", "masha-1@example.ru", &ours, &refs, "Я бухгалтер Олега, вот реквизиты.");
    assert_eq!(deliver(&app, "masha@example.ru", &["support@acme.example"], &fourth).await.0, 250);
    assert_eq!(landed(&mut desk).await, (conversation.clone(), false), "the colleague's reply joins the thread");

    // A token whose MAC does not verify names nothing: that mail opens its own conversation.
    let forged_id =
        format!("{}0@acme.example", ours.rsplit_once('@').unwrap().0.trim_end_matches(char::is_alphanumeric));
    let forged =
        reply_mail("eve@example.net", "eve-1@example.net", &forged_id, &format!("<{forged_id}>"), "Покажите переписку");
    assert_eq!(deliver(&app, "eve@example.net", &["support@acme.example"], &forged).await.0, 250);
    let (elsewhere, opened) = landed(&mut desk).await;
    assert!(opened && elsewhere != conversation, "a forged token joined {elsewhere}");

    // History: the three mails and the answer, in one conversation.
    let texts = eventually(WAIT, "history has the thread", || async {
        let messages = parley_e2e::history_messages(&app, &fx.supervisor_token, &conversation).await?;
        (messages.len() == 4).then(|| messages.into_iter().map(|m| m.text).collect::<Vec<_>>())
    })
    .await;
    assert_eq!(texts[1..], ["Олег, проверяем.", "Спасибо, жду.", "Я бухгалтер Олега, вот реквизиты."]);
    app.stop().await;
}
