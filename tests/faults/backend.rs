//! Case a: bff-mobile's quote with the limits backend behind the fault proxy — slow beyond the
//! deadline, down, cut in the middle of its body, then answering garbage — while a mobile client
//! and a device keep receiving their streams.

use super::*;

/// Reads a whole HTTP/1.1 answer of `addr` to one GET: (its length, its body's length).
async fn answer_sizes(addr: SocketAddr) -> (usize, usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /v1/limits/bob HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.expect("read");
    let head = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    (all.len(), all.len() - head)
}

/// What `QuoteBackends`' limits service answers (bob has 990 left).
const LIMITS_BODY: &str = r#"{"user":"bob","daily_limit":"1000","used":"10","remaining":"990"}"#;

/// GET `/v1/quote` for bob, signed in: (status, body, time taken).
async fn quote(http: &reqwest::Client, base: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = http
        .get(format!(
            "{base}/v1/quote?user=bob&from=EUR&to=USD&amount=100"
        ))
        .bearer_auth(common::cluster::token("bob"))
        .timeout(PATIENCE)
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    let body = r.json().await.expect("JSON");
    (status, body, started.elapsed())
}

/// The documented partial answer (docs/protocol, `GET /v1/quote`): the rate and the converted
/// amount, no limit, and one `errors` entry naming the limits backend.
#[track_caller]
fn partial(what: &str, status: u16, body: &Value) -> String {
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(body["rate"], "1.5", "{what}: {body}");
    assert_eq!(body["converted"], "150.0", "{what}: {body}");
    assert_eq!(body["remaining_limit"], Value::Null, "{what}: {body}");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{what}: {body}");
    assert_eq!(errors[0]["backend"], "limits", "{what}: {body}");
    errors[0]["code"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test]
async fn a_backend_slow_down_cut_or_garbled_gives_the_partial_answer_in_time_then_recovers() {
    let backends = QuoteBackends::start().await;
    let configs: std::collections::BTreeMap<String, BackendConfig> =
        backends.configs(BackendConfig::new);
    let limits_addr: SocketAddr = configs["limits"]
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("the limits address");
    let mut proxy = FaultProxy::start(limits_addr).await;

    // bff-mobile on the in-memory bus, its limits backend behind the proxy.
    let bus_config = BusConfig::default();
    let mut config = common::cluster::mobile_config(&bus_config);
    config.backends = configs;
    config.backends.get_mut("limits").expect("limits").base_url =
        format!("http://{}", proxy.addr());
    let deadline = Duration::from_millis(config.operations.deadline_ms);
    let broker = Broker::connect(&bus_config);
    let bus = broker.bus();
    let on_bus = broker.clone();
    let gateway = common::Running::start("bff-mobile", move |l, t| {
        bff_mobile::run(config, on_bus, l, t)
    })
    .await;
    // bff-device on the same bus, its stream a device's commands.
    let device_config = common::cluster::device_config(&bus_config);
    let device_gateway = common::Running::start("bff-device", move |l, t| {
        bff_device::run(device_config, broker, l, t)
    })
    .await;
    let http = test_support::http::client();
    let base = gateway.url("");
    let base = base.as_str();

    // Live, throughout: a mobile client on bob's conversions (counted by offset) and a device
    // long-polling its commands (counted by command id).
    let mut mobile = MobileClient::connect_within(
        &gateway.ws_url("/v1/ws"),
        &[Encoding::Cbor.subprotocol()],
        PATIENCE,
    )
    .await;
    mobile.sign_in(common::cluster::token("bob"), "bob").await;
    let mut mobile = mobile.skipping_pings();
    mobile.subbed("conversions", None).await;
    let (seen, reader) = live_mobile(mobile, |e| e.offset.to_string());
    let devices = common::cluster::http();
    let (on_device, device_reader) = live_device(
        common::cluster::device_api(&devices, device_gateway.addr),
        common::cluster::DEVICE,
        common::cluster::DEVICE_KEY,
        commands,
    );
    let mut published = Vec::new();
    let mut sent = Vec::new();
    let mut publish = async |n: usize| {
        for _ in 0..n {
            let id = format!("c{}", published.len());
            let at = common::cluster::publish_conversion(&bus, "bob", &id).await;
            published.push(at.offset.to_string());
            common::cluster::send_command(&devices, device_gateway.addr, &id).await;
            sent.push(id);
        }
    };

    // Healthy: the whole answer.
    publish(5).await;
    let (status, body, _) = quote(&http, base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining_limit"], "990", "{body}");

    let mut rows = Vec::new();
    let limit = |d: Duration| d + Duration::from_secs(10);
    for what in [
        "slow (latency 20 s, deadline 1.5 s)",
        "down",
        "reset mid-body",
        "answering garbage",
    ] {
        match what {
            "down" => proxy.down().await,
            "reset mid-body" => {
                // noxious keeps a link's toxic state from when the link was made, so a
                // `limit_data` toxic counts only on links opened after it: close the open ones.
                proxy.down().await;
                proxy.up().await;
                let (all, body_len) = answer_sizes(limits_addr).await;
                let bytes = u64::try_from(all - body_len / 2).expect("small");
                proxy
                    .add(
                        "cut",
                        ToxicKind::LimitData { bytes },
                        StreamDirection::Downstream,
                    )
                    .await;
            }
            // The backend itself (not the proxy) answers 200 with a body that is no JSON.
            "answering garbage" => backends.limits.reply(Duration::ZERO, 200, "<html>oops{"),
            _ => {
                let latency = ToxicKind::Latency {
                    latency: 20_000,
                    jitter: 0,
                };
                proxy
                    .add("slow", latency, StreamDirection::Downstream)
                    .await;
            }
        }
        // Service continues: the partial answer, within the deadline (bounded generously).
        for _ in 0..3 {
            let (status, body, took) = quote(&http, base).await;
            let code = partial(what, status, &body);
            assert!(took < limit(deadline), "{what}: answered after {took:?}");
            println!("{what}: partial answer, limits error `{code}`, in {took:?}");
            publish(2).await;
        }
        // Heal, then recovery: the whole answer again (the circuit may hold it a while).
        let healed = Instant::now();
        match what {
            "down" => proxy.up().await,
            "answering garbage" => backends.limits.reply(Duration::ZERO, 200, LIMITS_BODY),
            _ => proxy.heal().await,
        }
        let recovered = loop {
            let (status, body, took) = quote(&http, base).await;
            assert!(took < limit(deadline), "{what}: answered after {took:?}");
            if body["remaining_limit"] == "990" {
                break healed.elapsed();
            }
            partial(what, status, &body);
            assert!(healed.elapsed() < PATIENCE, "{what}: no recovery: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("{what}: recovered {recovered:?} after the fault healed");
        rows.push((what, recovered));
    }

    // Every event, once, to each client.
    let n = published.len() as u64;
    until(
        &seen,
        PATIENCE,
        "every event reaches the mobile client",
        |t| t.delivered >= n,
    )
    .await;
    until(
        &on_device,
        PATIENCE,
        "every command reaches the device",
        |t| t.delivered >= n,
    )
    .await;
    // A little longer: a duplicate would come right behind.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (who, tally, keys) in [
        ("mobile (stream, throughout)", &seen, &published),
        ("device (commands, throughout)", &on_device, &sent),
    ] {
        let got = snapshot(tally);
        assert_eq!(got.duplicates, 0, "{who}: {got:?}");
        assert_eq!(got.gaps, 0, "{who}: {got:?}");
        assert_eq!(got.closed, None, "{who}: the socket stays open: {got:?}");
        for key in keys {
            assert!(got.has(key), "{who}: {key} missing: {got:?}");
        }
        assert_eq!(got.keys.len(), keys.len(), "{who}: nothing else: {got:?}");
        for (what, recovered) in &rows {
            Figures {
                case: &format!("a. backend {what}"),
                client: who,
                published: n,
                tally: &got,
                recovered: format!("{} ms", recovered.as_millis()),
            }
            .print();
        }
    }
    reader.abort();
    device_reader.abort();
    gateway.stop().await;
    device_gateway.stop().await;
}
