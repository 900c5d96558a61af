//! Case f: a gateway instance SIGKILLed behind nginx. nginx runs the real `deploy/nginx`
//! configuration (`common::nginx`) in front of two instances of each gateway, each a real
//! process of the gateway's own `main` (the `e2e-bff-*` binaries of this package are built from
//! the gateways' `src/main.rs`), started from a configuration file on a private `redis-server`.
//! Two mobile apps, two graphql-ws clients and two devices follow `announcements` through nginx
//! (least_conn puts one socket of each kind on each instance); then instance 1 of every gateway
//! is killed with SIGKILL (no drain, no close frame, no `bye`) while a publisher goes on. The
//! clients on the dead instances reconnect through nginx, land on the survivor, and resume after
//! their last position: every event, none twice.

use std::collections::HashMap;

use common::nginx::{Nginx, NginxDir, nginx_listens};
use test_support::process::Spawned;

use super::broker::PrivateBroker;
use super::resume::{self, Seen, offsets};
use super::*;

/// The public stream channel of the demo catalog (history 1,000 events).
const CHANNEL: &str = "announcements";

/// One gateway binary: its path (built with this package), environment prefix and name.
struct Binary {
    path: &'static str,
    prefix: &'static str,
    name: &'static str,
}

const WEB: Binary = Binary {
    path: env!("CARGO_BIN_EXE_e2e-bff-web"),
    prefix: bff_web::ENV_PREFIX,
    name: "bff-web",
};
const MOBILE: Binary = Binary {
    path: env!("CARGO_BIN_EXE_e2e-bff-mobile"),
    prefix: bff_mobile::ENV_PREFIX,
    name: "bff-mobile",
};
const DEVICE: Binary = Binary {
    path: env!("CARGO_BIN_EXE_e2e-bff-device"),
    prefix: bff_device::ENV_PREFIX,
    name: "bff-device",
};

