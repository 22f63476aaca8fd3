//! Real infrastructure for tests: a `nats-server` (JetStream, temporary store) and a
//! `redis-server` on free ports, killed and cleaned up on drop; and a fresh PostgreSQL
//! database per test on the server named by `PARLEY_TEST_DATABASE_URL`, dropped on drop.
//! Nothing depends on state another run left behind.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (the OS picks; a race with another process is possible but
/// then the server fails to start and the test says so).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            // Someone listens; make sure it is our server and not another test's that took
            // the port first (ours would then exit, failing to bind).
            std::thread::sleep(Duration::from_millis(50));
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{what} exited with {status}: port {port} was taken");
            }
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("{what} exited with {status} before listening:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{what} did not listen on {port} within 20 s")
}

/// The workspace root (where `.parley/` lives), from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The `nats-server` to use: `PARLEY_NATS_SERVER`, else the one `deploy/local/infra.sh`
/// installs under `.parley/bin`, else `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PARLEY_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".parley/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A `nats-server` with JetStream on a free port.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Starts a server on a free port, trying again on another port if the first is taken by
/// the time the server binds it (another test process may pick the same free port).
fn with_port_retries<T>(what: &str, start: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match start() {
            Ok(server) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}

impl NatsServer {
    pub fn start() -> anyhow::Result<Self> {
        with_port_retries("nats-server", Self::start_once)
    }

    fn start_once() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("parley-nats-").tempdir()?;
        let port = free_port();
        let log = dir.path().join("nats.log");
        let bin = nats_server_binary();
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("store"))
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run {} ({e}); run `deploy/local/infra.sh tools` or set PARLEY_NATS_SERVER",
                    bin.display()
                )
            })?;
        wait_for_port(port, &mut child, "nats-server", &log)?;
        Ok(Self { child, port, _dir: dir })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server abruptly (`kill -9`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a free port that keeps nothing on disk.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> anyhow::Result<Self> {
        with_port_retries("redis-server", Self::start_once)
    }

    fn start_once() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("parley-redis-").tempdir()?;
        let port = free_port();
        let log = dir.path().join("redis.log");
        let mut child = Command::new(std::env::var_os("PARLEY_REDIS_SERVER").unwrap_or_else(|| "redis-server".into()))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run redis-server ({e}); run `deploy/local/infra.sh tools`"))?;
        wait_for_port(port, &mut child, "redis-server", &log)?;
        Ok(Self { child, port, _dir: dir })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server tests create their databases on (an admin URL).
pub fn admin_database_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDatabase {
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = admin_database_url();
        let name = format!("parley_t_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.map_err(|e| {
            anyhow::anyhow!("cannot reach PostgreSQL at {admin_url} ({e}); set PARLEY_TEST_DATABASE_URL")
        })?;
        let task = tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        drop(client);
        let _ = task.await;
        Ok(Self { name, admin_url })
    }

    /// The URL of this database (as the admin user, who owns what migrations create).
    pub fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => format!("{}/{}", self.admin_url, self.name),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any async context we may block; use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}
