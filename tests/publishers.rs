//! The publish API from other languages: the standard-library Python script and the Node
//! script of `tests/publishers/` publish through the launcher's stack (`switchyard up`'s
//! `Stack`, demo publisher key), and the events are on the stack's bus at the answered
//! positions, with the data as sent.

use std::path::PathBuf;

use serde_json::{Value, json};
use switchyard::{Config, DEMO_PUBLISHER, DEMO_PUBLISHER_KEY, Stack};
use switchyard_core::bus::Read;
use switchyard_core::channels::ChannelsConfig;
use switchyard_core::event::{Position, Topic};

/// The stack with a catalog of one public channel the demo publisher may publish on.
async fn stack() -> Stack {
    let mut config = Config::ephemeral();
    config.channels = serde_json::from_value::<ChannelsConfig>(json!({"catalog": [{
        "pattern": "announcements",
        "subscribe": {"rule": "public"},
        "publishers": [DEMO_PUBLISHER],
    }]}))
    .expect("the catalog");
    Stack::start(config).await.expect("the stack starts")
}

/// Runs `program script URL KEY CHANNEL DATA`; its exit success and its stdout.
async fn run(program: &str, script: &str, url: &str, key: &str, data: &Value) -> (bool, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("publishers");
    let out = tokio::process::Command::new(program)
        .arg(dir.join(script))
        .args([url, key, "announcements", &data.to_string()])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{program} {script}: {}\n{stderr}", out.status);
    }
    (out.status.success(), stdout)
}

#[tokio::test]
async fn python_and_node_publish_through_the_stack_onto_its_bus() {
    let stack = stack().await;
    let url = format!("http://{}/v1/publish", stack.addr("publish"));
    let topic = Topic::new("ch:announcements").expect("topic");
    let mut seen = Vec::new();
    for (program, script) in [("python3", "publish.py"), ("node", "publish.mjs")] {
        let data = json!({"from": program, "text": "hello, world", "n": [1, 2.5, null]});
        let (ok, stdout) = run(program, script, &url, DEMO_PUBLISHER_KEY, &data).await;
        assert!(ok, "{program} failed: {stdout}");
        let answer: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{program} printed no JSON ({e}): {stdout}"));
        assert_eq!(answer["channel"], "announcements", "{answer}");
        let epoch: u64 = answer["epoch"]
            .as_str()
            .expect("epoch")
            .parse()
            .expect("u64");
        let offset: u64 = answer["offset"]
            .as_str()
            .expect("offset")
            .parse()
            .expect("u64");
        let after = Position {
            epoch,
            offset: offset - 1,
        };
        let Ok(Read::Events { events, .. }) = stack.bus().read(&topic, after, 1).await else {
            panic!("the bus has {program}'s event at its answered position");
        };
        assert_eq!((events[0].epoch, events[0].offset), (epoch, offset));
        let on_bus: Value = serde_json::from_slice(&events[0].payload).expect("JSON payload");
        assert_eq!(on_bus, data, "{program}");
        seen.push(offset);
    }
    assert_eq!(seen, [1, 2], "one event each, in order");

    // A wrong key: both scripts exit non-zero, and nothing more is published.
    for (program, script) in [("python3", "publish.py"), ("node", "publish.mjs")] {
        let (ok, stdout) = run(program, script, &url, "not-the-key", &json!(1)).await;
        assert!(!ok, "{program} succeeded with a wrong key: {stdout}");
    }
    assert_eq!(stack.bus().head(&topic).await.expect("head").offset, 2);
    stack.stop().await.expect("the stack stops cleanly");
}
