//! Case e: clients on a lossy, slow link. A mobile app, a graphql-ws client and a device reach
//! their gateways through the fault proxy (one per gateway) and follow the public stream channel
//! `announcements`, resuming after a lost connection as apps do (`faults/resume.rs`).
//!
//! TCP does not lose bytes: a lost packet is retransmitted, so on a TCP link loss shows up as
//! latency, uneven delivery and lower throughput, never as a missing message. noxious has no
//! packet-loss toxic (that is `tc netem`'s work, below TCP); the link is modelled by what loss
//! does to a TCP stream:
//!
//! - "lossy": latency 200 ms ± 50 ms both ways, and the downstream cut into small segments with
//!   a pause between them (`slicer`: the uneven arrival of retransmitted segments), at a steady
//!   20 events/s: every client must keep up — every event, no gap, no close.
//! - "slow": a burst far larger than the link, the gateway's bounded queues and the channel's
//!   history (1,000 events) — 4,000 events of 1 KB, published at once — to new clients on a
//!   link of 50 KB/s downstream (`slicer`: 500 B every 10 ms) with 200 ms latency upstream:
//!   each client keeps up or is cut off with its gateway's documented signal (mobile close 4503,
//!   graphql-ws close 1013; a device is never cut off: it gets a `gap` item), then reconnects —
//!   on a good link, as a phone that moved to wifi — resumes after its last position, and gets
//!   every event history still holds, with an explicit gap for the rest. Never a silent loss,
//!   never a duplicate.
//!
//! Each link's toxics are set before its clients connect and never changed while they live:
//! noxious 1.0.4 rebuilds a live link's toxic chain on any change and drops the bytes in
//! flight in it (a TCP stream with a hole: frames cut in the middle), which no real network
//! does; and its `bandwidth` toxic underflows (a panic) on chunks over 100 × its rate in bytes,
//! so the slow link is a `slicer`. Its `latency` delays chunk after chunk, so a link with it
//! downstream carries at most one read chunk per latency.

use super::resume::{self, Seen, offsets};
use super::*;

/// The public stream channel of the demo catalog (history 1,000 events).
const CHANNEL: &str = "announcements";

