//! One SMTP connection: reads command lines and message data within limits, runs them
//! through the [`Session`](super::protocol::Session), hands each complete mail to a
//! [`Mailroom`] and writes the replies.
//!
//! Limits, so a client can hold only bounded resources: a command line of at most
//! [`Limits::line`] bytes (longer ones are read through and refused); message data is kept
//! only up to the size limit (plus the line being read), and a mail over it is read to its
//! end and refused; every read waits at most [`Limits::idle`]; after [`Limits::errors`]
//! refused commands the connection is closed.
//!
//! Pipelining (RFC 2920): replies are buffered and flushed only when the client has sent
//! nothing more to read, so a pipelined group gets its replies in one write.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

use super::protocol::{Envelope, Outcome, Reply, Session, Settings, Step};

/// A complete mail: its envelope and the message as received (dot-unstuffed, CRLFs kept).
#[derive(Debug)]
pub struct Mail<R> {
    pub envelope: Envelope<R>,
    pub raw: Vec<u8>,
}

/// Where mail goes: which addresses exist, and the delivery of a complete mail.
pub trait Mailroom: Send + Sync + 'static {
    /// What an address resolves to (a tenant's channel config).
    type Route: Clone + PartialEq + Send + Sync + std::fmt::Debug + 'static;

    /// Where mail to `address` goes; empty if nowhere.
    fn recipients(&self, address: &str) -> Vec<Self::Route>;

    /// Delivers a mail to every route of its envelope; the sender is answered only after
    /// this returns.
    fn deliver(&self, mail: Mail<Self::Route>) -> impl Future<Output = Outcome> + Send;
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest command line, its CRLF included.
    pub line: usize,
    /// How long a read may wait for the client.
    pub idle: Duration,
    /// Refused commands (5xx replies) before the connection is closed.
    pub errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // RFC 5321 § 4.5.3.1.4-5: commands of 512 octets, text lines of 1000, more with
        // extensions; § 4.5.3.2.7: a server should wait 5 minutes for a command.
        Self { line: 1000, idle: Duration::from_secs(300), errors: 10 }
    }
}

/// How a line read ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line, its line end included, is in the buffer.
    Complete,
    /// The line was longer than allowed: read through to its end, only its start kept.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Closed,
}

/// How reading a message's data ended.
#[derive(Debug)]
enum Data {
    Complete(Vec<u8>),
    TooBig,
    Closed,
    Idle,
}

struct Conn<S> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    writer: BufWriter<tokio::io::WriteHalf<S>>,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        self.writer.write_all(reply.encode().as_bytes()).await
    }

    /// Reads one line into `buf`, keeping at most `max` bytes of it. Replies written so far
    /// are flushed first if the client has sent nothing more (the pipelining rule).
    async fn read_line(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
        buf.clear();
        let mut too_long = false;
        loop {
            if self.reader.buffer().is_empty() {
                self.writer.flush().await?;
            }
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(Line::Closed);
            }
            let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..=i], true),
                None => (available, false),
            };
            let room = max.saturating_sub(buf.len());
            if chunk.len() > room {
                too_long = true;
            }
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len();
            self.reader.consume(used);
            if ends {
                return Ok(if too_long { Line::TooLong } else { Line::Complete });
            }
        }
    }

    /// Reads a message's data up to the line with a single dot, removing the dot that
    /// stuffs lines starting with one (RFC 5321 § 4.5.2). Keeps at most `max` bytes of
    /// message and one line; a larger message is read to its end and dropped.
    async fn read_data(&mut self, max: usize) -> std::io::Result<Data> {
        let mut message = Vec::new();
        let mut line = Vec::new();
        let mut too_big = false;
        loop {
            // Room for what the limit has left, a stuffing dot and the line end; once over
            // the limit, only enough to recognise the final dot.
            let room = if too_big { 3 } else { max - message.len() + 3 };
            let read = match tokio::time::timeout(self.limits.idle, self.read_line(&mut line, room)).await {
                Ok(read) => read?,
                Err(_) => return Ok(Data::Idle),
            };
            match read {
                Line::Closed => return Ok(Data::Closed),
                Line::Complete if line == b".\r\n" || line == b".\n" => {
                    return Ok(if too_big { Data::TooBig } else { Data::Complete(message) });
                }
                Line::TooLong => {
                    too_big = true;
                    message = Vec::new();
                }
                Line::Complete if too_big => {}
                Line::Complete => {
                    let content = line.strip_prefix(b".").unwrap_or(&line[..]);
                    if message.len() + content.len() > max {
                        too_big = true;
                        message = Vec::new();
                    } else {
                        message.extend_from_slice(content);
                    }
                }
            }
        }
    }
}

