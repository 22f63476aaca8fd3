//! `parleyctl` against running services: a platform operator creates a tenant, its admin
//! sets it up, an integrator sends a message; bad arguments get clear errors.

use parley_testkit::{App, binary};

struct Ctl<'a> {
    app: &'a App,
}

impl Ctl<'_> {
    /// Runs `parleyctl` with `token`; returns (exit code, stdout, stderr).
    async fn run(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let a = self.app.addrs();
        let mut cmd = tokio::process::Command::new(binary("parleyctl"));
        cmd.env_clear()
            .args(["--routing", &format!("http://{}", a.routing), "--ingest", &format!("http://{}", a.ingest)])
            .args([
                "--history",
                &format!("http://{}", a.history),
                "--notification",
                &format!("http://{}", a.notification),
            ])
            .args(args);
        if let Some(t) = token {
            cmd.env("PARLEY_TOKEN", t);
        }
        let out = cmd.output().await.expect("parleyctl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        let (code, out, err) = self.run(token, args).await;
        assert_eq!(code, 0, "parleyctl {args:?} failed: {err}");
        out
    }

    /// Runs and expects failure with `code`, saying `says` on stderr.
    async fn fails(&self, token: Option<&str>, args: &[&str], code: i32, says: &str) {
        let (got, _, err) = self.run(token, args).await;
        assert_eq!(got, code, "parleyctl {args:?}: {err}");
        assert!(err.contains(says), "parleyctl {args:?} should say {says:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parleyctl_sets_up_a_tenant_and_says_what_is_wrong() {
    let app = App::spawn().await;
    let ctl = Ctl { app: &app };
    let platform = ctl.ok(None, &["token", "platform", "--signing-key", app.signing_key.expose()]).await;
    assert!(
        ctl.ok(Some(&platform), &["tenant", "create", "acme", "--name", "ACME Bank"])
            .await
            .contains("created tenant acme")
    );
    let admin =
        ctl.ok(Some(&platform), &["token", "issue", "--tenant", "acme", "--role", "admin", "--subject", "root"]).await;

    ctl.ok(Some(&admin), &["skill", "create", "billing", "--name", "Billing"]).await;
    ctl.ok(
        Some(&admin),
        &[
            "operator",
            "create",
            "anna",
            "--name",
            "Анна",
            "--skill",
            "billing:4",
            "--capacity",
            "api:2",
            "--language",
            "ru",
        ],
    )
    .await;
    let listed = ctl.ok(Some(&admin), &["operator", "list"]).await;
    assert!(listed.contains("anna  Анна  skills=[billing:4] languages=[ru] capacity=[api:2]"), "{listed}");
    ctl.ok(
        Some(&admin),
        &["queue", "create", "billing", "--name", "Billing", "--skill", "billing:2", "--offer-timeout", "30"],
    )
    .await;
    ctl.ok(Some(&admin), &["channel", "create", "crm", "--name", "CRM", "--queue", "billing"]).await;
    let integrator = ctl.ok(Some(&admin), &["token", "issue", "--role", "integrator", "--subject", "crm"]).await;
    let anna = ctl.ok(Some(&admin), &["token", "issue", "--role", "operator", "--subject", "anna"]).await;
    let sent = ctl.ok(Some(&integrator), &["send", "--customer", "c-1", "--text", "Привет", "--key", "k-1"]).await;
    assert!(sent.starts_with("accepted message"), "{sent}");
    let again = ctl.ok(Some(&integrator), &["send", "--customer", "c-1", "--text", "Привет", "--key", "k-1"]).await;
    assert!(again.ends_with("(duplicate)"), "{again}");
    let status = ctl.ok(Some(&anna), &["status", "away", "--reason", "обед"]).await;
    assert!(status.contains("anna is Away: обед"), "{status}");

    // Bad arguments, each with its reason.
    ctl.fails(
        Some(&admin),
        &["operator", "create", "eve", "--name", "Eve", "--skill", "billing"],
        1,
        "expected NAME:NUMBER",
    )
    .await;
    ctl.fails(
        Some(&admin),
        &["operator", "create", "eve", "--name", "Eve", "--skill", "karate:2"],
        1,
        "INVALID_ARGUMENT: operator.skills: skill karate does not exist",
    )
    .await;
    ctl.fails(
        Some(&admin),
        &["operator", "create", "eve", "--name", "Eve", "--capacity", "fax:2"],
        1,
        "unknown channel \"fax\"",
    )
    .await;
    ctl.fails(Some(&admin), &["operator", "create", "anna", "--name", "Anna"], 1, "ALREADY_EXISTS").await;
    ctl.fails(Some(&admin), &["token", "issue", "--role", "janitor", "--subject", "x"], 1, "unknown role").await;
    ctl.fails(Some(&anna), &["status", "sleeping"], 1, "unknown status").await;
    ctl.fails(None, &["operator", "list"], 1, "no token").await;
    ctl.fails(Some(&integrator), &["operator", "list"], 1, "PERMISSION_DENIED").await;
    ctl.fails(Some("garbage"), &["operator", "list"], 1, "UNAUTHENTICATED").await;
    ctl.fails(Some(&admin), &["frobnicate"], 2, "unrecognized subcommand").await;
    // The team view is a supervisor's or an admin's, and only watches.
    ctl.fails(Some(&anna), &["desk", "--team"], 1, "PERMISSION_DENIED").await;
    ctl.fails(Some(&admin), &["desk", "--team", "--online"], 2, "cannot be used with").await;
    ctl.fails(None, &["token", "platform", "--signing-key", "short"], 1, "at least 32 bytes").await;
    app.stop().await;
}
