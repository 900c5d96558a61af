//! Case c: a private Redis, NATS or RabbitMQ restarted mid-stream under bff-mobile, bff-web and
//! bff-device on that bus, with a publisher that publishes with idempotency keys and retries.

use super::*;

/// A broker of the test's own on a free port: `redis-server` without persistence, or
/// `nats-server` with JetStream in a scratch directory that is removed when it stops — so a
/// restart loses the history either way — or a RabbitMQ node of its own (its own node name,
/// ports, cookie, data and log directories, the stream plugin enabled; `port` is its stream
/// port), stopped (SIGTERM) and restarted on its data directory, so its streams come back from
/// disk. The RabbitMQ bus's state store is the machine's Redis, under the
/// test's own prefix: it is not restarted. The machine's shared RabbitMQ node is never touched.
pub(crate) struct PrivateBroker {
    kind: BusKind,
    pub(crate) port: u16,
    /// RabbitMQ's AMQP and Erlang distribution ports (unused by the other kinds).
    rabbit_ports: (u16, u16),
    dir: PathBuf,
    child: Option<Child>,
}

/// A port free on loopback right now.
fn free_port() -> u16 {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    free.local_addr().expect("its address").port()
}

/// `n` distinct ports free on every interface right now, below the ephemeral range (Linux's
/// default 32768–60999): a port picked there can be taken by any outgoing connection (the
/// gateways reconnecting, say) before a RabbitMQ node binds it, at its boot or its restart,
/// and its start then fails (`dist_port_already_used`).
fn listen_ports(n: usize) -> Vec<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let mut ports = Vec::new();
    let mut candidate = 20_000 + (seed % 12_000) as u16;
    for _ in 0..12_000 {
        candidate = if candidate >= 31_999 {
            20_000
        } else {
            candidate + 1
        };
        if !ports.contains(&candidate)
            && std::net::TcpListener::bind(("0.0.0.0", candidate)).is_ok()
        {
            ports.push(candidate);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("no {n} free ports in 20000..32000");
}

/// How long a private RabbitMQ node may take to boot (Erlang and RabbitMQ start in 7–12 s on
/// the 2-core test machine under load).
const RABBITMQ_BOOT: Duration = Duration::from_secs(120);

/// The RabbitMQ start script run directly (the `/usr/sbin` wrapper switches to the system's
/// `rabbitmq` user and its node).
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl PrivateBroker {
    pub(crate) async fn start(kind: BusKind) -> Self {
        let port = free_port();
        let (port, rabbit_ports) = if kind == BusKind::Rabbitmq {
            let ports = listen_ports(3);
            (ports[0], (ports[1], ports[2]))
        } else {
            (port, (0, 0))
        };
        let dir = std::env::temp_dir().join(test_support::unique_name("faults-broker"));
        let mut broker = Self {
            kind,
            port,
            rabbit_ports,
            dir,
            child: None,
        };
        broker.up().await;
        broker
    }

    /// The bus configuration of a gateway on this broker, under a prefix of its own.
    pub(crate) fn bus_config(&self) -> BusConfig {
        let mut config = BusConfig::of(self.kind);
        config.url = match self.kind {
            BusKind::Nats => format!("nats://127.0.0.1:{}", self.port),
            BusKind::Rabbitmq => {
                format!("rabbitmq-stream://guest:guest@127.0.0.1:{}/%2f", self.port)
            }
            _ => format!("redis://127.0.0.1:{}", self.port),
        };
        config.prefix = test_support::unique_name("faults");
        config.reconnect_initial_ms = 50;
        config.reconnect_max_ms = 500;
        config
    }

    pub(crate) async fn up(&mut self) {
        if self.kind == BusKind::Rabbitmq {
            return self.rabbitmq_up().await;
        }
        let port = self.port.to_string();
        let (program, args): (&str, Vec<&str>) = match self.kind {
            BusKind::Nats => {
                std::fs::create_dir_all(&self.dir).expect("a scratch directory");
                let dir = self.dir.to_str().expect("a UTF-8 path");
                (
                    "nats-server",
                    vec!["-a", "127.0.0.1", "-p", &port, "-js", "-sd", dir],
                )
            }
            _ => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
            ),
        };
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} ({e}): run scripts/services"));
        self.child = Some(child);
        let end = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < end, "{program} did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn down(&mut self) {
        if self.kind == BusKind::Rabbitmq {
            // SIGTERM to the node's process group (the start script, `beam.smp` and its
            // helpers): the node stops as `rabbitmqctl stop` stops it, closing every connection;
            // its data directory stays for the restart. Then until it no longer listens on any
            // of its ports (its name is free again in epmd).
            if let Some(mut child) = self.child.take() {
                signal_group(&child, "-TERM");
                child.wait().await.expect("the node's start script ends");
            }
            let end = Instant::now() + RABBITMQ_BOOT;
            for port in [self.port, self.rabbit_ports.0, self.rabbit_ports.1] {
                while tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    assert!(Instant::now() < end, "the RabbitMQ node still listens");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            return;
        }
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("the broker stops");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Starts (or restarts, on the same data) the private RabbitMQ node and waits for its stream
    /// listener.
    async fn rabbitmq_up(&mut self) {
        let (amqp, dist) = self.rabbit_ports;
        std::fs::create_dir_all(&self.dir).expect("a scratch directory");
        let config = self.dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 stream.listeners.tcp.default = 127.0.0.1:{port}\n\
                 stream.advertised_host = 127.0.0.1\n\
                 stream.advertised_port = {port}\n",
                port = self.port
            ),
        )
        .expect("the node's configuration");
        let plugins = self.dir.join("enabled_plugins");
        std::fs::write(&plugins, "[rabbitmq_stream].\n").expect("the node's plugins");
        // The node's name is unique among the machine's nodes (one epmd for all).
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name")
            .to_owned();
        let child = Command::new(RABBITMQ_SERVER)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", format!("{name}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            // Not the machine's node's environment file (its NODENAME).
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {RABBITMQ_SERVER} ({e}): run scripts/services"));
        self.child = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                let logs: Vec<String> = std::fs::read_dir(self.dir.join("log"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .map(|text| {
                        let tail = text.len().saturating_sub(3000);
                        text[text.floor_char_boundary(tail)..].to_owned()
                    })
                    .collect();
                panic!("the private RabbitMQ node exited ({exited:?}); its logs end: {logs:#?}");
            }
            assert!(
                started.elapsed() < RABBITMQ_BOOT,
                "the private RabbitMQ node did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "private RabbitMQ node {name}: stream port {} after {} ms",
            self.port,
            started.elapsed().as_millis()
        );
    }
}