/// What interrupted waiting for a command.
enum Wait {
    Read(std::io::Result<Line>),
    Idle,
    Shutdown,
}

/// Serves one connection until the client quits or closes, a limit is hit, or `shutdown`
/// fires (checked between commands: a mail being read or delivered is finished first).
pub async fn serve<S, M>(
    stream: S,
    mailroom: &M,
    settings: Settings,
    limits: Limits,
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite,
    M: Mailroom,
{
    let (r, w) = tokio::io::split(stream);
    let mut conn = Conn { reader: BufReader::new(r), writer: BufWriter::new(w), limits };
    let mut session = Session::<M::Route>::new(settings);
    let hostname = session.settings().hostname.clone();
    conn.send(&session.greeting()).await?;
    let mut line = Vec::new();
    let mut errors = 0;
    loop {
        let (idle, max_line) = (conn.limits.idle, conn.limits.line);
        let wait = tokio::select! {
            _ = shutdown.cancelled() => Wait::Shutdown,
            read = tokio::time::timeout(idle, conn.read_line(&mut line, max_line)) => match read {
                Ok(read) => Wait::Read(read),
                Err(_) => Wait::Idle,
            },
        };
        let reply = match wait {
            Wait::Shutdown => {
                conn.send(&Reply::new(421, "4.3.2", format!("{hostname} shutting down, try again later"))).await?;
                break;
            }
            Wait::Idle => {
                tracing::debug!("smtp client idle for too long");
                conn.send(&Reply::new(421, "4.4.2", format!("{hostname} closing an idle connection"))).await?;
                break;
            }
            Wait::Read(read) => match read? {
                Line::Closed => return Ok(()),
                Line::TooLong => Reply::new(500, "5.5.2", format!("line too long (at most {max_line} bytes)")),
                Line::Complete => match session.command(&line, |address| mailroom.recipients(address)) {
                    Step::Reply(reply) => reply,
                    Step::Close(reply) => {
                        conn.send(&reply).await?;
                        break;
                    }
                    Step::Data { go_ahead, envelope } => {
                        conn.send(&go_ahead).await?;
                        let max = session.settings().max_message_bytes;
                        let outcome = match conn.read_data(max).await? {
                            Data::Complete(raw) => mailroom.deliver(Mail { envelope, raw }).await,
                            Data::TooBig => {
                                tracing::info!(limit = max, "mail over the size limit refused");
                                Outcome::TooBig
                            }
                            Data::Closed => return Ok(()),
                            Data::Idle => {
                                conn.send(&Reply::new(421, "4.4.2", format!("{hostname} closing an idle connection")))
                                    .await?;
                                break;
                            }
                        };
                        outcome.reply(session.settings())
                    }
                },
            },
        };
        if reply.code() >= 500 {
            errors += 1;
        }
        conn.send(&reply).await?;
        if errors >= conn.limits.errors {
            tracing::info!(errors, "smtp connection closed after too many errors");
            conn.send(&Reply::new(421, "4.7.0", format!("{hostname} too many errors, closing connection"))).await?;
            break;
        }
    }
    conn.writer.flush().await?;
    conn.writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    /// Mailboxes `support@acme.test` (route 1) and `info@globex.test` (route 2); keeps what
    /// it was given, and answers with the outcome it is set to.
    #[derive(Default)]
    struct Fake {
        delivered: Mutex<Vec<Mail<u32>>>,
        outcome: Mutex<Option<Outcome>>,
    }

    impl Mailroom for Arc<Fake> {
        type Route = u32;

        fn recipients(&self, address: &str) -> Vec<u32> {
            match address.to_lowercase().as_str() {
                "support@acme.test" => vec![1],
                "info@globex.test" => vec![2],
                _ => vec![],
            }
        }

        fn deliver(&self, mail: Mail<u32>) -> impl Future<Output = Outcome> + Send {
            let outcome = self.outcome.lock().expect("lock").clone().unwrap_or(Outcome::Stored);
            self.delivered.lock().expect("lock").push(mail);
            async move { outcome }
        }
    }

    const MAX: usize = 200;

    fn settings() -> Settings {
        Settings { hostname: "mx.parley.test".into(), max_message_bytes: MAX, max_recipients: 100 }
    }

    /// A client connected to a server task over an in-memory pipe.
    struct Client {
        stream: DuplexStream,
        fake: Arc<Fake>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        shutdown: CancellationToken,
        read: Vec<u8>,
    }

    impl Client {
        fn connect(limits: Limits) -> Self {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let fake = Arc::new(Fake::default());
            let shutdown = CancellationToken::new();
            let (f, s) = (fake.clone(), shutdown.clone());
            let server = tokio::spawn(async move { serve(server, &f, settings(), limits, &s).await });
            Self { stream: client, fake, server, shutdown, read: Vec::new() }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("write to server");
        }

        /// The next whole reply (all its lines), as text.
        async fn reply(&mut self) -> String {
            let mut out = String::new();
            loop {
                let line = self.line().await;
                out.push_str(&line);
                // The last line of a reply has a space after the code.
                if line.as_bytes().get(3) != Some(&b'-') {
                    return out;
                }
            }
        }

        async fn line(&mut self) -> String {
            loop {
                if let Some(i) = self.read.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.read.drain(..=i).collect();
                    return String::from_utf8(line).expect("utf-8 reply");
                }
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                    .await
                    .expect("a reply in time")
                    .expect("read from server");
                assert!(n > 0, "server closed; read so far: {:?}", String::from_utf8_lossy(&self.read));
                self.read.extend_from_slice(&buf[..n]);
            }
        }

        async fn code(&mut self) -> u16 {
            let r = self.reply().await;
            r[..3].parse().unwrap_or_else(|_| panic!("a reply code in {r:?}"))
        }

        /// Waits for the server to close the connection; returns what it sent until then.
        async fn closed(mut self) -> String {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest))
                .await
                .expect("closed in time")
                .expect("read to the end");
            self.read.extend_from_slice(&rest);
            self.server.await.expect("server task").expect("server io");
            String::from_utf8(self.read).expect("utf-8")
        }

        fn delivered(&self) -> Vec<(Envelope<u32>, Vec<u8>)> {
            self.fake.delivered.lock().expect("lock").iter().map(|m| (m.envelope.clone(), m.raw.clone())).collect()
        }
    }

    async fn greeted() -> Client {
        let mut c = Client::connect(Limits::default());
        assert_eq!(c.reply().await, "220 mx.parley.test ESMTP Parley\r\n");
        c.send(b"EHLO client.example\r\n").await;
        assert!(c.reply().await.ends_with("250 ENHANCEDSTATUSCODES\r\n"));
        c
    }

    #[tokio::test]
    async fn a_pipelined_mail_is_unstuffed_and_delivered() {
        let mut c = greeted().await;
        // One write for the whole envelope (RFC 2920), an unknown recipient among them.
        c.send(b"MAIL FROM:<oleg@example.ru>\r\nRCPT TO:<support@acme.test>\r\nRCPT TO:<nobody@acme.test>\r\nRCPT TO:<INFO@globex.test>\r\nDATA\r\n").await;
        let replies = [c.code().await, c.code().await, c.code().await, c.code().await, c.code().await];
        assert_eq!(replies, [250, 250, 550, 250, 354]);
        c.send(b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n. \r\nplain\r\n.\r\n").await;
        assert_eq!(c.reply().await, "250 2.0.0 message accepted\r\n");
        c.send(b"QUIT\r\n").await;
        assert_eq!(c.reply().await, "221 2.0.0 mx.parley.test closing connection\r\n");
        let delivered = c.delivered();
        assert_eq!(c.closed().await, "");
        let [(envelope, raw)] = &delivered[..] else { panic!("one mail, got {delivered:?}") };
        assert_eq!(envelope.sender, "oleg@example.ru");
        assert_eq!(envelope.recipients, ["support@acme.test", "INFO@globex.test"]);
        assert_eq!(envelope.routes, [1, 2]);
        assert_eq!(std::str::from_utf8(raw), Ok("Subject: dots\r\n\r\n.leading dot\r\n..\r\n \r\nplain\r\n"));
    }

    #[tokio::test]
    async fn several_mails_on_one_connection_each_get_their_answer() {
        let mut c = greeted().await;
        for (i, outcome) in [Outcome::Stored, Outcome::NotStored, Outcome::Automatic].into_iter().enumerate() {
            *c.fake.outcome.lock().expect("lock") = Some(outcome.clone());
            c.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n").await;
            assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
            c.send(format!("Subject: {i}\r\n\r\nbody\r\n.\r\n").as_bytes()).await;
            assert_eq!(c.reply().await, outcome.reply(&settings()).encode());
        }
        assert_eq!(c.delivered().len(), 3);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_read_to_its_end_and_refused() {
        let mut c = greeted().await;
        c.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n").await;
        assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
        // Over the limit in many short lines, then in one long line: both are refused, and
        // the session is in step after each (the next command is answered as a command).
        let mut body = b"x\r\n".repeat(MAX / 3 + 1);
        body.extend_from_slice(b".\r\n");
        c.send(&body).await;
        assert_eq!(c.reply().await, "552 5.3.4 message exceeds the fixed maximum size of 200 bytes\r\n");
        c.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n").await;
        assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
        let mut body = vec![b'y'; 10 * MAX];
        body.extend_from_slice(b"\r\n.\r\n");
        c.send(&body).await;
        assert_eq!(c.code().await, 552);
        // Exactly at the limit is fine (dot-stuffing dots do not count).
        c.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n").await;
        assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
        let mut exact = b".".repeat(MAX - 2);
        exact.extend_from_slice(b"\r\n");
        let mut stuffed = vec![b'.'];
        stuffed.extend_from_slice(&exact);
        stuffed.extend_from_slice(b".\r\n");
        c.send(&stuffed).await;
        assert_eq!(c.code().await, 250);
        let delivered = c.delivered();
        assert_eq!(delivered.len(), 1, "only the mail within the limit is delivered");
        assert_eq!(delivered[0].1, exact);
    }

    #[tokio::test]
    async fn long_lines_and_repeated_errors_end_the_connection() {
        let mut c = greeted().await;
        let long = format!("NOOP {}\r\n", "x".repeat(2000));
        c.send(long.as_bytes()).await;
        assert_eq!(c.reply().await, "500 5.5.2 line too long (at most 1000 bytes)\r\n");
        // Still in step: the next command is read as one.
        c.send(b"NOOP\r\n").await;
        assert_eq!(c.code().await, 250);
        // Nine more refusals make ten: the tenth is answered, then the connection closes.
        c.send(&b"FROB\r\n".repeat(9)).await;
        for _ in 0..9 {
            assert_eq!(c.code().await, 500);
        }
        assert_eq!(c.closed().await, "421 4.7.0 mx.parley.test too many errors, closing connection\r\n");
    }

    #[tokio::test]
    async fn an_idle_client_is_disconnected() {
        let limits = Limits { idle: Duration::from_millis(200), ..Limits::default() };
        let mut c = Client::connect(limits);
        assert_eq!(c.code().await, 220);
        c.send(b"EHLO client.example\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n").await;
        let _ehlo = c.reply().await;
        assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
        // Half a message, then silence.
        c.send(b"Subject: x\r\n").await;
        assert_eq!(c.closed().await, "421 4.4.2 mx.parley.test closing an idle connection\r\n");
    }

    #[tokio::test]
    async fn shutdown_says_goodbye_between_commands() {
        let mut c = greeted().await;
        c.send(b"NOOP\r\n").await;
        assert_eq!(c.code().await, 250);
        c.shutdown.cancel();
        assert_eq!(c.closed().await, "421 4.3.2 mx.parley.test shutting down, try again later\r\n");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_mid_message_delivers_nothing() {
        let mut c = greeted().await;
        c.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\nSubject: x\r\n\r\nhalf").await;
        assert_eq!([c.code().await, c.code().await, c.code().await], [250, 250, 354]);
        let Client { stream, fake, server, .. } = c;
        drop(stream);
        server.await.expect("server task").expect("a hang-up is no server error");
        assert!(fake.delivered.lock().expect("lock").is_empty());
    }
}