/// Writes `config` as TOML in `dir` and starts two processes of `binary` from it.
fn two_instances(
    binary: &Binary,
    config: &impl serde::Serialize,
    dir: &std::path::Path,
) -> [Spawned; 2] {
    let path = dir.join(format!("{}.toml", binary.name));
    let text = toml::to_string(config).expect("the configuration as TOML");
    std::fs::write(&path, text).expect("write the configuration");
    [0, 1].map(|_| Spawned::start(binary.path, &path, binary.prefix, &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_instance_sigkilled_behind_nginx_its_clients_resume_on_the_other() {
    let broker = PrivateBroker::start(BusKind::Redis).await;
    let bus = broker.bus_config();
    let dir = std::env::temp_dir().join(test_support::unique_name("faults-killed"));
    std::fs::create_dir_all(&dir).expect("a scratch directory");

    let mut web = common::cluster::web_config(&bus);
    web.sources.clear();
    let mut mobile = common::cluster::mobile_config(&bus);
    mobile.sources.clear();
    let mut device = common::cluster::device_config(&bus);
    device
        .devices
        .get_mut(common::cluster::DEVICE)
        .expect("the test device")
        .channels = vec![CHANNEL.to_owned()];
    let mut webs = two_instances(&WEB, &web, &dir);
    let mut mobiles = two_instances(&MOBILE, &mobile, &dir);
    let mut devices = two_instances(&DEVICE, &device, &dir);

    let upstreams = HashMap::from([
        ("bff_web", webs.iter().map(|i| i.addr).collect()),
        ("bff_mobile", mobiles.iter().map(|i| i.addr).collect()),
        ("bff_device", devices.iter().map(|i| i.addr).collect()),
    ]);
    let listens = nginx_listens();
    let ports = [listens[&8080], listens[&8081], listens[&8082]];
    let mut nginx = Nginx::start(NginxDir::new(&upstreams, &listens));
    for port in ports {
        nginx.wait_ready(port).await;
    }
    let [web_port, mobile_port, device_port] = ports;

    let publisher = common::cluster::bus_client(&bus).await;
    let topic = switchyard_core::event::Topic::new(&format!("ch:{CHANNEL}")).expect("a topic");
    let mut k = 0u64;
    let mut publish = async || -> u64 {
        k += 1;
        let data = serde_json::json!({ "k": k }).to_string();
        tokio::time::timeout(
            PATIENCE,
            publisher.publish(&topic, data.into_bytes().into()),
        )
        .await
        .expect("published in time")
        .expect("published")
        .position()
        .offset
    };

    // Two of each client, one after the other so that least_conn gives each instance one.
    let mut readers = Vec::new();
    for n in 0..2 {
        let mobile = resume::mobile(
            move || format!("ws://127.0.0.1:{mobile_port}/v1/ws"),
            common::cluster::token("alice"),
            CHANNEL,
        );
        let web = resume::web(
            move || format!("ws://127.0.0.1:{web_port}/v1/graphql"),
            CHANNEL,
        );
        let device = resume::device(
            move || format!("http://127.0.0.1:{device_port}"),
            common::cluster::DEVICE,
            common::cluster::DEVICE_KEY,
            CHANNEL,
        );
        readers.push((format!("mobile {n}"), mobile));
        readers.push((format!("web (graphql-ws channel) {n}"), web));
        readers.push((format!("device {n}"), device));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen: Vec<(&str, &Seen)> = readers.iter().map(|(w, (s, _))| (w.as_str(), s)).collect();

    // Events until every reader has one (they subscribe live); each counts from its first.
    let end = Instant::now() + PATIENCE * 2;
    while seen.iter().any(|(_, s)| snapshot(&s.tally).delivered == 0) {
        assert!(Instant::now() < end, "a subscription never started");
        publish().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first: Vec<u64> = seen
        .iter()
        .map(|(_, s)| {
            let t = snapshot(&s.tally);
            t.keys
                .iter()
                .filter_map(|k| k.parse::<u64>().ok())
                .min()
                .expect("one event")
        })
        .collect();
    let connections_before: Vec<u64> = seen.iter().map(|(_, s)| s.connections()).collect();
    for _ in 0..40 {
        publish().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGKILL instance 1 of every gateway, in the middle of the stream.
    let killed = Instant::now();
    for instance in [&mut webs[0], &mut mobiles[0], &mut devices[0]] {
        let status = instance.stop_with("-KILL", PATIENCE);
        assert!(!status.success(), "killed: {status}");
    }
    let first_after = publish().await;
    let mut last = first_after;
    for _ in 0..100 {
        last = publish().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, s) in &seen {
        until(
            &s.tally,
            PATIENCE * 2,
            &format!("{who} after the kill"),
            |t| t.has(&last.to_string()),
        )
        .await;
    }
    // A little longer: a duplicate would come right behind.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut moved = [0, 0];
    for (((who, s), from), before) in seen.iter().zip(&first).zip(&connections_before) {
        let t = snapshot(&s.tally);
        assert_eq!(t.duplicates, 0, "{who}: {t:?}");
        let expected = offsets(*from, last);
        let missing: Vec<&String> = expected.iter().filter(|o| !t.has(o)).collect();
        // History holds every event of the case: each arrives (a gap would be a loss here).
        assert!(missing.is_empty(), "{who}: missing {missing:?}");
        assert_eq!(t.gaps, 0, "{who}: {t:?}");
        let reconnected = s.connections() > *before && !who.starts_with("device");
        if reconnected {
            moved[usize::from(who.starts_with("web"))] += 1;
        }
        let recovered = t.arrived[&first_after.to_string()].duration_since(killed);
        Figures {
            case: "f. gateway instances SIGKILLed behind nginx (2 of each)",
            client: &format!(
                "{who}{}",
                if reconnected {
                    ", on a killed instance"
                } else {
                    ""
                }
            ),
            published: last - from + 1,
            tally: &t,
            recovered: format!("{} ms", recovered.as_millis()),
        }
        .print();
        println!(
            "{who}: connections {}, closes {:?}",
            s.connections(),
            s.closes()
        );
    }
    // One socket of each kind was on the killed instance, and moved.
    assert_eq!(moved, [1, 1], "mobile and web sockets that reconnected");
    for (_, (_, task)) in readers {
        task.abort();
    }
    drop(nginx);
    drop(webs);
    drop(mobiles);
    drop(devices);
    let _ = std::fs::remove_dir_all(&dir);
    drop(broker);
}
