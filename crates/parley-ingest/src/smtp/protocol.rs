//! The SMTP conversation as a pure state machine (RFC 5321, with the ESMTP extensions the
//! listener offers): a command line in, a reply or a step for the connection out. No IO,
//! no clock; the recipient lookup is a function the caller passes in.
//!
//! Replies carry RFC 3463 enhanced status codes (`ENHANCEDSTATUSCODES`), except the
//! greeting and the HELO/EHLO answers, which RFC 2034 leaves without them.

use std::fmt::Write as _;

/// What the listener is configured with, as the protocol needs it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name in the greeting and the HELO/EHLO answers.
    pub hostname: String,
    /// Advertised as `SIZE`; a larger `SIZE=` is refused at MAIL.
    pub max_message_bytes: usize,
    /// Recipients accepted per mail (RFC 5321 asks for at least 100).
    pub max_recipients: usize,
}

/// One reply: a code and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code (`250 2.1.0 text`).
    pub fn new(code: u16, enhanced: &str, text: impl std::fmt::Display) -> Self {
        Self { code, lines: vec![format!("{enhanced} {text}")] }
    }

    /// A reply without an enhanced status code (the greeting, HELO/EHLO).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Self { code, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The reply on the wire: `250-first`, …, `250 last`, each ending in CRLF.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Writing to a String cannot fail.
            let _ = write!(out, "{}{sep}{line}\r\n", self.code);
        }
        if self.lines.is_empty() {
            let _ = write!(out, "{}\r\n", self.code);
        }
        out
    }
}

/// The mail being given: the envelope so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<R> {
    /// The reverse path; empty for the null sender (`MAIL FROM:<>`, bounces and other
    /// automatic notifications).
    pub sender: String,
    /// Accepted recipient addresses, as given, without duplicates (case-insensitively).
    pub recipients: Vec<String>,
    /// Where the accepted recipients' mail goes, without duplicates.
    pub routes: Vec<R>,
}

/// What the connection does after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<R> {
    /// Send the reply, read the next command.
    Reply(Reply),
    /// Send the go-ahead (354), read the message, deliver it to the envelope's routes and
    /// answer with [`Outcome::reply`].
    Data { go_ahead: Reply, envelope: Envelope<R> },
    /// Send the reply and close the connection (QUIT).
    Close(Reply),
}

/// What became of a mail after its data was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored for every route (some perhaps as duplicates of an earlier delivery).
    Stored,
    /// Accepted and deliberately not passed on (an auto-reply, a bounce): answering it
    /// could start a mail loop.
    Automatic,
    /// Larger than the limit (found while reading; nothing kept).
    TooBig,
    /// Not an email message Parley can read (no sender, not RFC 5322).
    Unparseable(String),
    /// Not every route's copy was stored: the sender should retry (duplicates are dropped).
    NotStored,
}

impl Outcome {
    /// The reply to the end of the data.
    pub fn reply(&self, settings: &Settings) -> Reply {
        match self {
            Outcome::Stored => Reply::new(250, "2.0.0", "message accepted"),
            Outcome::Automatic => Reply::new(250, "2.0.0", "automatic message accepted, not passed on"),
            Outcome::TooBig => too_big(settings),
            Outcome::Unparseable(why) => Reply::new(554, "5.6.0", format!("message not readable: {}", one_line(why))),
            Outcome::NotStored => Reply::new(451, "4.3.0", "message not stored, try again later"),
        }
    }
}

fn too_big(settings: &Settings) -> Reply {
    Reply::new(552, "5.3.4", format!("message exceeds the fixed maximum size of {} bytes", settings.max_message_bytes))
}

/// Text a client sent, safe to put in a reply line: no line breaks, and at most 200 bytes
/// (not characters), so the line stays within RFC 5321's 512 octets whatever the script.
fn one_line(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    out
}

/// The state of one connection's conversation.
#[derive(Debug)]
pub struct Session<R> {
    settings: Settings,
    /// The client said HELO or EHLO.
    greeted: bool,
    envelope: Option<Envelope<R>>,
}

/// The longest address accepted (RFC 5321 § 4.5.3.1.3 allows a path of 256 octets).
const MAX_ADDRESS: usize = 254;

impl<R: Clone + PartialEq> Session<R> {
    pub fn new(settings: Settings) -> Self {
        Self { settings, greeted: false, envelope: None }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The greeting sent when a client connects.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP Parley", self.settings.hostname)])
    }

