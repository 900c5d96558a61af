//! nginx run from a copy of the real `deploy/nginx` configuration in a scratch prefix, with the
//! compose upstreams swapped for loopback addresses and the listen ports moved to free ones.
//! nginx must be installed (`scripts/services` installs it): without it the tests that use this
//! FAIL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::eventually;

use super::PATIENCE;
use super::deploy::{GATEWAYS, deploy_dir, read};

/// The nginx binary: on PATH, or where Debian and the official builds put it. Panics (the test
/// fails) when there is none: CI installs it through scripts/services.
pub fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"));
    let known = [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .into_iter()
    .map(PathBuf::from);
    on_path
        .chain(known)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, so deploy/nginx/nginx.conf cannot be checked: run \
             scripts/services (it installs Debian's nginx-light)"
            )
        })
}

/// A scratch directory holding a copy of deploy/nginx; removed when dropped.
pub struct NginxDir {
    pub dir: PathBuf,
}

impl Drop for NginxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NginxDir {
    /// Copies deploy/nginx/*.conf into a fresh directory. `upstreams.conf` is rewritten with the
    /// given loopback servers in place of the compose ones (every other directive kept), and
    /// each `listen PORT;` of nginx.conf moved to `listen 127.0.0.1:NEW;` per `listens`.
    pub fn new(upstreams: &HashMap<&str, Vec<SocketAddr>>, listens: &HashMap<u16, u16>) -> Self {
        let dir = std::env::temp_dir().join(test_support::unique_name("switchyard-deploy-nginx"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch prefix");
        let scratch = Self { dir };
        let source = deploy_dir().join("nginx");
        for entry in std::fs::read_dir(&source).expect("deploy/nginx exists") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().expect("file name").to_string_lossy();
            if !name.ends_with(".conf") {
                continue;
            }
            let mut text = read(&path);
            if name == "upstreams.conf" {
                text = loopback_upstreams(&text, upstreams);
            } else if name == "nginx.conf" {
                for (from, to) in listens {
                    let old = format!("listen {from};");
                    assert_eq!(
                        text.matches(&old).count(),
                        1,
                        "nginx.conf should have exactly one `{old}`"
                    );
                    text = text.replace(&old, &format!("listen 127.0.0.1:{to};"));
                }
            }
            std::fs::write(scratch.dir.join(&*name), text).expect("write the copy");
        }
        scratch
    }

    /// Arguments that point nginx at this copy, with pid and logs inside it.
    pub fn args(&self, extra_globals: &str) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "-c".into(),
            format!("{d}/nginx.conf"),
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-g".into(),
            format!("pid {d}/nginx.pid; {extra_globals}"),
        ]
    }

    /// What nginx logged: its startup log, then its stderr once running.
    pub fn error_log(&self) -> String {
        ["error.log", "stderr.log"]
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .join("\n")
    }
}

/// `upstreams.conf` with each upstream's `server HOST:PORT ...` lines pointed, in order, at the
/// given addresses; every other parameter and directive stays as written.
pub fn loopback_upstreams(text: &str, addrs: &HashMap<&str, Vec<SocketAddr>>) -> String {
    let mut current: Option<String> = None;
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut out = String::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        let mut words = code.split_whitespace();
        match (words.next(), words.next()) {
            (Some("upstream"), Some(name)) => current = Some(name.to_owned()),
            (Some("}"), _) => current = None,
            (Some("server"), Some(host)) => {
                let upstream = current
                    .clone()
                    .expect("server lines sit in an upstream block");
                let list = addrs
                    .get(upstream.as_str())
                    .unwrap_or_else(|| panic!("no loopback servers given for {upstream}"));
                let n = used.entry(upstream.clone()).or_default();
                let addr = list.get(*n).unwrap_or_else(|| {
                    panic!("{upstream} has more servers than the {} given", list.len())
                });
                *n += 1;
                out.push_str(&line.replacen(host, &addr.to_string(), 1));
                out.push('\n');
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    for (upstream, list) in addrs {
        assert_eq!(
            used.get(*upstream).copied().unwrap_or(0),
            list.len(),
            "upstreams.conf should list {} servers in {upstream}",
            list.len()
        );
    }
    out
}

/// A running nginx (master in the foreground, as a child); stopped when dropped.
pub struct Nginx {
    child: Child,
    bin: PathBuf,
    dir: NginxDir,
}

impl Nginx {
    pub fn start(dir: NginxDir) -> Self {
        let bin = nginx_binary();
        // nginx.conf logs errors to stderr once it has read it: keep them for a failure report.
        let stderr = std::fs::File::create(dir.dir.join("stderr.log")).expect("stderr file");
        let child = Command::new(&bin)
            .args(dir.args("daemon off;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Self { child, bin, dir }
    }

    /// Waits (bounded) until nginx answers its own health location on `port`.
    pub async fn wait_ready(&mut self, port: u16) {
        let url = format!("http://127.0.0.1:{port}/nginx-healthz");
        let client = test_support::http::client();
        let ready = eventually(PATIENCE, || {
            let req = client.get(&url).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        if !ready {
            let exited = self.child.try_wait().ok().flatten();
            panic!(
                "nginx did not come up on port {port} (exit: {exited:?}); error log:\n{}",
                self.dir.error_log()
            );
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A fast shutdown through the master, so its workers go too (killing only the master
        // would leave them behind).
        let _ = Command::new(&self.bin)
            .args(self.dir.args(""))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each gateway's compose port mapped to a free loopback port for nginx to take. The listeners
/// are held until every port is chosen: released one by one, the kernel could hand the same port
/// out twice, and nginx would then serve two gateways' server blocks on one port (a mobile
/// socket answered 404 by bff-web).
pub fn nginx_listens() -> HashMap<u16, u16> {
    let held: Vec<(u16, std::net::TcpListener)> = GATEWAYS
        .iter()
        .map(|g| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            (g.port, l)
        })
        .collect();
    held.iter()
        .map(|(from, l)| (*from, l.local_addr().expect("bound").port()))
        .collect()
}
