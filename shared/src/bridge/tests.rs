//! Unit tests of `bridge`.

use std::collections::BTreeSet;

use super::*;

fn topics(names: &[&str]) -> Vec<Topic> {
    names
        .iter()
        .map(|n| Topic::new(n).expect("valid"))
        .collect()
}

fn desired(names: &[&str]) -> HashMap<Topic, usize> {
    topics(names).into_iter().map(|t| (t, 1)).collect()
}

fn upstream(names: &[&str]) -> BTreeSet<Topic> {
    topics(names).into_iter().collect()
}

#[test]
fn a_fresh_connection_watches_everything_desired() {
    let p = plan(&desired(&["b", "a"]), &upstream(&[]));
    assert_eq!(p.watch, topics(&["a", "b"]));
    assert!(p.unwatch.is_empty());
}

#[test]
fn reconciling_sends_only_the_difference() {
    let p = plan(&desired(&["a", "c"]), &upstream(&["a", "b"]));
    assert_eq!(p.watch, topics(&["c"]));
    assert_eq!(p.unwatch, topics(&["b"]));
    assert_eq!(
        plan(&desired(&["a"]), &upstream(&["a"])),
        Plan::default(),
        "a topic released and wanted again before the task looked costs no frames"
    );
    assert_eq!(
        plan(&desired(&[]), &upstream(&["a"])).unwatch,
        topics(&["a"])
    );
}

struct Everything;

impl UpstreamProtocol for Everything {
    fn watch(&self, topic: &Topic) -> Option<String> {
        Some(format!("+{topic}"))
    }
    fn unwatch(&self, topic: &Topic) -> Option<String> {
        Some(format!("-{topic}"))
    }
    fn decode(&self, _frame: &str) -> Decoded {
        Decoded::Ignore
    }
}

#[tokio::test]
async fn guards_are_counted_per_topic() {
    let bus: Arc<dyn Bus> = Arc::new(crate::bus::memory::MemoryBus::new(8));
    // Nothing listens on port 9 of loopback in tests; the bridge only retries in the
    // background, which this test does not care about.
    let bridge = UpstreamBridge::start(
        "test",
        &BridgeConfig::new("ws://127.0.0.1:9/"),
        Arc::new(Everything),
        bus,
    );
    let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
    let a1 = bridge.watch(&a);
    let a2 = bridge.clone().watch(&a);
    let b1 = bridge.feed(&b).expect("the protocol serves every topic");
    assert_eq!(bridge.stats().watched_topics, 2);
    drop(a1);
    assert_eq!(bridge.stats().watched_topics, 2);
    drop(a2);
    assert_eq!(bridge.stats().watched_topics, 1);
    drop(b1);
    assert_eq!(bridge.stats().watched_topics, 0);
    bridge.shutdown();
}
