//! Transcripts: a conversation as a customer can be sent it — plain text to read, or JSON
//! for another system — with times in the reader's time zone and labels in their language.
//! Pure: rows in, document out.

use jiff::tz::TimeZone;
use parley_domain::Timestamp;
use parley_pg::{ConversationRow, MessageRow};
use serde_json::{Value, json};

/// The document's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The labels' language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Ru,
}

struct Labels {
    conversation: &'static str,
    opened: &'static str,
    closed: &'static str,
    customer: &'static str,
    operator: &'static str,
    bot: &'static str,
    system: &'static str,
    file: &'static str,
}

const EN: Labels = Labels {
    conversation: "Conversation",
    opened: "opened",
    closed: "closed",
    customer: "Customer",
    operator: "Operator",
    bot: "Bot",
    system: "System",
    file: "file",
};

const RU: Labels = Labels {
    conversation: "Обращение",
    opened: "открыто",
    closed: "закрыто",
    customer: "Клиент",
    operator: "Оператор",
    bot: "Бот",
    system: "Система",
    file: "файл",
};

/// What a transcript is made of.
pub struct Transcript<'a> {
    pub conversation: &'a ConversationRow,
    pub customer_name: &'a str,
    /// Oldest first.
    pub messages: &'a [MessageRow],
    pub time_zone: &'a TimeZone,
    pub language: Language,
}

/// `dd.mm.yyyy hh:mm:ss` (Russian) or `yyyy-mm-dd hh:mm:ss` (English) in the zone.
fn local(t: Timestamp, tz: &TimeZone, language: Language) -> String {
    let Ok(at) = jiff::Timestamp::from_microsecond(t.as_micros()) else { return String::new() };
    let zoned = at.to_zoned(tz.clone());
    match language {
        Language::Ru => zoned.strftime("%d.%m.%Y %H:%M:%S").to_string(),
        Language::En => zoned.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    }
}

fn size(bytes: i64) -> String {
    match bytes {
        b if b >= 1024 * 1024 => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
        b if b >= 1024 => format!("{} KB", b / 1024),
        b => format!("{b} B"),
    }
}

