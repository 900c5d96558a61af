//! The device API's other endpoints over real sockets: credentials (401 and 403 on every
//! endpoint), malformed input (400 with a code), the command round trip through the admin API
//! and the bus, telemetry accepted and published, gzip, ETag and If-None-Match, and the admin API.

mod common;

use common::{TV1_KEY, TV2_KEY, answer, config, of_kind, start};
use serde_json::json;
use switchyard_core::bus::{Bus, Read};
use switchyard_core::event::{Position, Topic};

const ENDPOINTS: [(&str, &str); 4] = [
    ("GET", "/v1/devices/tv-1/events"),
    ("GET", "/v1/devices/tv-1/config"),
    ("POST", "/v1/devices/tv-1/commands/cmd-1/result"),
    ("POST", "/v1/devices/tv-1/telemetry"),
];

async fn read_all(bus: &dyn Bus, topic: &str) -> Vec<serde_json::Value> {
    let topic = Topic::new(topic).unwrap();
    let epoch = bus.head(&topic).await.unwrap().epoch;
    match bus
        .read(&topic, Position { epoch, offset: 0 }, 100)
        .await
        .unwrap()
    {
        Read::Events { events, .. } => events
            .iter()
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect(),
        Read::Gap { .. } => panic!("history covers a new topic"),
    }
}

