//! Running a Switchyard binary as a child process, the production shape: a config file, JSON
//! logs on stderr, the bound address read from its "listening" log line, and signals to stop it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running binary; killed when dropped if still running.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// The address it logged that it listens on.
    pub addr: SocketAddr,
}

impl Spawned {
    /// Starts `bin --config config` with `env`, JSON logs and port 0 (`{prefix}__SERVER__LISTEN`),
    /// and waits up to 30 s for its `listening` log line.
    pub fn start(bin: &str, config: &Path, prefix: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .env(format!("{prefix}__SERVER__LISTEN"), "127.0.0.1:0")
            .env(format!("{prefix}__LOG__FORMAT"), "json")
            .env(format!("{prefix}__LOG__FILTER"), "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the binary");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{bin} did not log that it listens"));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let is_listening = v["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("listening"));
            if let (true, Some(addr)) = (is_listening, v["addr"].as_str()) {
                break addr.parse().expect("a socket address");
            }
        };
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a signal (`-TERM`, `-INT`) and waits up to `within` for the exit status.
    pub fn stop_with(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} failed");
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < end, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example configuration file of the binary at `bin` (`deploy/config/{name}.toml`, named by
/// the binary's file name), the one its CLI tests start it from.
pub fn example_config(bin: &str) -> PathBuf {
    let name = Path::new(bin)
        .file_name()
        .expect("a binary path")
        .to_string_lossy();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/config")
        .join(format!("{name}.toml"))
}

/// Starts the gateway binary at `bin` from its [`example_config`] with `env`, and every demo
/// backend (`exchange`, `limits`, `conversions`) pointed at a port where nothing answers: what
/// the test does must not need a backend.
pub fn start_without_backends(bin: &str, prefix: &str, env: &[(&str, &str)]) -> Spawned {
    let backends: Vec<String> = ["EXCHANGE", "LIMITS", "CONVERSIONS"]
        .iter()
        .map(|b| format!("{prefix}__BACKENDS__{b}__BASE_URL"))
        .collect();
    let mut all: Vec<(&str, &str)> = env.to_vec();
    all.extend(backends.iter().map(|k| (k.as_str(), "http://127.0.0.1:9")));
    Spawned::start(bin, &example_config(bin), prefix, &all)
}

/// The production shape of a gateway binary: started alone from its [`example_config`] with
/// backends that do not answer, it serves `/healthz`, reports not ready naming a backend in
/// `/readyz`, and exits 0 on SIGTERM.
pub async fn assert_runs_alone(bin: &str, prefix: &str) {
    let unreachable_backend = format!("{prefix}__BACKENDS__EXCHANGE__BASE_URL");
    let mut gw = Spawned::start(
        bin,
        &example_config(bin),
        prefix,
        &[(&unreachable_backend, "http://127.0.0.1:9")],
    );
    let get = |path: &str| {
        let url = format!("{}{path}", gw.url());
        async move { reqwest::get(url).await.expect("the gateway answers") }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    let ready = get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_ne!(body["checks"]["exchange"], "ok", "{body}");
    let status = gw.stop_with("-TERM", Duration::from_secs(15));
    assert!(status.success(), "{bin} exited with {status}");
}