    /// Handles one command line (its line end included or not). `recipients` says where
    /// mail to an address goes (nothing: no such mailbox).
    pub fn command(&mut self, line: &[u8], recipients: impl FnOnce(&str) -> Vec<R>) -> Step<R> {
        let Ok(line) = std::str::from_utf8(line) else {
            return Step::Reply(Reply::new(500, "5.5.2", "command line is not valid UTF-8"));
        };
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line, ""),
        };
        let reply = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(arg, true),
            "HELO" => self.hello(arg, false),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg, recipients),
            "DATA" => return self.data(arg),
            "RSET" => {
                self.envelope = None;
                Reply::new(250, "2.0.0", "ok")
            }
            "NOOP" => Reply::new(250, "2.0.0", "ok"),
            "QUIT" => {
                return Step::Close(Reply::new(221, "2.0.0", format!("{} closing connection", self.settings.hostname)));
            }
            "VRFY" => Reply::new(252, "2.5.2", "cannot verify the user, but will take mail for a known address"),
            "HELP" => Reply::new(214, "2.0.0", "commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT"),
            // Known commands this server does not offer (no STARTTLS, AUTH or CHUNKING).
            "EXPN" | "STARTTLS" | "AUTH" | "BDAT" | "TURN" | "ETRN" | "ATRN" | "SEND" | "SOML" | "SAML" => {
                Reply::new(502, "5.5.1", "command not implemented")
            }
            _ => Reply::new(500, "5.5.2", "command not recognized"),
        };
        Step::Reply(reply)
    }

    fn hello(&mut self, domain: &str, extended: bool) -> Reply {
        if domain.is_empty() {
            let verb = if extended { "EHLO" } else { "HELO" };
            return Reply::new(501, "5.5.4", format!("{verb} needs a domain or address literal"));
        }
        // A new greeting is also a reset (RFC 5321 § 4.1.4).
        self.greeted = true;
        self.envelope = None;
        let host = &self.settings.hostname;
        let first = format!("{host} greets {}", one_line(domain));
        if !extended {
            return Reply::plain(250, vec![first]);
        }
        let lines = vec![
            first,
            format!("SIZE {}", self.settings.max_message_bytes),
            "8BITMIME".into(),
            "PIPELINING".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        Reply::plain(250, lines)
    }

    fn mail(&mut self, arg: &str) -> Reply {
        if !self.greeted {
            return Reply::new(503, "5.5.1", "send EHLO or HELO first");
        }
        if self.envelope.is_some() {
            return Reply::new(503, "5.5.1", "sender already given (RSET to start over)");
        }
        let Some(rest) = strip_prefix_ignore_case(arg, "FROM:") else {
            return Reply::new(501, "5.5.4", "syntax: MAIL FROM:<address>");
        };
        let (sender, params) = match path(rest) {
            Ok(p) => p,
            Err(()) => return Reply::new(501, "5.1.7", "bad sender address syntax"),
        };
        if !sender.is_empty() && !plausible_address(&sender) {
            return Reply::new(501, "5.1.7", "bad sender address syntax");
        }
        for param in params.split_ascii_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                // Checked up front, so a client does not send what would be refused.
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > self.settings.max_message_bytes as u64 => return too_big(&self.settings),
                    Ok(_) => {}
                    Err(_) => return Reply::new(501, "5.5.4", "SIZE needs a number of bytes"),
                },
                "BODY" if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {}
                "SMTPUTF8" if value.is_empty() => {}
                _ => return Reply::new(555, "5.5.4", format!("MAIL parameter not supported: {}", one_line(key))),
            }
        }
        self.envelope = Some(Envelope { sender, recipients: Vec::new(), routes: Vec::new() });
        Reply::new(250, "2.1.0", "sender ok")
    }

    fn rcpt(&mut self, arg: &str, recipients: impl FnOnce(&str) -> Vec<R>) -> Reply {
        if !self.greeted {
            return Reply::new(503, "5.5.1", "send EHLO or HELO first");
        }
        let max = self.settings.max_recipients;
        let Some(envelope) = self.envelope.as_mut() else {
            return Reply::new(503, "5.5.1", "need MAIL before RCPT");
        };
        let Some(rest) = strip_prefix_ignore_case(arg, "TO:") else {
            return Reply::new(501, "5.5.4", "syntax: RCPT TO:<address>");
        };
        let (address, params) = match path(rest) {
            Ok((a, p)) if plausible_address(&a) => (a, p),
            _ => return Reply::new(501, "5.1.3", "bad recipient address syntax"),
        };
        if let Some(param) = params.split_ascii_whitespace().next() {
            return Reply::new(555, "5.5.4", format!("RCPT parameter not supported: {}", one_line(param)));
        }
        if envelope.recipients.iter().any(|r| r.to_lowercase() == address.to_lowercase()) {
            return Reply::new(250, "2.1.5", "recipient ok (already given)");
        }
        if envelope.recipients.len() >= max {
            return Reply::new(452, "4.5.3", format!("too many recipients (at most {max} per message)"));
        }
        let routes = recipients(&address);
        if routes.is_empty() {
            return Reply::new(550, "5.1.1", format!("<{}>: no such mailbox here", one_line(&address)));
        }
        for route in routes {
            if !envelope.routes.contains(&route) {
                envelope.routes.push(route);
            }
        }
        envelope.recipients.push(address);
        Reply::new(250, "2.1.5", "recipient ok")
    }

    fn data(&mut self, arg: &str) -> Step<R> {
        if !self.greeted {
            return Step::Reply(Reply::new(503, "5.5.1", "send EHLO or HELO first"));
        }
        if !arg.is_empty() {
            return Step::Reply(Reply::new(501, "5.5.4", "DATA takes no argument"));
        }
        match self.envelope.take() {
            None => Step::Reply(Reply::new(503, "5.5.1", "need MAIL before DATA")),
            Some(e) if e.recipients.is_empty() => {
                // The sender stays given: the client may still add recipients.
                self.envelope = Some(e);
                Step::Reply(Reply::new(554, "5.5.1", "no valid recipients"))
            }
            // The envelope is taken: whatever happens to this mail, the next one starts
            // from MAIL (RFC 5321 § 4.1.1.4).
            Some(envelope) => {
                Step::Data { go_ahead: Reply::new(354, "2.0.0", "send the message, end with <CRLF>.<CRLF>"), envelope }
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// A path (`<address>`, or a bare address as some clients send) and what follows it. A
/// source route (`<@relay:user@host>`) is dropped, as RFC 5321 lets a server do.
fn path(s: &str) -> Result<(String, &str), ()> {
    let s = s.trim_start();
    let (inner, rest) = match s.strip_prefix('<') {
        Some(s) => {
            // The closing bracket, skipping any inside a quoted local part.
            let mut quoted = false;
            let mut escaped = false;
            let mut end = None;
            for (i, c) in s.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '>' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or(())?;
            (&s[..end], &s[end + 1..])
        }
        None => s.split_once(' ').unwrap_or((s, "")),
    };
    let inner = match inner.strip_prefix('@') {
        Some(route) => route.split_once(':').ok_or(())?.1,
        None => inner,
    };
    if inner.len() > MAX_ADDRESS || inner.chars().any(|c| c.is_control() || c == ' ' && !inner.starts_with('"')) {
        return Err(());
    }
    Ok((inner.to_owned(), rest))
}

/// `local@domain`, both parts present.
fn plausible_address(a: &str) -> bool {
    a.rsplit_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { hostname: "mx.parley.test".into(), max_message_bytes: 1000, max_recipients: 3 }
    }

    /// Mailboxes: `support@acme.test` (route 1) and `help@acme.test` (route 1 too, another
    /// address of the same config), `info@globex.test` (route 2).
    fn lookup(address: &str) -> Vec<u32> {
        match address.to_lowercase().as_str() {
            "support@acme.test" | "help@acme.test" => vec![1],
            "info@globex.test" => vec![2],
            _ => vec![],
        }
    }

    fn reply(s: &mut Session<u32>, line: &str) -> Reply {
        match s.command(line.as_bytes(), lookup) {
            Step::Reply(r) => r,
            other => panic!("{line}: expected a reply, got {other:?}"),
        }
    }

    fn code(s: &mut Session<u32>, line: &str) -> u16 {
        reply(s, line).code()
    }

    fn greeted() -> Session<u32> {
        let mut s = Session::new(settings());
        assert_eq!(code(&mut s, "EHLO client.example\r\n"), 250);
        s
    }

    #[test]
    fn ehlo_advertises_the_extensions_and_helo_does_not() {
        let mut s = Session::<u32>::new(settings());
        assert_eq!(s.greeting().encode(), "220 mx.parley.test ESMTP Parley\r\n");
        assert_eq!(
            reply(&mut s, "ehlo client.example").encode(),
            "250-mx.parley.test greets client.example\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-PIPELINING\r\n\
             250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        assert_eq!(reply(&mut s, "HELO client.example").encode(), "250 mx.parley.test greets client.example\r\n");
        assert_eq!(code(&mut s, "EHLO"), 501);
        assert_eq!(code(&mut s, "HELO "), 501);
    }

    #[test]
    fn a_mail_goes_from_mail_through_rcpt_to_data() {
        let mut s = greeted();
        assert_eq!(reply(&mut s, "MAIL FROM:<Oleg@Example.ru> SIZE=900 BODY=8BITMIME SMTPUTF8").code(), 250);
        assert_eq!(code(&mut s, "RCPT TO:<Support@Acme.test>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<help@acme.test>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<info@globex.test>"), 250);
        // The same recipient again, in other letters: accepted, counted once.
        assert_eq!(reply(&mut s, "RCPT TO:<SUPPORT@acme.test>").code(), 250);
        match s.command(b"DATA\r\n", lookup) {
            Step::Data { go_ahead, envelope } => {
                assert_eq!(go_ahead.code(), 354);
                assert_eq!(envelope.sender, "Oleg@Example.ru");
                assert_eq!(envelope.recipients, ["Support@Acme.test", "help@acme.test", "info@globex.test"]);
                // Two addresses of one config are one delivery.
                assert_eq!(envelope.routes, [1, 2]);
            }
            other => panic!("expected DATA to go ahead, got {other:?}"),
        }
        // The envelope went with the data: the next mail starts from MAIL.
        assert_eq!(code(&mut s, "RCPT TO:<support@acme.test>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<>"), 250);
    }

    #[test]
    fn commands_out_of_sequence_get_503() {
        let mut s = Session::<u32>::new(settings());
        for line in ["MAIL FROM:<a@b.c>", "RCPT TO:<support@acme.test>", "DATA"] {
            let r = reply(&mut s, line);
            assert_eq!((r.code(), r.lines()[0].as_str()), (503, "5.5.1 send EHLO or HELO first"), "{line}");
        }
        // What needs no greeting works before it.
        assert_eq!(code(&mut s, "NOOP"), 250);
        assert_eq!(code(&mut s, "RSET"), 250);
        assert_eq!(code(&mut s, "VRFY support"), 252);
        let mut s = greeted();
        assert_eq!(code(&mut s, "RCPT TO:<support@acme.test>"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 503);
        // No recipient yet: DATA is refused and the sender stays given.
        assert_eq!(code(&mut s, "DATA"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<support@acme.test>"), 250);
        // RSET forgets the mail; a new EHLO does too.
        assert_eq!(code(&mut s, "RSET"), 250);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 250);
        assert_eq!(code(&mut s, "EHLO again.example"), 250);
        assert_eq!(code(&mut s, "DATA"), 503);
    }

    #[test]
    fn recipients_are_checked_and_limited() {
        let mut s = greeted();
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 250);
        let unknown = reply(&mut s, "RCPT TO:<nobody@acme.test>");
        assert_eq!(unknown.encode(), "550 5.1.1 <nobody@acme.test>: no such mailbox here\r\n");
        assert_eq!(code(&mut s, "RCPT TO:<not-an-address>"), 501);
        assert_eq!(code(&mut s, "RCPT TO:<>"), 501);
        assert_eq!(code(&mut s, "RCPT TO:<support@acme.test> NOTIFY=NEVER"), 555);
        assert_eq!(code(&mut s, "RCPT FROM:<support@acme.test>"), 501);
        // Lenient forms real clients send: a space after the colon, no brackets, a source route.
        assert_eq!(code(&mut s, "rcpt to: <support@acme.test>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:help@acme.test"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<@relay.example:info@globex.test>"), 250);
        // Three accepted is the limit here; a fourth distinct address is deferred.
        let many = reply(&mut s, "RCPT TO:<other@acme.test>");
        assert_eq!((many.code(), many.lines()[0].as_str()), (452, "4.5.3 too many recipients (at most 3 per message)"));
        let long = format!("RCPT TO:<{}@acme.test>", "a".repeat(250));
        assert_eq!(code(&mut s, &long), 501);
    }

    #[test]
    fn mail_parameters_are_checked_up_front() {
        let mut s = greeted();
        let big = reply(&mut s, "MAIL FROM:<a@b.c> SIZE=1001");
        assert_eq!(big.encode(), "552 5.3.4 message exceeds the fixed maximum size of 1000 bytes\r\n");
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c> SIZE=lots"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c> BODY=BINARYMIME"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c> AUTH=<>"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.c"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<no-domain>"), 501);
        assert_eq!(code(&mut s, "MAIL TO:<a@b.c>"), 501);
        // None of those started a mail.
        assert_eq!(code(&mut s, "MAIL FROM: <a@b.c> SIZE=1000"), 250);
    }

    #[test]
    fn unknown_and_unoffered_commands() {
        let mut s = greeted();
        assert_eq!(code(&mut s, "STARTTLS"), 502);
        assert_eq!(code(&mut s, "EXPN staff"), 502);
        assert_eq!(code(&mut s, "AUTH PLAIN AGFiYwB4eXo="), 502);
        assert_eq!(code(&mut s, "FROB"), 500);
        assert_eq!(code(&mut s, ""), 500);
        assert_eq!(
            s.command(b"MAIL FROM:<\xff@b.c>", lookup),
            Step::Reply(Reply::new(500, "5.5.2", "command line is not valid UTF-8"))
        );
        assert_eq!(code(&mut s, "DATA now"), 501);
        match s.command(b"QUIT\r\n", lookup) {
            Step::Close(r) => assert_eq!(r.encode(), "221 2.0.0 mx.parley.test closing connection\r\n"),
            other => panic!("expected QUIT to close, got {other:?}"),
        }
    }

    /// Found by fuzzing (`parley-fuzz`): 200 four-byte characters of a client's parameter
    /// made an 842-octet reply line; RFC 5321 allows 512.
    #[test]
    fn a_client_text_never_stretches_a_reply_line_past_512_octets() {
        let mut s = greeted();
        let emoji = "😀".repeat(300);
        for line in [format!("MAIL FROM:<a@b.c> {emoji}"), format!("EHLO {emoji}")] {
            let encoded = reply(&mut s, &line).encode();
            assert!(encoded.split_inclusive("\r\n").all(|l| l.len() <= 512), "{encoded}");
        }
        assert_eq!(one_line(&"я".repeat(150)), "я".repeat(100));
    }

    #[test]
    fn quoted_local_parts_and_utf8_addresses_are_paths() {
        assert_eq!(path("<\"a>b c\"@acme.test> SIZE=1"), Ok(("\"a>b c\"@acme.test".to_owned(), " SIZE=1")));
        assert_eq!(path("<поддержка@пример.рф>"), Ok(("поддержка@пример.рф".to_owned(), "")));
        assert_eq!(path("<>"), Ok((String::new(), "")));
        assert_eq!(path("<a@b.c"), Err(()));
        assert_eq!(path("<a\tb@c.d>"), Err(()));
        assert_eq!(path("<@relay:>"), Ok((String::new(), "")));
    }

    #[test]
    fn outcomes_map_to_the_codes_senders_act_on() {
        let s = settings();
        let codes: Vec<(u16, String)> = [
            Outcome::Stored,
            Outcome::Automatic,
            Outcome::TooBig,
            Outcome::Unparseable("email has no from address\r\nInjected: yes".into()),
            Outcome::NotStored,
        ]
        .iter()
        .map(|o| {
            let r = o.reply(&s);
            (r.code(), r.lines()[0].split(' ').next().unwrap_or_default().to_owned())
        })
        .collect();
        let expected = [(250, "2.0.0"), (250, "2.0.0"), (552, "5.3.4"), (554, "5.6.0"), (451, "4.3.0")];
        assert_eq!(codes, expected.map(|(c, e)| (c, e.to_owned())));
        // A reason is one line, whatever it contained.
        let r = Outcome::Unparseable("a\r\nb".into()).reply(&s);
        assert_eq!(r.encode(), "554 5.6.0 message not readable: ab\r\n");
    }
}