#[tokio::test]
async fn a_missing_unknown_or_foreign_credential_is_refused_everywhere() {
    let gw = start(config(), 100).await;
    for version in ["v1", "v2"] {
        for (method, path) in ENDPOINTS {
            let path = path.replacen("v1", version, 1);
            for (key, status, code) in [
                (None, 401, "unauthorized"),
                (Some("not-a-key-of-anyone-at-all"), 401, "unauthorized"),
                (Some(TV2_KEY), 403, "forbidden"),
            ] {
                let mut req = gw
                    .http
                    .request(method.parse().unwrap(), gw.url(&path))
                    .body(r#"{"s":"ok"}"#);
                if let Some(k) = key {
                    req = req.header("x-device-key", k);
                }
                let a = answer(req.send().await.unwrap()).await;
                assert_eq!(
                    (a.status, a.code()),
                    (status, code.to_owned()),
                    "{method} {path}"
                );
            }
        }
    }
    // tv-2's key reaches tv-2's data, and nobody else's.
    assert_eq!(gw.poll("tv-2", TV2_KEY, None, 0).await.status, 200);
    assert_eq!(gw.poll("tv-3", TV2_KEY, None, 0).await.status, 403);
}

#[tokio::test]
async fn malformed_input_is_a_400_with_a_code() {
    let gw = start(config(), 100).await;
    let first = gw.poll("tv-1", TV1_KEY, None, 0).await.json();
    let cursor = first["n"].as_str().unwrap();
    let tv2_cursor = gw.poll("tv-2", TV2_KEY, None, 0).await.json()["n"]
        .as_str()
        .unwrap()
        .to_owned();
    for bad in [
        "",
        "%%%",
        "AAAA",
        &format!("{cursor}x"),
        &cursor[2..],
        &tv2_cursor,
    ] {
        let res = gw
            .http
            .get(gw.url("/v1/devices/tv-1/events"))
            .header("x-device-key", TV1_KEY)
            .query(&[("cursor", bad)])
            .send()
            .await
            .unwrap();
        let a = answer(res).await;
        assert_eq!(
            (a.status, a.code()),
            (400, "bad_cursor".to_owned()),
            "{bad}"
        );
    }
    for bad in ["-1", "1.5", "soon", "", "99999999999"] {
        let res = gw
            .http
            .get(gw.url("/v1/devices/tv-1/events"))
            .header("x-device-key", TV1_KEY)
            .query(&[("wait", bad)])
            .send()
            .await
            .unwrap();
        let a = answer(res).await;
        assert_eq!((a.status, a.code()), (400, "bad_wait".to_owned()), "{bad}");
    }
    let telemetry = "/v1/devices/tv-1/telemetry";
    for (body, code) in [
        ("not json", "invalid_request"),
        ("{}", "invalid_request"),
        (r#"{"p":[{"k":"t","v":"warm"}]}"#, "invalid_request"),
        (r#"{"p":[{"k":"t","v":1}],"x":1}"#, "invalid_request"),
        (r#"{"p":[]}"#, "invalid_telemetry"),
        (r#"{"p":[{"k":"Bad Name","v":1}]}"#, "invalid_telemetry"),
    ] {
        let a = gw.post(telemetry, TV1_KEY, body).await;
        assert_eq!((a.status, a.code()), (400, code.to_owned()), "{body}");
    }
    let many = json!({"p": (0..101).map(|i| json!({"k": "t", "v": i})).collect::<Vec<_>>()});
    let a = gw.post(telemetry, TV1_KEY, &many.to_string()).await;
    assert_eq!((a.status, a.code()), (400, "invalid_telemetry".to_owned()));
    let huge = format!(r#"{{"p":[{{"k":"{}","v":1}}]}}"#, "x".repeat(70_000));
    let a = gw.post(telemetry, TV1_KEY, &huge).await;
    assert_eq!((a.status, a.code()), (413, "body_too_large".to_owned()));
    for (path, body, code) in [
        (
            "/v1/devices/tv-1/commands/cmd-1/result",
            r#"{"s":"maybe"}"#,
            "invalid_result",
        ),
        (
            "/v1/devices/tv-1/commands/cmd-1/result",
            "[]",
            "invalid_request",
        ),
        (
            "/v1/devices/tv-1/commands/bad%20id/result",
            r#"{"s":"ok"}"#,
            "invalid_command_id",
        ),
    ] {
        let a = gw.post(path, TV1_KEY, body).await;
        assert_eq!(
            (a.status, a.code()),
            (400, code.to_owned()),
            "{path} {body}"
        );
    }
    // Nothing malformed reached the bus.
    assert!(read_all(gw.bus.as_ref(), "telemetry.tv-1").await.is_empty());
    assert!(
        read_all(gw.bus.as_ref(), "devices.tv-1.results")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_command_goes_out_through_the_poll_and_its_result_comes_back_on_the_bus() {
    let gw = start(config(), 100).await;
    let c0 = gw.poll("tv-1", TV1_KEY, None, 0).await.json()["n"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = gw
        .admin(
            reqwest::Method::POST,
            "/admin/devices/tv-1/commands",
            json!({"op": "show-message", "args": {"text": "hello"}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let cmd_id = sent.json()["id"].as_str().unwrap().to_owned();
    let v = gw.poll("tv-1", TV1_KEY, Some(&c0), 30).await.json();
    let cmds = of_kind(&v, "c");
    assert_eq!(
        cmds,
        [json!({"t": "c", "i": cmd_id, "o": "show-message", "a": {"text": "hello"}})]
    );
    let a = gw
        .post(
            &format!("/v1/devices/tv-1/commands/{cmd_id}/result"),
            TV1_KEY,
            r#"{"s":"ok","d":{"shown_ms":1500}}"#,
        )
        .await;
    assert_eq!((a.status, a.json()), (202, json!({"a": 1})));
    assert_eq!(
        read_all(gw.bus.as_ref(), "devices.tv-1.results").await,
        [
            json!({"device": "tv-1", "command": cmd_id, "status": "ok", "detail": {"shown_ms": 1500}})
        ]
    );
}

#[tokio::test]
async fn telemetry_is_answered_202_once_it_is_published() {
    let gw = start(config(), 100).await;
    let a = gw
        .post(
            "/v1/devices/tv-1/telemetry",
            TV1_KEY,
            r#"{"p":[{"k":"temp.cpu","v":61.5,"t":1764270000},{"k":"uptime_s","v":3600}]}"#,
        )
        .await;
    assert_eq!((a.status, a.json()), (202, json!({"a": 2})));
    let published = read_all(gw.bus.as_ref(), "telemetry.tv-1").await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["device"], "tv-1");
    assert_eq!(
        published[0]["points"],
        json!([
            {"name": "temp.cpu", "value": 61.5, "ts": 1764270000u64},
            {"name": "uptime_s", "value": 3600.0}
        ])
    );
    assert!(published[0]["received_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn answers_are_gzipped_for_devices_that_ask() {
    use std::io::Read as _;
    let gw = start(config(), 100).await;
    for i in 0..5 {
        gw.command("tv-1", &format!("cmd-{i}"), "reboot").await;
    }
    let plain = gw.poll("tv-1", TV1_KEY, None, 0).await;
    assert!(plain.headers.get("content-encoding").is_none());
    let res = gw
        .http
        .get(gw.url("/v1/devices/tv-1/events"))
        .header("x-device-key", TV1_KEY)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let bytes = res.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, plain.body);
    assert!(bytes.len() < plain.body.len());
}

#[tokio::test]
async fn the_configuration_document_has_an_etag() {
    let gw = start(config(), 100).await;
    let get = |inm: Option<String>| {
        let mut req = gw
            .http
            .get(gw.url("/v1/devices/tv-1/config"))
            .header("x-device-key", TV1_KEY);
        if let Some(t) = inm {
            req = req.header("if-none-match", t);
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    let a = get(None).await;
    assert_eq!((a.status, a.json()), (200, json!({"volume": 7})));
    let etag = a.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let same = get(Some(etag.clone())).await;
    assert_eq!((same.status, same.body.as_str()), (304, ""));
    assert_eq!(same.headers["etag"].to_str().unwrap(), etag);
    // The poll's configuration event carries the same tag.
    let v = gw.poll("tv-1", TV1_KEY, None, 0).await.json();
    assert_eq!(
        format!("W/\"{}\"", of_kind(&v, "g")[0]["h"].as_str().unwrap()),
        etag
    );

    let set = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/devices/tv-1/config",
            json!({"volume": 2, "screen": {"dim": true}}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let changed = get(Some(etag.clone())).await;
    assert_eq!(changed.status, 200);
    assert_eq!(
        changed.json(),
        json!({"volume": 2, "screen": {"dim": true}})
    );
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(
        changed.headers["etag"].to_str().unwrap(),
        set.json()["etag"]
    );
}

#[tokio::test]
async fn the_admin_api_issues_credentials_and_refuses_without_its_token() {
    let gw = start(config(), 100).await;
    let issued = gw
        .admin(
            reqwest::Method::POST,
            "/admin/devices",
            json!({"id": "kiosk-7", "rates": ["GBP/USD"], "settings": {"mode": "kiosk"}}),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let key = issued.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 43);
    let v = gw.poll("kiosk-7", &key, None, 0).await.json();
    assert_eq!(of_kind(&v, "g")[0]["v"], json!({"mode": "kiosk"}));
    assert_eq!(gw.poll("tv-1", &key, None, 0).await.status, 403);

    let again = gw
        .admin(
            reqwest::Method::POST,
            "/admin/devices",
            json!({"id": "kiosk-7"}),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (409, "device_exists".to_owned())
    );
    let bad = gw
        .admin(
            reqwest::Method::POST,
            "/admin/devices",
            json!({"id": "bad id"}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (400, "invalid_device_id".to_owned())
    );
    let unknown = gw
        .admin(
            reqwest::Method::POST,
            "/admin/devices/nobody/commands",
            json!({"op": "reboot"}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "unknown_device".to_owned())
    );
    for token in [None, Some("wrong-token-0123456789"), Some(TV1_KEY)] {
        let mut req = gw
            .http
            .post(gw.url("/admin/devices/tv-1/commands"))
            .json(&json!({"op": "reboot"}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let a = answer(req.send().await.unwrap()).await;
        assert_eq!((a.status, a.code()), (401, "unauthorized".to_owned()));
    }

    // Without a token the admin API does not exist.
    let mut c = config();
    c.admin.token.clear();
    let closed = start(c, 10).await;
    let a = closed
        .admin(reqwest::Method::POST, "/admin/devices", json!({"id": "x"}))
        .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn the_admin_scheme_is_case_insensitive() {
    // RFC 7235: `bearer` and `BEARER` are `Bearer`.
    let gw = start(config(), 100).await;
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let res = gw
            .http
            .post(gw.url("/admin/devices/tv-1/commands"))
            .header("authorization", format!("{scheme} {}", common::ADMIN))
            .json(&json!({"op": "reboot"}))
            .send()
            .await
            .unwrap();
        let a = answer(res).await;
        assert_eq!(a.status, 202, "{scheme}: {}", a.body);
    }
    let res = gw
        .http
        .post(gw.url("/admin/devices/tv-1/commands"))
        .header("authorization", format!("Basic {}", common::ADMIN))
        .json(&json!({"op": "reboot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(res).await.status, 401);
}