/// The latency of the link, each way.
const LATENCY: ToxicKind = ToxicKind::Latency {
    latency: 200,
    jitter: 50,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_lossy_slow_link_keep_up_or_are_cut_off_with_their_signal_and_resume() {
    let mut config = switchyard::Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    config
        .device
        .devices
        .get_mut(switchyard::DEMO_DEVICE)
        .expect("the demo device")
        .channels = vec![CHANNEL.to_owned()];
    let stack = switchyard::Stack::start(config)
        .await
        .expect("stack starts");
    let topic = switchyard_core::event::Topic::new(&format!("ch:{CHANNEL}")).expect("a topic");
    let bus = stack.bus().clone();
    let publish = async |k: u64, pad: usize| -> u64 {
        let data = serde_json::json!({"k": k, "pad": "x".repeat(pad)}).to_string();
        bus.publish(&topic, data.into_bytes().into())
            .await
            .expect("published")
            .position()
            .offset
    };
    let proxies = [
        FaultProxy::start(stack.addr("bff-mobile")).await,
        FaultProxy::start(stack.addr("bff-web")).await,
        FaultProxy::start(stack.addr("bff-device")).await,
    ];
    let [m, w, d] = proxies.each_ref().map(FaultProxy::addr);
    for proxy in &proxies {
        for (name, direction) in [
            ("latency-down", StreamDirection::Downstream),
            ("latency-up", StreamDirection::Upstream),
        ] {
            proxy.add(name, LATENCY, direction).await;
        }
    }
    for proxy in &proxies {
        proxy
            .add(
                "slicer",
                ToxicKind::Slicer {
                    average_size: 200,
                    size_variation: 150,
                    delay: 2_000,
                },
                StreamDirection::Downstream,
            )
            .await;
    }
    let (mut k, mut last) = (0, 0);
    let lossy_readers = readers([m, w, d], [None; 3]);
    let seen = clients(&lossy_readers);
    let first = warm(&seen, &publish, &mut k, &mut last).await;

    // Lossy: 100 events at 20/s; everyone keeps up.
    let lossy_from = last + 1;
    for _ in 0..100 {
        last = publish(k, 200).await;
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lossy_last = last;
    let lossy_start = Instant::now();
    for (who, seen) in &seen {
        until(&seen.tally, PATIENCE * 2, &format!("lossy: {who}"), |t| {
            t.has(&lossy_last.to_string())
        })
        .await;
    }
    let lossy_caught_up = lossy_start.elapsed();
    for ((who, seen), from) in seen.iter().zip(&first) {
        let t = snapshot(&seen.tally);
        let expected = offsets(*from, lossy_last);
        let missing: Vec<&String> = expected.iter().filter(|o| !t.has(o)).collect();
        assert!(missing.is_empty(), "lossy: {who} missing {missing:?}");
        assert_eq!((t.duplicates, t.gaps), (0, 0), "lossy: {who}: {t:?}");
        assert!(
            seen.closes().is_empty(),
            "lossy: {who}: {:?}",
            seen.closes()
        );
        let mut lossy = t.clone();
        lossy.delivered = expected
            .iter()
            .filter(|o| o.parse::<u64>().is_ok_and(|o| o >= lossy_from))
            .count() as u64;
        Figures {
            case: "e. lossy link (latency 200 ± 50 ms both ways, sliced downstream), 20 events/s",
            client: who,
            published: lossy_last - lossy_from + 1,
            tally: &lossy,
            recovered: format!(
                "kept up (the last event {} ms after it was published)",
                lossy_caught_up.as_millis()
            ),
        }
        .print();
    }
    for (_, _, task) in lossy_readers {
        task.abort();
    }
    drop(proxies);

    // Slow: new clients on a 50 KB/s link; the app's later connections use a good link.
    let slow = [
        FaultProxy::start(stack.addr("bff-mobile")).await,
        FaultProxy::start(stack.addr("bff-web")).await,
        FaultProxy::start(stack.addr("bff-device")).await,
    ];
    for proxy in &slow {
        proxy
            .add(
                "slow",
                ToxicKind::Slicer {
                    average_size: 500,
                    size_variation: 0,
                    delay: 10_000,
                },
                StreamDirection::Downstream,
            )
            .await;
        proxy
            .add("latency-up", LATENCY, StreamDirection::Upstream)
            .await;
    }
    let slow_readers = readers(
        slow.each_ref().map(FaultProxy::addr),
        [
            Some(stack.addr("bff-mobile")),
            Some(stack.addr("bff-web")),
            None,
        ],
    );
    let seen = clients(&slow_readers);
    warm(&seen, &publish, &mut k, &mut last).await;
    let before: Vec<common::faults::Tally> = seen.iter().map(|(_, s)| snapshot(&s.tally)).collect();
    let burst_from = last + 1;
    for _ in 0..4_000 {
        last = publish(k, 1_000).await;
        k += 1;
    }
    let burst_last = last;
    let burst_end = Instant::now();
    // Until every client has the burst's last event, or 90 s.
    let end = Instant::now() + PATIENCE * 6;
    while Instant::now() < end
        && !seen
            .iter()
            .all(|(_, s)| snapshot(&s.tally).has(&burst_last.to_string()))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer: a duplicate would come right behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signals = [&[4503, 1006][..], &[1013, 1006][..], &[][..]];
    for (((who, seen), was), signal) in seen.iter().zip(&before).zip(signals) {
        let t = snapshot(&seen.tally);
        let closes = seen.closes();
        let gaps = t.gaps - was.gaps;
        assert_eq!(t.duplicates, 0, "slow: {who}: {t:?}");
        // Cut off only with the gateway's signal (1006: the connection ended before the close
        // frame could be written behind the backlog); a device's polls are never cut off.
        for code in &closes {
            assert!(signal.contains(code), "slow: {who}: closed with {code}");
        }
        let expected = offsets(burst_from, burst_last);
        let missing = expected.iter().filter(|o| !t.has(o)).count();
        // Every event, or an explicit gap for what history no longer held.
        assert!(
            missing == 0 || gaps > 0,
            "slow: {who}: {missing} lost without a signal"
        );
        let mut burst = t.clone();
        burst.delivered = t.delivered - was.delivered;
        burst.gaps = gaps;
        let last_seen = t.keys.iter().filter_map(|k| k.parse::<u64>().ok()).max();
        println!(
            "slow: {who}: {missing} of the burst's events not delivered; closes {}; \
             connections {}; last offset {last_seen:?} of {burst_last}",
            summary(&closes),
            seen.connections()
        );
        let caught_up = t.arrived.get(&burst_last.to_string()).map(|at| {
            format!(
                "caught up {} ms after the burst",
                at.duration_since(burst_end).as_millis()
            )
        });
        // A client that has not caught up was cut off with its signal, and is still trying.
        assert!(
            caught_up.is_some() || !closes.is_empty(),
            "slow: {who} neither caught up nor was cut off: {t:?}"
        );
        // Every client catches up: once on a good link, a resuming web client's replay runs at
        // its socket's pace (it was cut off again on every resume before).
        assert!(caught_up.is_some(), "slow: {who} did not catch up");
        let caught_up = caught_up.unwrap_or_else(|| {
            format!(
                "not caught up after {} s: cut off again on each of {} resumes",
                (PATIENCE * 6).as_secs(),
                closes.len()
            )
        });
        Figures {
            case: "e. slow link (50 KB/s down, 200 ms up) under a burst of 4,000 × 1 KB",
            client: who,
            published: burst_last - burst_from + 1,
            tally: &burst,
            recovered: format!("closes {}: {caught_up}", summary(&closes)),
        }
        .print();
    }
    for (_, _, task) in slow_readers {
        task.abort();
    }
    drop(slow);
    stack.stop().await.expect("the stack stops");
}

/// A reader of each kind: mobile, web, device, through `via`; a mobile or web reader's later
/// connections go to `then` when given (a good link), else through `via` again.
fn readers(
    via: [SocketAddr; 3],
    then: [Option<SocketAddr>; 3],
) -> [(&'static str, Seen, tokio::task::JoinHandle<()>); 3] {
    let url = move |i: usize, scheme: &'static str, path: &'static str| {
        let n = std::sync::atomic::AtomicUsize::new(0);
        move || {
            let first = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            let addr = if first {
                via[i]
            } else {
                then[i].unwrap_or(via[i])
            };
            format!("{scheme}://{addr}{path}")
        }
    };
    let (m, mt) = resume::mobile(
        url(0, "ws", "/v1/ws"),
        common::launcher::token("alice"),
        CHANNEL,
    );
    let (w, wt) = resume::web(url(1, "ws", "/v1/graphql"), CHANNEL);
    let (d, dt) = resume::device(
        url(2, "http", ""),
        switchyard::DEMO_DEVICE,
        switchyard::DEMO_DEVICE_KEY,
        CHANNEL,
    );
    [
        ("mobile", m, mt),
        ("web (graphql-ws channel)", w, wt),
        ("device (followed channel)", d, dt),
    ]
}

fn clients(
    readers: &[(&'static str, Seen, tokio::task::JoinHandle<()>); 3],
) -> [(&'static str, Seen); 3] {
    readers.each_ref().map(|(w, s, _)| (*w, s.clone()))
}

/// The readers subscribe live (no position yet): events until each has one; the offset each
/// counts from.
async fn warm(
    seen: &[(&'static str, Seen); 3],
    publish: &impl AsyncFn(u64, usize) -> u64,
    k: &mut u64,
    last: &mut u64,
) -> Vec<u64> {
    let end = Instant::now() + PATIENCE;
    while seen.iter().any(|(_, s)| snapshot(&s.tally).delivered == 0) {
        assert!(Instant::now() < end, "a subscription never started");
        *last = publish(*k, 16).await;
        *k += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen.iter()
        .map(|(_, s)| {
            let t = snapshot(&s.tally);
            t.keys
                .iter()
                .filter_map(|k| k.parse::<u64>().ok())
                .min()
                .expect("one event")
        })
        .collect()
}

/// Close codes as `code × count`.
fn summary(closes: &[u16]) -> String {
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for code in closes {
        *counts.entry(*code).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} × {n}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}
