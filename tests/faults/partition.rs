//! Case d: a private Redis or NATS partitioned from one gateway instance for 10 s. Two instances
//! (A and B) of bff-mobile, bff-web and bff-device share the broker; B reaches it through the
//! fault proxy. The partition is a black hole both ways (noxious `timeout` 0: every byte
//! dropped, no FIN) on B's links, old and new, for 10 s; it heals by resetting the links that
//! lived through it (a TCP connection whose bytes were dropped cannot go on: noxious cannot hold
//! bytes back and deliver them later, as TCP retransmission would) and letting new ones pass.
//! A publisher on the broker's side keeps publishing throughout: clients on A never notice;
//! clients on B get every event once the partition heals (from the shared history).

use super::broker::PrivateBroker;
use super::*;

/// How long B is cut off from the broker.
const PARTITION: Duration = Duration::from_secs(10);

/// One instance's three live clients, and where the web client's count starts.
struct Side {
    name: &'static str,
    mobile: Shared,
    web: Shared,
    device: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    gateways: Vec<common::Running>,
}

impl Side {
    /// bff-mobile, bff-web and bff-device on the bus of `bus`, each with a live client.
    async fn start(name: &'static str, bus: &BusConfig, http: &reqwest::Client) -> Self {
        let mobile_gateway = common::cluster::mobile_instance(bus).await;
        let web_gateway = common::cluster::web_instance(bus).await;
        let device_gateway = common::cluster::device_instance(bus).await;
        let mut mobile = common::cluster::signed_in(mobile_gateway.addr, "alice").await;
        mobile.subbed("conversions", None).await;
        let (mobile, m) = live_mobile(mobile, |e| {
            serde_json::to_value(&e.data).unwrap_or_default()["id"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        });
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
        let (web, w) = live_web(web, |data| {
            data["conversions"]["id"].as_str().map(str::to_owned)
        });
        let (device, d) = live_device(
            common::cluster::device_api(http, device_gateway.addr),
            common::cluster::DEVICE,
            common::cluster::DEVICE_KEY,
            commands,
        );
        Self {
            name,
            mobile,
            web,
            device,
            tasks: vec![m, w, d],
            gateways: vec![mobile_gateway, web_gateway, device_gateway],
        }
    }

    async fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
        for gateway in self.gateways {
            gateway.stop().await;
        }
    }
}

#[tokio::test]
async fn a_private_redis_partitioned_from_one_instance_for_10_s_loses_nothing() {
    partitioned(
        BusKind::Redis,
        "d. private Redis partitioned from instance B for 10 s",
    )
    .await;
}

#[tokio::test]
async fn a_private_nats_partitioned_from_one_instance_for_10_s_loses_nothing() {
    partitioned(
        BusKind::Nats,
        "d. private NATS partitioned from instance B for 10 s",
    )
    .await;
}

