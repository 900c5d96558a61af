//! What two instances of bff-device on one broker share (the real Redis, NATS and RabbitMQ —
//! with its Redis state store — of this machine, a fresh prefix per test): credentials issued by the admin API (known by every
//! instance at once, and after a restart) and the per-IP request budget. Also the command-result
//! check (a result names a command sent to that device) and the in-memory limiter.

mod common;

use std::time::Duration;

use common::{ADMIN, Gateway, TV1_KEY, TV2_KEY, answer, config, start_on};
use serde_json::json;
use switchyard_core::bus::{BusConfig, BusKind};
use switchyard_server::server::CancellationToken;

fn bus_config(kind: BusKind) -> BusConfig {
    BusConfig {
        prefix: test_support::unique_name("t-dev"),
        ..BusConfig::of(kind)
    }
}

/// An instance of the gateway on `bus`, served like production (`server::serve`, which
/// records each peer's address).
struct Instance {
    url: String,
    stop: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn instance(mut c: bff_device::Config, bus: &BusConfig) -> Instance {
    c.bus = bus.clone();
    // Each instance its own broker (its own connections), as two processes would have.
    let broker = switchyard_core::bus::Broker::connect(bus);
    let stop = CancellationToken::new();
    let app = bff_device::app(&c, &broker, stop.clone()).expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = stop.clone();
    tokio::spawn(async move {
        switchyard_server::server::serve(listener, app.router, s, Duration::from_secs(1)).await
    });
    Instance {
        url,
        stop,
        http: reqwest::Client::builder()
            .timeout(common::HANG)
            .build()
            .unwrap(),
    }
}

impl Instance {
    async fn issue(&self, id: &str) -> String {
        let res = self
            .http
            .post(format!("{}/admin/devices", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({"id": id, "settings": {"mode": "kiosk"}}))
            .send()
            .await
            .unwrap();
        let a = answer(res).await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["key"].as_str().unwrap().to_owned()
    }

    async fn config_of(&self, id: &str, key: &str) -> common::Answer {
        let res = self
            .http
            .get(format!("{}/v1/devices/{id}/config", self.url))
            .header("x-device-key", key)
            .send()
            .await
            .unwrap();
        answer(res).await
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }
}

async fn issued_keys_are_shared_and_survive_a_restart(kind: BusKind) {
    let bus = bus_config(kind);
    let a = instance(config(), &bus).await;
    let b = instance(config(), &bus).await;
    let key = a.issue("kiosk-9").await;
    // No wait: B has never seen the device, and must look it up at once.
    let on_b = b.config_of("kiosk-9", &key).await;
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    assert_eq!(on_b.json(), json!({"mode": "kiosk"}));
    // A wrong key for it is still refused on B, and the key is still only kiosk-9's.
    let wrong = b.config_of("kiosk-9", "not-the-key-0123456789").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(b.config_of("tv-1", &key).await.status, 403);
    // B cannot issue the same id again.
    let again = b
        .http
        .post(format!("{}/admin/devices", b.url))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "kiosk-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // A restart: every instance gone, a new one on the same broker.
    drop(a);
    drop(b);
    let c = instance(config(), &bus).await;
    let after = c.config_of("kiosk-9", &key).await;
    assert_eq!(after.status, 200, "{}", after.body);
    cleanup(kind, &bus).await;
}

async fn cleanup(kind: BusKind, bus: &BusConfig) {
    match kind {
        BusKind::Redis => {
            let _ = switchyard_core::bus::redis::RedisBus::new(bus)
                .delete_all()
                .await;
        }
        BusKind::Nats => {
            let _ = switchyard_core::bus::nats::NatsBus::new(bus)
                .delete_all()
                .await;
        }
        // The state store's keys; the streams are the gateways' (a RabbitMQ instance deletes
        // only the streams it used itself, and the protocol cannot list them).
        BusKind::Rabbitmq => {
            let _ = switchyard_core::bus::rabbitmq::RabbitBus::new(bus)
                .delete_all()
                .await;
        }
        BusKind::Memory => {}
    }
}

#[tokio::test]
async fn a_key_issued_on_one_instance_works_on_another_and_after_a_restart_redis() {
    issued_keys_are_shared_and_survive_a_restart(BusKind::Redis).await;
}

#[tokio::test]
async fn a_key_issued_on_one_instance_works_on_another_and_after_a_restart_nats() {
    issued_keys_are_shared_and_survive_a_restart(BusKind::Nats).await;
}

#[tokio::test]
async fn a_key_issued_on_one_instance_works_on_another_and_after_a_restart_rabbitmq() {
    issued_keys_are_shared_and_survive_a_restart(BusKind::Rabbitmq).await;
}

async fn the_request_budget_per_ip_is_shared(kind: BusKind) {
    let bus = bus_config(kind);
    let mut c = config();
    c.rate_limits.requests_per_s_per_ip = 10;
    c.rate_limits.requests_burst_per_ip = 10;
    let a = instance(c.clone(), &bus).await;
    let b = instance(c, &bus).await;
    // Ten requests alternated between the instances pass; the eleventh is refused, wherever
    // it goes (the budget refills at 10/s, so a slow machine may let one more through).
    let mut statuses = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        let res = if n % 2 == 0 { &a } else { &b }.get("/healthz").await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            refused = Some(res);
            break;
        }
    }
    assert!(
        statuses.len() >= 11 && statuses.len() <= 13,
        "refused after {statuses:?}"
    );
    let res = refused.expect("refused");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retry_after_s"], 1);
    // Both instances refuse now: the budget is one.
    let other = if statuses.len() % 2 == 0 { &a } else { &b };
    assert_eq!(other.get("/healthz").await.status(), 429);
    cleanup(kind, &bus).await;
}