impl Transcript<'_> {
    fn labels(&self) -> &'static Labels {
        match self.language {
            Language::En => &EN,
            Language::Ru => &RU,
        }
    }

    fn author(&self, m: &MessageRow) -> String {
        let l = self.labels();
        match m.sender.as_str() {
            "customer" if !self.customer_name.is_empty() => format!("{} ({})", l.customer, self.customer_name),
            "customer" => l.customer.to_owned(),
            "operator" => format!("{} {}", l.operator, m.operator_id.as_deref().unwrap_or_default()).trim().to_owned(),
            "bot" => l.bot.to_owned(),
            _ => l.system.to_owned(),
        }
    }

    /// The document and its content type.
    pub fn render(&self, format: Format) -> (&'static str, String) {
        match format {
            Format::Text => ("text/plain; charset=utf-8", self.text()),
            Format::Json => ("application/json", self.json().to_string()),
        }
    }

    fn text(&self) -> String {
        let (l, c, tz, lang) = (self.labels(), self.conversation, self.time_zone, self.language);
        let mut out =
            format!("{} {} ({}), {} {}", l.conversation, c.id, c.channel, l.opened, local(c.created_at, tz, lang));
        if let Some(closed) = c.closed_at {
            out.push_str(&format!(", {} {}", l.closed, local(closed, tz, lang)));
        }
        out.push_str(&format!(" [{}]\n", tz.iana_name().unwrap_or("UTC")));
        if !self.customer_name.is_empty() {
            out.push_str(&format!("{}: {}\n", l.customer, self.customer_name));
        }
        out.push('\n');
        for m in self.messages {
            let head = format!("{}  {}: ", local(m.created_at, tz, lang), self.author(m));
            let indent = " ".repeat(head.chars().count());
            out.push_str(&head);
            // Continuation lines line up under the first; nothing a customer wrote can
            // pass for another line of the transcript.
            let mut lines = m.body.lines();
            out.push_str(lines.next().unwrap_or_default());
            out.push('\n');
            for line in lines {
                out.push_str(&indent);
                out.push_str(line);
                out.push('\n');
            }
            for a in &m.attachments {
                let name = if a.file_name.is_empty() { a.kind.as_str() } else { a.file_name.as_str() };
                out.push_str(&format!("{indent}[{}: {name}, {}, {}]\n", l.file, a.mime_type, size(a.size_bytes)));
            }
        }
        out
    }

    fn json(&self) -> Value {
        let c = self.conversation;
        let time = |t: Timestamp| {
            jiff::Timestamp::from_microsecond(t.as_micros())
                .map(|at| at.to_zoned(self.time_zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
                .unwrap_or_default()
        };
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                json!({
                    "id": m.id.to_string(),
                    "time": time(m.created_at),
                    "sender": m.sender,
                    "operator_id": m.operator_id,
                    "text": m.body,
                    "subject": (!m.subject.is_empty()).then_some(&m.subject),
                    "delivery_state": m.delivery_state,
                    "attachments": m.attachments.iter().map(|a| json!({
                        "id": a.id.to_string(), "kind": a.kind, "mime_type": a.mime_type,
                        "file_name": a.file_name, "size_bytes": a.size_bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "conversation": {
                "id": c.id.to_string(),
                "channel": c.channel,
                "status": c.status,
                "queue_id": c.queue_id,
                "opened": time(c.created_at),
                "closed": c.closed_at.map(time),
            },
            "customer": {"id": c.customer_id.to_string(), "display_name": self.customer_name},
            "time_zone": self.time_zone.iana_name().unwrap_or("UTC"),
            "messages": messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use parley_pg::AttachmentRow;
    use uuid::Uuid;

    use super::*;

    fn row(n: u128, sender: &str, body: &str, at_secs: i64) -> MessageRow {
        MessageRow {
            id: Uuid::from_u128(n),
            conversation_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            channel: "telegram".into(),
            sender: sender.into(),
            operator_id: (sender == "operator").then(|| "anna".to_owned()),
            body: body.into(),
            quoted_message_id: None,
            quoted_channel_message_id: None,
            quoted_text: None,
            delivery_state: "accepted".into(),
            channel_message_id: String::new(),
            created_at: Timestamp::from_millis(at_secs * 1000),
            subject: String::new(),
            attachments: Vec::new(),
        }
    }

    fn conversation() -> ConversationRow {
        ConversationRow {
            id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            channel: "telegram".into(),
            channel_config_id: "tg".into(),
            queue_id: "default".into(),
            status: "closed".into(),
            operator_id: None,
            priority: 0,
            // 2026-12-05 07:00:00 UTC
            created_at: Timestamp::from_millis(1_796_454_000_000),
            updated_at: Timestamp::from_millis(1_796_454_600_000),
            closed_at: Some(Timestamp::from_millis(1_796_454_600_000)),
        }
    }

    #[test]
    fn text_transcripts_read_in_the_customer_s_zone_and_language() {
        let c = conversation();
        let mut photo = row(11, "customer", "Вот чек", 1_796_454_000);
        photo.attachments.push(AttachmentRow {
            id: Uuid::from_u128(9),
            kind: "image".into(),
            mime_type: "image/jpeg".into(),
            file_name: "чек.jpg".into(),
            size_bytes: 48_213,
        });
        let messages = [photo, row(12, "operator", "Добрый день!\nПроверяю.", 1_796_454_065)];
        let tz = TimeZone::get("Europe/Moscow").unwrap();
        let t = Transcript {
            conversation: &c,
            customer_name: "Иван",
            messages: &messages,
            time_zone: &tz,
            language: Language::Ru,
        };
        let (mime, text) = t.render(Format::Text);
        assert_eq!(mime, "text/plain; charset=utf-8");
        let expected = format!(
            "Обращение {} (telegram), открыто 05.12.2026 10:00:00, закрыто 05.12.2026 10:10:00 [Europe/Moscow]\n\
             Клиент: Иван\n\n\
             05.12.2026 10:00:00  Клиент (Иван): Вот чек\n\
             {pad}[файл: чек.jpg, image/jpeg, 47 KB]\n\
             05.12.2026 10:01:05  Оператор anna: Добрый день!\n\
             {pad2}Проверяю.\n",
            c.id,
            pad = " ".repeat("05.12.2026 10:00:00  Клиент (Иван): ".chars().count()),
            pad2 = " ".repeat("05.12.2026 10:01:05  Оператор anna: ".chars().count()),
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn json_transcripts_carry_every_message_with_offset_times() {
        let c = conversation();
        let messages = [row(11, "customer", "Where is my order?", 1_796_454_000)];
        let tz = TimeZone::UTC;
        let t = Transcript {
            conversation: &c,
            customer_name: "",
            messages: &messages,
            time_zone: &tz,
            language: Language::En,
        };
        let (mime, body) = t.render(Format::Json);
        assert_eq!(mime, "application/json");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["messages"][0]["text"], "Where is my order?");
        assert_eq!(v["messages"][0]["time"], "2026-12-05T07:00:00+00:00");
        assert_eq!(v["conversation"]["closed"], "2026-12-05T07:10:00+00:00");
        assert_eq!(v["messages"][0]["attachments"], json!([]));
    }
}
