//! The `switchyard` binary itself: `up` prints every URL, every component answers, Ctrl-C
//! (SIGINT) and SIGTERM stop it cleanly; `--print-config` and bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn up() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("up");
    for c in [
        "limits",
        "exchange",
        "conversions",
        "statements",
        "web",
        "mobile",
        "device",
    ] {
        cmd.env(
            format!("SWITCHYARD__{}__SERVER__LISTEN", c.to_uppercase()),
            "127.0.0.1:0",
        );
    }
    cmd.env("SWITCHYARD__PUBLISH__LISTEN", "127.0.0.1:0");
    for gateway in [
        "web",
        "mobile",
        "device",
        "limits",
        "exchange",
        "conversions",
        "statements",
    ] {
        cmd.env(
            format!("SWITCHYARD__{}__METRICS__LISTEN", gateway.to_uppercase()),
            "127.0.0.1:0",
        );
    }
    cmd.env("SWITCHYARD__LOG__FILTER", "warn");
    cmd
}

/// Starts the stack and collects stdout until the "press Ctrl-C" line.
fn start() -> (Child, Vec<String>) {
    let mut child = up()
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn switchyard");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("switchyard printed its URLs in time");
        let done = line.contains("press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (child, lines)
}

fn base_url(lines: &[String], name: &str) -> String {
    let line = lines
        .iter()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no line for {name} in {lines:?}"));
    let url = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no URL in {line}"));
    let rest = url.trim_start_matches("http://");
    format!("http://{}", &rest[..rest.find('/').unwrap_or(rest.len())])
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("switchyard did not stop within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn all_healthy(lines: &[String]) {
    let client = reqwest::Client::new();
    for name in [
        "bff-web",
        "bff-mobile",
        "bff-device",
        "limits",
        "exchange",
        "conversions",
        "statements",
    ] {
        let url = format!("{}/healthz", base_url(lines, name));
        let r = client.get(&url).send().await.expect("healthz answers");
        assert_eq!(r.status(), 200, "{url}");
    }
}

#[tokio::test]
async fn up_prints_every_url_and_stops_cleanly_on_ctrl_c() {
    let (mut child, lines) = start();
    all_healthy(&lines).await;
    // Each gateway's and service's metrics listener (on port 0 here: chosen at start, and said
    // so).
    let metrics: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("metrics"))
        .collect();
    assert_eq!(metrics.len(), 7, "{lines:?}");
    for gateway in [
        "bff-web",
        "bff-mobile",
        "bff-device",
        "limits",
        "exchange",
        "conversions",
        "statements",
    ] {
        assert!(metrics.iter().any(|l| l.contains(gateway)), "{metrics:?}");
    }
    let quote = format!(
        "{}/v1/quote?user=alice&from=EUR&to=USD&amount=10",
        base_url(&lines, "bff-mobile")
    );
    let r = reqwest::get(&quote).await.expect("quote");
    assert_eq!(r.status(), 200);
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigterm_stops_it_cleanly_too() {
    let (mut child, lines) = start();
    all_healthy(&lines).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let out = up()
        .arg("--print-config")
        .env("SWITCHYARD__WEB__GRAPHQL__MAX_DEPTH", "7")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for section in [
        "[web.graphql]",
        "[exchange]",
        "[conversions.backends.limits]",
        "[bus]",
    ] {
        assert!(text.contains(section), "{section} missing from:\n{text}");
    }
    assert!(text.contains("max_depth = 7"), "{text}");
}

#[test]
fn an_unknown_key_stops_it_with_an_error_naming_the_key() {
    let out = up()
        .arg("--print-config")
        .env("SWITCHYARD__WEB__GRAPHQL__MAX_DEPHT", "7")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_depht"), "{err}");
    assert!(err.contains("web.graphql"), "{err}");
}

/// Kills the child when dropped unless it has exited, so a failed assertion leaves no stack
/// running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A demo token for `user`, as the docs' curl examples use it.
fn demo_bearer(user: &str) -> String {
    let token =
        switchyard_core::auth::hs256_token(switchyard::DEMO_SECRET, user, Duration::from_secs(600));
    format!("Bearer {token}")
}

#[tokio::test]
async fn up_with_every_listen_overridden_keeps_the_demo_secret_device_and_admin_token() {
    // `up()` moves every component's port through the environment, the docs' own recipe.
    let (child, lines) = start();
    let mut child = KillOnDrop(child);
    let text = lines.join("\n");
    assert!(text.contains("demo device `demo-tv`"), "{text}");
    assert!(
        text.contains(&format!("Bearer {}", switchyard::DEMO_ADMIN_TOKEN)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "publisher `demo`: Authorization: Bearer {}",
            switchyard::DEMO_PUBLISHER_KEY
        )),
        "{text}"
    );
    let client = reqwest::Client::new();
    // The publish API it printed knows the demo key (and refuses a channel of no catalog).
    let publish = format!("{}/v1/publish", base_url(&lines, "publish"));
    let refused = |key: &str| {
        client
            .post(&publish)
            .bearer_auth(key)
            .json(&serde_json::json!({"channel": "not-a-catalog-channel", "data": 1}))
            .send()
    };
    let r = refused("not-the-key").await.expect("publish");
    assert_eq!(r.status(), 401);
    let r = refused(switchyard::DEMO_PUBLISHER_KEY)
        .await
        .expect("publish");
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "not_in_catalog", "{body}");
    let quote = format!(
        "{}/v1/quote?user=alice&from=EUR&to=USD&amount=10",
        base_url(&lines, "bff-mobile")
    );
    let r = client
        .get(&quote)
        .header("authorization", demo_bearer("alice"))
        .send()
        .await
        .expect("quote");
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert!(body["remaining_limit"].is_string(), "{body}");
    let r = client
        .post(format!("{}/v1/graphql", base_url(&lines, "bff-web")))
        .header("authorization", demo_bearer("alice"))
        .json(&serde_json::json!({"query":
            r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "1") { remainingLimit } }"#}))
        .send()
        .await
        .expect("graphql");
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert!(
        body["data"]["quote"]["remainingLimit"].is_string(),
        "{body}"
    );
    let poll = format!(
        "{}/v1/devices/{}/events?wait=0",
        base_url(&lines, "bff-device"),
        switchyard::DEMO_DEVICE
    );
    let r = client
        .get(&poll)
        .header("x-device-key", switchyard::DEMO_DEVICE_KEY)
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), 200);
    signal(&child.0, "-INT");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn up_with_an_emptied_secret_refuses_to_start_naming_the_key() {
    let mut child = up()
        .env("SWITCHYARD__MOBILE__AUTH__HS256_SECRET", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "exit status {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(err.contains("mobile.auth.hs256_secret"), "{err}");
}

fn token(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "alice"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run switchyard token")
}

#[test]
fn token_under_a_listen_override_signs_with_the_demo_secret() {
    let out = token(&[("SWITCHYARD__WEB__SERVER__LISTEN", "127.0.0.1:18080")]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let verifier = switchyard_core::auth::Verifier::new(&switchyard_core::auth::AuthConfig {
        hs256_secret: switchyard::DEMO_SECRET.to_owned(),
        ..Default::default()
    })
    .expect("verifier");
    let user = verifier
        .verify(printed.trim(), |sub| Some(sub.to_owned()))
        .expect("signed with the demo secret");
    assert_eq!(user, "alice");
}

#[test]
fn token_with_an_empty_secret_fails_naming_the_key() {
    let out = token(&[("SWITCHYARD__WEB__AUTH__HS256_SECRET", "")]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "no token printed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web.auth.hs256_secret"), "{err}");
}