/// Case d on a broker of `kind`.
async fn partitioned(kind: BusKind, case: &str) {
    let broker = PrivateBroker::start(kind).await;
    let proxy_target = SocketAddr::from(([127, 0, 0, 1], broker.port));
    let mut proxy = FaultProxy::start(proxy_target).await;
    let bus_a = broker.bus_config();
    let mut bus_b = bus_a.clone();
    bus_b.url = bus_a
        .url
        .replace(&broker.port.to_string(), &proxy.addr().port().to_string());
    let publisher = common::cluster::bus_client(&bus_a).await;
    let http = common::cluster::http();
    let a = Side::start("A", &bus_a, &http).await;
    let b = Side::start("B (partitioned)", &bus_b, &http).await;

    let mut conversions: Vec<String> = Vec::new();
    let mut commands: Vec<String> = Vec::new();
    // One round: a conversion for alice (published on the broker's side) and a command to the
    // device (through A's admin API), each with id `id`.
    let round = async |id: String, conversions: &mut Vec<String>, commands: &mut Vec<String>| {
        common::cluster::publish_conversion(&publisher, "alice", &id).await;
        conversions.push(id.clone());
        common::cluster::send_command(&http, a.gateways[2].addr, &id).await;
        commands.push(id);
    };
    // graphql-transport-ws has no "subscribed" answer: conversions until one reaches both web
    // clients; each must get every one from its first on.
    let end = Instant::now() + PATIENCE;
    let mut warm = 0;
    while snapshot(&a.web).delivered == 0 || snapshot(&b.web).delivered == 0 {
        assert!(Instant::now() < end, "the web subscriptions never started");
        let id = format!("warm-{warm}");
        warm += 1;
        common::cluster::publish_conversion(&publisher, "alice", &id).await;
        conversions.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let web_from = |t: &Shared| {
        snapshot(t)
            .keys
            .iter()
            .filter_map(|k| conversions.iter().position(|c| c == k))
            .min()
            .expect("a warm-up conversion")
    };
    let from = [web_from(&a.web), web_from(&b.web)];
    for i in 0..10 {
        round(format!("before-{i}"), &mut conversions, &mut commands).await;
    }
    for side in [&a, &b] {
        for (who, tally) in [("mobile", &side.mobile), ("web", &side.web)] {
            until(
                tally,
                PATIENCE,
                &format!("{} {who} before", side.name),
                |t| t.has("before-9"),
            )
            .await;
        }
        until(&side.device, PATIENCE, "device before", |t| {
            t.has("before-9")
        })
        .await;
    }

    // The partition: every byte between B and the broker dropped, both ways, for 10 s, while
    // rounds go on every 200 ms on A's side.
    for (name, direction) in [
        ("partition-down", StreamDirection::Downstream),
        ("partition-up", StreamDirection::Upstream),
    ] {
        proxy
            .add(name, ToxicKind::Timeout { timeout: 0 }, direction)
            .await;
    }
    let cut = Instant::now();
    let mut during = 0;
    while cut.elapsed() < PARTITION {
        round(format!("during-{during}"), &mut conversions, &mut commands).await;
        during += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last_during = format!("during-{}", during - 1);
    // A's clients were served throughout.
    for (who, tally) in [
        ("mobile", &a.mobile),
        ("web", &a.web),
        ("device", &a.device),
    ] {
        until(
            tally,
            PATIENCE,
            &format!("A {who} during the partition"),
            |t| t.has(&last_during),
        )
        .await;
    }
    let b_during = [&b.mobile, &b.web, &b.device].map(|t| {
        let t = snapshot(t);
        t.keys.iter().filter(|k| k.starts_with("during-")).count()
    });
    println!("{case}: B's clients got {b_during:?} of {during} events during the partition");

    // Heal: the links that lived through the partition are reset, new ones pass.
    proxy.heal().await;
    proxy.down().await;
    proxy.up().await;
    let healed = Instant::now();
    for i in 0..10 {
        round(format!("after-{i}"), &mut conversions, &mut commands).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for side in [&a, &b] {
        for (who, tally) in [
            ("mobile", &side.mobile),
            ("web", &side.web),
            ("device", &side.device),
        ] {
            until(
                tally,
                PATIENCE * 2,
                &format!("{} {who} after", side.name),
                |t| t.has("after-9"),
            )
            .await;
        }
    }
    // A little longer: a duplicate would come right behind.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (side, web_from) in [(&a, from[0]), (&b, from[1])] {
        let web_conversions = conversions[web_from..].to_vec();
        for (who, tally, published) in [
            ("mobile", &side.mobile, &conversions),
            ("web (graphql-ws)", &side.web, &web_conversions),
            ("device", &side.device, &commands),
        ] {
            let t = snapshot(tally);
            assert_eq!(t.duplicates, 0, "{} {who}: {t:?}", side.name);
            assert_eq!(t.closed, None, "{} {who}: stays open: {t:?}", side.name);
            let missing: Vec<&String> = published.iter().filter(|id| !t.has(id)).collect();
            // History holds every event of the case: each arrives, none is a gap.
            assert!(
                missing.is_empty(),
                "{} {who}: missing {missing:?}",
                side.name
            );
            let unknown: Vec<&String> = t.keys.iter().filter(|k| !published.contains(k)).collect();
            assert!(
                unknown.is_empty(),
                "{} {who}: never published {unknown:?}",
                side.name
            );
            // Caught up: from the heal until the last event of the partition arrived (A's
            // clients had it before the heal).
            let caught_up = t.arrived[&last_during]
                .checked_duration_since(healed)
                .map_or_else(
                    || "not cut off".to_owned(),
                    |d| format!("{} ms", d.as_millis()),
                );
            Figures {
                case,
                client: &format!("{} on instance {}", who, side.name),
                published: published.len() as u64,
                tally: &t,
                recovered: caught_up,
            }
            .print();
        }
    }
    a.stop().await;
    b.stop().await;
    drop(proxy);
    drop(broker);
}