/// `signal` (`-TERM`, `-KILL`) to `child`'s process group (it leads one of its own).
fn signal_group(child: &Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([signal, "--", &format!("-{pid}")])
            .status();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // A RabbitMQ node outlives its start script: the whole group goes.
        if let Some(child) = &self.child
            && self.kind == BusKind::Rabbitmq
        {
            signal_group(child, "-KILL");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_private_redis_restarted_mid_stream_gives_every_event_or_a_gap() {
    broker_restarted_mid_stream(BusKind::Redis, "c. private Redis restarted mid-stream").await;
}

#[tokio::test]
async fn a_private_nats_restarted_mid_stream_gives_every_event_or_a_gap() {
    broker_restarted_mid_stream(BusKind::Nats, "c. private NATS restarted mid-stream").await;
}

#[tokio::test]
async fn a_private_rabbitmq_restarted_mid_stream_gives_every_event_or_a_gap() {
    broker_restarted_mid_stream(
        BusKind::Rabbitmq,
        "c. private RabbitMQ node stopped and restarted on its data mid-stream",
    )
    .await;
}

/// Case c on a broker of `kind`.
async fn broker_restarted_mid_stream(kind: BusKind, case: &str) {
    let mut broker = PrivateBroker::start(kind).await;
    let bus_config = broker.bus_config();
    let mobile_gateway = common::cluster::mobile_instance(&bus_config).await;
    let device_gateway = common::cluster::device_instance(&bus_config).await;
    let publisher = common::cluster::bus_client(&bus_config).await;
    let http = common::cluster::http();
    let device_addr = device_gateway.addr;

    let mobile = common::cluster::signed_in(mobile_gateway.addr, "alice").await;
    let mut mobile = mobile;
    mobile.subbed("conversions", None).await;
    let (on_mobile, mobile_reader) = live_mobile(mobile, |e| {
        serde_json::to_value(&e.data).unwrap_or_default()["id"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    });
    let (on_device, device_reader) = live_device(
        common::cluster::device_api(&http, device_addr),
        common::cluster::DEVICE,
        common::cluster::DEVICE_KEY,
        commands,
    );
    let web_gateway = common::cluster::web_instance(&bus_config).await;
    let mut web = test_support::graphql_ws::Client::connect(
        &format!("ws://{}/v1/graphql", web_gateway.addr),
        Some(&common::cluster::token("alice")),
    )
    .await;
    web.subscribe(
        "s",
        "subscription { conversions { id } }",
        serde_json::json!({}),
    )
    .await;
    let (on_web, web_reader) = live_web(web, |data| {
        data["conversions"]["id"].as_str().map(str::to_owned)
    });

    // One round: a conversion for alice and a command to the device, each with id `id`;
    // whether each was published (false while the broker is down).
    let topic = switchyard_core::event::Topic::new(&demo_api::conversions_topic(
        &demo_api::UserId::parse("alice").expect("a user id"),
    ))
    .expect("a topic");
    let admin = common::cluster::device_api(&http, device_addr);
    // Conversions are published as a careful backend does: once per key (its id), so that a
    // retry of a publish whose outcome was unknown cannot duplicate it. `Some(duplicate)` when
    // published.
    let convert = async |id: &str| -> Option<bool> {
        let key = IdempotencyKey::new(id).expect("a valid key");
        let payload = common::cluster::conversion_payload("alice", id).into();
        match tokio::time::timeout(
            Duration::from_secs(5),
            publisher.publish_once(&topic, payload, &key),
        )
        .await
        {
            Ok(Ok(p)) => Some(p.duplicate),
            Ok(Err(e)) => {
                println!("{id}: publish failed: {e}");
                None
            }
            Err(_) => {
                println!("{id}: publish timed out");
                None
            }
        }
    };
    let publish = async |id: &str| -> (bool, bool) {
        let conversion = convert(id).await.is_some();
        let answer = admin
            .admin(
                reqwest::Method::POST,
                &format!("/admin/devices/{}/commands", common::cluster::DEVICE),
                serde_json::json!({"id": id, "op": "reboot", "args": {}}),
            )
            .await;
        let command = answer.status == 202;
        if !command {
            println!("{id}: command refused: {} {}", answer.status, answer.body);
        }
        (conversion, command)
    };
    let mut conversions = Vec::new();
    let mut commands = Vec::new();
    let round = async |id: String, conversions: &mut Vec<String>, commands: &mut Vec<String>| {
        let (c, d) = publish(&id).await;
        if c {
            conversions.push(id.clone());
        }
        if d {
            commands.push(id);
        }
    };
    // graphql-transport-ws has no "subscribed" answer: conversions until one reaches the web
    // client; it must get every one from there on.
    let end = Instant::now() + PATIENCE;
    let mut warm = 0;
    while snapshot(&on_web).delivered == 0 {
        assert!(Instant::now() < end, "the web subscription never started");
        let id = format!("warm-{warm}");
        warm += 1;
        common::cluster::publish_conversion(&publisher, "alice", &id).await;
        conversions.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let web_from = snapshot(&on_web)
        .keys
        .iter()
        .filter_map(|k| conversions.iter().position(|c| c == k))
        .min()
        .expect("a warm-up conversion");
    for i in 0..10 {
        round(format!("before-{i}"), &mut conversions, &mut commands).await;
    }
    assert_eq!((conversions.len(), commands.len()), (warm + 10, 10));
    let n = conversions.len() as u64;
    until(&on_mobile, PATIENCE, "mobile before", |t| t.delivered >= n).await;
    until(&on_web, PATIENCE, "web before", |t| t.has("before-9")).await;
    let c = commands.len() as u64;
    until(&on_device, PATIENCE, "device before", |t| t.delivered >= c).await;

    // Restart mid-stream: events published while it is down fail (within the operation
    // timeout); the restarted Redis or NATS has no history: a new epoch. The restarted RabbitMQ
    // node has its streams back from disk (and the bus its state store): the same epoch.
    broker.down().await;
    for i in 0..3 {
        let id = format!("down-{i}");
        let published = publish(&id).await;
        assert_eq!(
            published,
            (false, false),
            "{id}: published while the broker is down"
        );
    }
    let healed = std::time::Instant::now();
    broker.up().await;
    // Publish until the bus is back (a round at a time, each refused one left out), then ten
    // rounds in all that were published.
    let end = Instant::now() + PATIENCE;
    let mut round_id = 0;
    let mut refused_after = 0;
    let published_before = (conversions.len(), commands.len());
    while conversions.len() < published_before.0 + 10 || commands.len() < published_before.1 + 10 {
        let before = (conversions.len(), commands.len());
        round(format!("after-{round_id}"), &mut conversions, &mut commands).await;
        round_id += 1;
        if (conversions.len(), commands.len()) != (before.0 + 1, before.1 + 1) {
            refused_after += 1;
            assert!(Instant::now() < end, "the bus never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("{case}: {refused_after} rounds refused after the restart, before the bus was back");
    // The publisher retries the conversions refused during the outage, with the same keys: each
    // is published once — a retry answered "duplicate" found the first attempt had landed.
    let mut landed_before_retry = Vec::new();
    for i in 0..3 {
        let id = format!("down-{i}");
        let end = Instant::now() + PATIENCE;
        let duplicate = loop {
            if let Some(duplicate) = convert(&id).await {
                break duplicate;
            }
            assert!(Instant::now() < end, "{id}: the retry never went through");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if duplicate {
            landed_before_retry.push(id.clone());
        }
        conversions.push(id);
    }
    println!(
        "{case}: conversions reported failed during the outage that had landed anyway (their \
         retry was a duplicate): {landed_before_retry:?}"
    );
    if kind != BusKind::Nats {
        assert!(landed_before_retry.is_empty(), "{landed_before_retry:?}");
    }
    let last_conversion = conversions.last().expect("published").clone();
    let last_command = commands.last().expect("published").clone();
    until(&on_mobile, PATIENCE, "mobile after the restart", |t| {
        t.has(&last_conversion)
    })
    .await;
    until(&on_web, PATIENCE, "web after the restart", |t| {
        t.has(&last_conversion)
    })
    .await;
    until(&on_device, PATIENCE * 2, "device after the restart", |t| {
        t.has(&last_command)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let web_conversions = conversions[web_from..].to_vec();
    for (who, tally, published) in [
        ("mobile", &on_mobile, &conversions),
        ("web (graphql-ws)", &on_web, &web_conversions),
        ("device", &on_device, &commands),
    ] {
        let t = snapshot(tally);
        let recovered = t
            .first_arrival("after-")
            .expect("events after the restart")
            .duration_since(healed);
        // Nothing that was not published — except, on NATS, a publish the bus reported failed
        // (it timed out waiting for the ack) that the client had already buffered and sent
        // after it reconnected: its outcome was unknown, not a failure. Counted and reported.
        let landed_anyway: Vec<&String> =
            t.keys.iter().filter(|k| !published.contains(k)).collect();
        for key in &landed_anyway {
            assert!(
                kind == BusKind::Nats && (key.starts_with("down-") || key.starts_with("after-")),
                "{who}: {key} was never published: {t:?}"
            );
        }
        if !landed_anyway.is_empty() {
            println!(
                "{case}: {who}: reported failed to the publisher, delivered anyway: {landed_anyway:?}"
            );
        }
        assert_eq!(t.duplicates, 0, "{who}: {t:?}");
        assert_eq!(t.closed, None, "{who}: the socket stays open: {t:?}");
        let missing: Vec<&String> = published.iter().filter(|id| !t.has(id)).collect();
        // Every event, or an explicit gap or reset for those history lost.
        assert!(
            missing.is_empty() || t.gaps > 0,
            "{who}: lost without a signal: {missing:?} ({t:?})"
        );
        // What was published before the restart, after recovery, and retried, arrived (the
        // new epoch's history holds all of it).
        for id in published.iter().filter(|id| !id.starts_with("warm-")) {
            assert!(t.has(id), "{who}: {id} missing: {t:?}");
        }
        println!("{who}: missing {missing:?}, gaps {}", t.gaps);
        Figures {
            case,
            client: who,
            published: published.len() as u64,
            tally: &t,
            recovered: format!("{} ms", recovered.as_millis()),
        }
        .print();
    }
    mobile_reader.abort();
    device_reader.abort();
    web_reader.abort();
    web_gateway.stop().await;
    mobile_gateway.stop().await;
    device_gateway.stop().await;
}