#[tokio::test]
async fn two_instances_share_one_request_budget_per_ip_redis() {
    the_request_budget_per_ip_is_shared(BusKind::Redis).await;
}

#[tokio::test]
async fn two_instances_share_one_request_budget_per_ip_nats() {
    the_request_budget_per_ip_is_shared(BusKind::Nats).await;
}

#[tokio::test]
async fn two_instances_share_one_request_budget_per_ip_rabbitmq() {
    the_request_budget_per_ip_is_shared(BusKind::Rabbitmq).await;
}

#[tokio::test]
async fn the_memory_limiter_counts_per_instance_and_per_device() {
    let bus = BusConfig::of(BusKind::Memory);
    let mut c = config();
    c.rate_limits.requests_per_s_per_ip = 5;
    c.rate_limits.requests_burst_per_ip = 5;
    let a = instance(c.clone(), &bus).await;
    let b = instance(c.clone(), &bus).await;
    for _ in 0..5 {
        assert_eq!(a.get("/healthz").await.status(), 200);
    }
    let refused = a.get("/healthz").await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // In memory, the other instance has its own budget.
    assert_eq!(b.get("/healthz").await.status(), 200);

    // Per device: a device over its own rate is refused, another device is not.
    let mut c = config();
    c.rate_limits.requests_per_s_per_user = 3;
    c.rate_limits.requests_burst_per_user = 3;
    let d = instance(c, &bus).await;
    for _ in 0..3 {
        assert_eq!(d.config_of("tv-1", TV1_KEY).await.status, 200);
    }
    let over = d.config_of("tv-1", TV1_KEY).await;
    assert_eq!((over.status, over.code()), (429, "rate_limited".to_owned()));
    assert_eq!(d.config_of("tv-2", TV2_KEY).await.status, 200);
    // A wrong key never draws on the device's budget (keys are authenticated devices only).
    assert_eq!(
        d.config_of("tv-2", "wrong-key-0123456789").await.status,
        401
    );
}

async fn result(gw: &Gateway, device: &str, key: &str, cmd: &str) -> common::Answer {
    gw.post(
        &format!("/v1/devices/{device}/commands/{cmd}/result"),
        key,
        r#"{"s":"ok"}"#,
    )
    .await
}

#[tokio::test]
async fn a_result_must_name_a_command_sent_to_that_device() {
    let gw = start_on(config(), &switchyard_core::bus::Broker::memory(100)).await;
    gw.command("tv-1", "cmd-a", "reboot").await;
    gw.command("tv-2", "cmd-b", "reboot").await;
    assert_eq!(result(&gw, "tv-1", TV1_KEY, "cmd-a").await.status, 202);
    let unknown = result(&gw, "tv-1", TV1_KEY, "cmd-never").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "unknown_command".to_owned()),
        "{}",
        unknown.body
    );
    // Another device's command is unknown to this one.
    let foreign = result(&gw, "tv-1", TV1_KEY, "cmd-b").await;
    assert_eq!(
        (foreign.status, foreign.code()),
        (404, "unknown_command".to_owned())
    );
    // Nothing was published for the refused ones.
    let topic = switchyard_core::event::Topic::new("devices.tv-1.results").unwrap();
    assert_eq!(gw.bus.head(&topic).await.unwrap().offset, 1);
}
