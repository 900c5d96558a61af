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
        "web",
        "mobile",
        "device",
    ] {
        cmd.env(
            format!("SWITCHYARD__{}__SERVER__LISTEN", c.to_uppercase()),
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
