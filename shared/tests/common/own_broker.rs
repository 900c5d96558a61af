//! A broker server of the test's own, on a free port, that can be stopped and started again:
//! for the tests of outages (a broker that stops mid-stream, a bus that starts while its broker
//! is down, a publish that fails while it is down and must not land later).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Kind;

/// A broker server of the test's own, on a free port, that can be stopped and started again.
pub struct OwnBroker {
    kind: Kind,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn start(kind: Kind) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("switchyard-bus-test-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut broker = Self {
            kind,
            port,
            dir,
            child: None,
        };
        broker.up();
        broker
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats | Kind::NatsChannels => format!("nats://127.0.0.1:{}", self.port),
            Kind::Memory | Kind::Rabbitmq => unreachable!("no private broker for {:?}", self.kind),
        }
    }

    pub fn up(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
            Kind::Nats | Kind::NatsChannels => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&self.dir);
                c
            }
            Kind::Memory | Kind::Rabbitmq => {
                unreachable!("no private broker for {:?}", self.kind)
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker (redis-server / nats-server must be installed)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM: NATS flushes its store, Redis without persistence loses all).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
