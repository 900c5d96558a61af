//! Case b: the rooms service (`tests/js/rooms-server.mjs`) as a `json-ws` source behind the fault
//! proxy, dropped mid-stream, then half-open, with a mobile, a graphql-ws and a device client
//! counting by the upstream's seq.

use super::*;

/// The rooms service (`tests/js/rooms-server.mjs`), driven by commands on its stdin.
struct Rooms {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    /// The lobby's next seq (the service numbers every message it says, from 0).
    next: u64,
}

impl Rooms {
    async fn start() -> Self {
        assert!(
            js("node_modules/ws/package.json").is_file(),
            "the npm package ws is missing: run `npm ci --prefix tests/js`"
        );
        let mut child = Command::new("node")
            .arg(js("rooms-server.mjs"))
            .current_dir(js(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = Self::line(&mut lines).await;
        let port = first["port"].as_u64().expect("the service's port");
        Self {
            _child: child,
            stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).expect("a port"))),
            next: 0,
        }
    }

    async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the service answers in time")
            .expect("the service's stdout")
            .expect("the service runs");
        serde_json::from_str(&line).expect("JSON")
    }

    async fn command(&mut self, line: &str) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("stdin");
        Self::line(&mut self.lines).await
    }

    /// Sends `n` messages to the lobby, which must have a follower (the source's connection,
    /// however alive): their seqs, as the clients' keys.
    async fn say(&mut self, n: u64) -> Vec<String> {
        let answer = self.command(&format!("say lobby {n}")).await;
        assert!(
            answer["to"].as_u64().unwrap_or(0) > 0,
            "no follower: {answer}"
        );
        let seqs = (self.next..self.next + n).map(|s| s.to_string()).collect();
        self.next += n;
        seqs
    }

    /// (connections open, follows of the lobby made so far).
    async fn stats(&mut self) -> (u64, u64) {
        let s = self.command("stats").await;
        (
            s["connections"].as_u64().unwrap_or(0),
            s["follows"]["lobby"].as_u64().unwrap_or(0),
        )
    }

    /// Waits until the lobby has been followed `follows` times in all, with one connection.
    async fn followed(&mut self, follows: u64) {
        let end = Instant::now() + PATIENCE;
        loop {
            let now = self.stats().await;
            if now == (1, follows) {
                return;
            }
            assert!(Instant::now() < end, "follow {follows} never came: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The rooms source of docs/sources.md, through `addr`, with a keep-alive every `keepalive_ms`.
fn rooms_config(addr: SocketAddr, keepalive_ms: u64) -> String {
    format!(
        r#"
[[channels.catalog]]
pattern = "rooms.{{room}}"
class = "stream"
history_events = 1000
max_payload_bytes = 4096
subscribe = {{ rule = "public" }}

[sources.rooms]
kind = "json-ws"
url = "ws://{addr}/"
channels = "rooms.{{room}}"
headers = {{ authorization = "Bearer rooms-secret" }}
subscribe = '{{"action":"follow","room":"{{room}}"}}'
unsubscribe = '{{"action":"unfollow","room":"{{room}}"}}'
keepalive_ms = {keepalive_ms}
reconnect_initial_ms = 100
reconnect_max_ms = 1000
connect_timeout_ms = 2000

[[sources.rooms.messages]]
when = {{ "/type" = "message" }}
capture = {{ "/room" = "{{room}}" }}
fields = {{ seq = "/seq", text = "/text" }}

[[sources.rooms.messages]]
when = {{ "/type" = "following" }}
ignore = true
"#
    )
}

#[derive(serde::Deserialize)]
struct SourcesDoc {
    channels: switchyard_core::channels::ChannelsConfig,
    sources: std::collections::BTreeMap<String, switchyard_core::sources::SourceConfig>,
}

#[tokio::test]
async fn a_json_ws_source_dropped_or_half_open_is_detected_reconnected_and_flows_again() {
    const CHANNEL: &str = "rooms.lobby";
    let keepalive = Duration::from_millis(300);
    let mut rooms = Rooms::start().await;
    let mut proxy = FaultProxy::start(rooms.addr).await;
    let doc: SourcesDoc = toml::from_str(&rooms_config(
        proxy.addr(),
        u64::try_from(keepalive.as_millis()).expect("small"),
    ))
    .expect("the configuration reads");
    let mut config = switchyard::Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    config.channels.catalog.extend(doc.channels.catalog);
    config.sources.extend(doc.sources);
    config
        .device
        .devices
        .get_mut(switchyard::DEMO_DEVICE)
        .expect("the demo device")
        .channels = vec![CHANNEL.to_owned()];
    let stack = switchyard::Stack::start(config)
        .await
        .expect("stack starts");

    // Live: a mobile client, a graphql-ws client and a device, each counting by the
    // upstream's seq.
    let mut mobile = MobileClient::connect_within(
        &format!("ws://{}/v1/ws", stack.addr("bff-mobile")),
        &[Encoding::Cbor.subprotocol()],
        PATIENCE,
    )
    .await;
    mobile
        .sign_in(common::launcher::token("alice"), "alice")
        .await;
    let mut mobile = mobile.skipping_pings();
    mobile.subbed(CHANNEL, None).await;
    rooms.followed(1).await;
    let (on_mobile, mobile_reader) = live_mobile(mobile, |e| {
        serde_json::to_value(&e.data).unwrap_or_default()["seq"].to_string()
    });
    let devices = DeviceApi::new(stack.url("bff-device"), "", PATIENCE);
    let (on_device, device_reader) = live_device(
        devices,
        switchyard::DEMO_DEVICE,
        switchyard::DEMO_DEVICE_KEY,
        |body| {
            channel_items(body, CHANNEL)
                .into_iter()
                .map(|i| {
                    if i.get("gap").is_some() {
                        Item::Gap
                    } else {
                        Item::Event(i["data"]["seq"].to_string())
                    }
                })
                .collect()
        },
    );
    let mut web = test_support::graphql_ws::Client::connect(
        &format!("ws://{}/v1/graphql", stack.addr("bff-web")),
        None,
    )
    .await;
    web.subscribe(
        "s",
        &format!("subscription {{ channel(name: \"{CHANNEL}\") {{ epoch offset data }} }}"),
        serde_json::json!({}),
    )
    .await;
    let (on_web, web_reader) = live_web(web, |data| {
        Some(data["channel"]["data"]["seq"].to_string()).filter(|s| s != "null")
    });

    // The seqs the upstream sent on a live link (every client must get them; the web client
    // from the first it got) and those it sent into the half-open one.
    let mut good: Vec<String> = Vec::new();
    // graphql-transport-ws has no "subscribed" answer: messages until one reaches the web client.
    let end = Instant::now() + PATIENCE;
    while snapshot(&on_web).delivered == 0 {
        assert!(Instant::now() < end, "the web subscription never started");
        good.extend(rooms.say(1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let web_from = snapshot(&on_web)
        .keys
        .iter()
        .filter_map(|k| good.iter().position(|g| g == k))
        .min()
        .expect("a warm-up message");
    let clients = [
        ("mobile", &on_mobile, 0),
        ("web (graphql-ws)", &on_web, web_from),
        ("device", &on_device, 0),
    ];
    let delivered_to_all = async |good: &[String], what: &str| {
        for (who, tally, from) in &clients {
            until(tally, PATIENCE, &format!("{what}: {who}"), |t| {
                good[*from..].iter().all(|k| t.has(k))
            })
            .await;
        }
    };
    good.extend(rooms.say(5).await);
    delivered_to_all(&good, "before any fault").await;

    // Dropped mid-stream: the proxy goes down (every link closed, connections refused), then
    // comes back; the source reconnects and follows again, by itself.
    proxy.down().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healed = Instant::now();
    proxy.up().await;
    rooms.followed(2).await;
    let resubscribed = healed.elapsed();
    good.extend(rooms.say(5).await);
    delivered_to_all(&good, "after the drop").await;
    let dropped_recovery = healed.elapsed();
    println!("dropped: followed again {resubscribed:?} after the proxy came back");

    // Half-open: the link stays open but every byte is silently dropped, both ways (noxious
    // `timeout` 0: no FIN, no RST). The source's keep-alive must notice within a bound.
    let before = proxy.links();
    assert_eq!(before.len(), 1, "{before:?}");
    let fault = Instant::now();
    proxy
        .add(
            "stall-down",
            ToxicKind::Timeout { timeout: 0 },
            StreamDirection::Downstream,
        )
        .await;
    proxy
        .add(
            "stall-up",
            ToxicKind::Timeout { timeout: 0 },
            StreamDirection::Upstream,
        )
        .await;
    // The upstream sends into the dead link: these cannot arrive (json-ws has no upstream
    // resume), which the figures report apart.
    let dead = rooms.say(3).await;
    let detected = loop {
        let now = proxy.links();
        if now.iter().any(|l| !before.contains(l)) || now.is_empty() {
            break fault.elapsed();
        }
        assert!(
            fault.elapsed() < PATIENCE,
            "half-open never detected: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "half-open: detected (the old link closed or a new one opened) {detected:?} after the \
         stall began (keepalive_ms {})",
        keepalive.as_millis()
    );
    let healed = Instant::now();
    proxy.heal().await;
    rooms.followed(3).await;
    good.extend(rooms.say(5).await);
    delivered_to_all(&good, "after the half-open link").await;
    let half_open_recovery = healed.elapsed();
    // A little longer: a duplicate would come right behind.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (who, tally, from) in &clients {
        let t = snapshot(tally);
        assert_eq!(t.duplicates, 0, "{who}: {t:?}");
        assert_eq!(t.closed, None, "{who}: the subscription stays open: {t:?}");
        assert_eq!(t.gaps, 0, "{who}: {t:?}");
        // Every event the source received reached the client, and nothing else: what went into
        // the dead link upstream of the gateway never entered it.
        let expected: std::collections::BTreeSet<String> = good[*from..].iter().cloned().collect();
        assert_eq!(t.keys, expected, "{who}: lost {dead:?} only");
        Figures {
            case: "b. json-ws source dropped, then half-open",
            client: who,
            published: (good.len() - from + dead.len()) as u64,
            tally: &t,
            recovered: format!(
                "dropped: {} ms; half-open: detected in {} ms, then {} ms",
                dropped_recovery.as_millis(),
                detected.as_millis(),
                half_open_recovery.as_millis()
            ),
        }
        .print();
    }
    println!(
        "half-open: {} events the upstream sent into the dead link were lost upstream of the \
         gateway (detected {detected:?} after the stall)",
        dead.len()
    );
    assert!(
        detected < keepalive * 3 + Duration::from_secs(10),
        "half-open detected only after {detected:?}"
    );
    mobile_reader.abort();
    device_reader.abort();
    web_reader.abort();
    stack.stop().await.expect("the stack stops");
}
