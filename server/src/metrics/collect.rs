//! The collector: everything `/metrics` shows, read at scrape time from the atomics the gateway
//! and the core keep (see the parent module for the labels and their bounds).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use switchyard_core::bus::REPAIR_REASONS;
use switchyard_core::latency::LatencySnapshot;
use switchyard_core::upstream::{CircuitState, LATENCY_BUCKETS, OUTCOMES};

use super::{CUT_OFF_REASONS, Inner, VERSIONS, lock};

/// Everything read at scrape time.
#[derive(Debug)]
pub(super) struct Scrape(pub(super) Arc<Inner>);

type Series<'a, T> = [(Vec<(&'a str, &'a str)>, T)];

pub(super) fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &Series<'_, u64>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

pub(super) fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &Series<'_, i64>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A histogram of one series from a [`LatencySnapshot`].
pub(super) fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &Series<'_, LatencySnapshot>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, s) in series {
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(s.sum_seconds, s.count(), &s.buckets, None)?;
    }
    Ok(())
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let gw = inner.gateway;
        // Requests, sockets and held polls by version × client (zero series too: a query sees
        // every known client).
        let mut requests = Vec::new();
        let mut live = Vec::new();
        let mut opened = Vec::new();
        let mut held = Vec::new();
        for (v, version) in VERSIONS.iter().enumerate() {
            for (c, client) in inner.clients.iter().enumerate() {
                let i = v * inner.clients.len() + c;
                let labels = vec![("gateway", gw), ("version", *version), ("client", client)];
                requests.push((labels.clone(), inner.requests[i].load(Ordering::Relaxed)));
                live.push((labels.clone(), inner.connections[i].load(Ordering::Relaxed)));
                opened.push((
                    labels.clone(),
                    inner.connections_opened[i].load(Ordering::Relaxed),
                ));
                held.push((labels, inner.held_polls[i].load(Ordering::Relaxed)));
            }
        }
        gauge(
            &mut encoder,
            "switchyard_connections",
            "Upgraded sockets open now, by gateway, API version and client application",
            &live,
        )?;
        counter(
            &mut encoder,
            "switchyard_connections_opened",
            "Upgraded sockets opened, by gateway, API version and client application",
            &opened,
        )?;
        counter(
            &mut encoder,
            "switchyard_requests",
            "HTTP requests (socket upgrades included) by gateway, API version and client application",
            &requests,
        )?;
        gauge(
            &mut encoder,
            "switchyard_held_polls",
            "Long-polls held now, by gateway, API version and client (device model/firmware)",
            &held,
        )?;

        // Slow consumers, conflations, resets, socket queues.
        let cut_offs: Vec<_> = CUT_OFF_REASONS
            .iter()
            .zip(&inner.cut_offs)
            .map(|(reason, n)| {
                (
                    vec![("gateway", gw), ("reason", *reason)],
                    n.load(Ordering::Relaxed),
                )
            })
            .collect();
        counter(
            &mut encoder,
            "switchyard_slow_consumer_cutoffs",
            "Sockets closed because their client did not read: a full send queue or a write that timed out",
            &cut_offs,
        )?;
        let just_gw = || vec![("gateway", gw)];
        counter(
            &mut encoder,
            "switchyard_conflations",
            "State updates replaced by a newer one before they were sent to a client",
            &[(just_gw(), inner.conflations.get())],
        )?;
        counter(
            &mut encoder,
            "switchyard_resets",
            "Reset answers: history no longer covered a client's cursor (bff-device)",
            &[(just_gw(), inner.resets.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "switchyard_poll_gaps",
            "Gap items in poll answers: history no longer covered a followed channel's position (bff-device)",
            &[(just_gw(), inner.poll_gaps.load(Ordering::Relaxed))],
        )?;
        let sockets = inner.socket_queues.sample();
        gauge(
            &mut encoder,
            "switchyard_socket_queued_messages",
            "Messages waiting in the sockets' send queues now (sum over sockets)",
            &[(just_gw(), signed(sockets.queued))],
        )?;
        gauge(
            &mut encoder,
            "switchyard_socket_queue_depth_max",
            "Messages waiting in the deepest socket send queue now",
            &[(just_gw(), signed(sockets.max))],
        )?;

        // Backend calls.
        let mut names: Vec<&Arc<str>> = inner.upstreams.iter().flat_map(|u| u.names()).collect();
        names.sort();
        let mut calls = Vec::new();
        let mut retries = Vec::new();
        let mut circuit = Vec::new();
        let mut snapshots = Vec::new();
        for name in &names {
            let Some(backend) = inner.upstreams.as_ref().and_then(|u| u.backend(name)) else {
                continue;
            };
            let s = backend.stats().snapshot();
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                calls.push((
                    vec![
                        ("gateway", gw),
                        ("backend", &***name),
                        ("outcome", *outcome),
                    ],
                    s.outcomes[o],
                ));
            }
            retries.push((vec![("gateway", gw), ("backend", &***name)], s.retries));
            let state = backend.breaker().state();
            for (label, st) in [
                ("closed", CircuitState::Closed),
                ("open", CircuitState::Open),
                ("half_open", CircuitState::HalfOpen),
            ] {
                circuit.push((
                    vec![("gateway", gw), ("backend", &***name), ("state", label)],
                    i64::from(state == st),
                ));
            }
            snapshots.push((name, s));
        }
        counter(
            &mut encoder,
            "switchyard_backend_calls",
            "Backend calls (all attempts of one call) by backend and outcome",
            &calls,
        )?;
        counter(
            &mut encoder,
            "switchyard_backend_retries",
            "Backend call attempts made again after a retryable failure",
            &retries,
        )?;
        gauge(
            &mut encoder,
            "switchyard_backend_circuit_state",
            "1 for the backend's circuit breaker's current state, 0 for the others",
            &circuit,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "switchyard_backend_call_duration_seconds",
                "Duration of backend calls (all attempts), by backend",
                None,
                MetricType::Histogram,
            )?;
            for (name, s) in &snapshots {
                let labels = [("gateway", gw), ("backend", &****name)];
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(s.cumulative_buckets)
                    .collect();
                let count = s.cumulative_buckets[LATENCY_BUCKETS.len()];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        s.latency_sum_seconds,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }

        // Sources.
        let stats: Vec<(&str, switchyard_core::sources::SourceStats)> = inner
            .sources
            .iter()
            .map(|(name, source)| (name.as_str(), source.stats()))
            .collect();
        let by_source = |f: fn(&switchyard_core::sources::SourceStats) -> u64| {
            stats
                .iter()
                .map(|(name, s)| (vec![("gateway", gw), ("source", *name)], f(s)))
                .collect::<Vec<_>>()
        };
        for (name, help, f) in [
            (
                "switchyard_source_connects",
                "Upstream connections a source opened",
                (|s| s.connects_total) as fn(&switchyard_core::sources::SourceStats) -> u64,
            ),
            (
                "switchyard_source_events",
                "Events a source published on the bus",
                |s| s.events_total,
            ),
            (
                "switchyard_source_unparsable",
                "Upstream messages a source could not read",
                |s| s.unparsable_total,
            ),
            (
                "switchyard_source_unmatched",
                "Upstream messages no rule of the source matched",
                |s| s.unmatched_total,
            ),
            (
                "switchyard_source_refused",
                "Upstream messages a rule matched that could not be made an event",
                |s| s.refused_total,
            ),
            (
                "switchyard_source_unwanted",
                "Events for channels not wanted here, dropped",
                |s| s.unwanted_total,
            ),
            (
                "switchyard_source_oversized",
                "Upstream messages over the size limit, or binary, dropped",
                |s| s.oversized_total,
            ),
            (
                "switchyard_source_upstream_errors",
                "Requests the upstream refused or did not acknowledge",
                |s| s.upstream_errors_total,
            ),
        ] {
            counter(&mut encoder, name, help, &by_source(f))?;
        }
        let connected: Vec<_> = stats
            .iter()
            .map(|(name, s)| {
                (
                    vec![("gateway", gw), ("source", *name)],
                    i64::from(s.connected),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "switchyard_source_connected",
            "1 while the source's upstream connection is open",
            &connected,
        )?;
        let wanted: Vec<_> = stats
            .iter()
            .map(|(name, s)| {
                (
                    vec![("gateway", gw), ("source", *name)],
                    i64::try_from(s.wanted_channels).unwrap_or(i64::MAX),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "switchyard_source_wanted_channels",
            "Channels the source is asked to feed now",
            &wanted,
        )?;

        // The hub, by channel pattern.
        if let Some(hub) = &inner.hub {
            let stats = hub.stats();
            let by_pattern = |f: fn(&switchyard_core::hub::PatternSnapshot) -> u64| {
                stats
                    .iter()
                    .map(|s| (vec![("gateway", gw), ("pattern", s.pattern.as_str())], f(s)))
                    .collect::<Vec<_>>()
            };
            let live: Vec<_> = by_pattern(|s| s.live)
                .into_iter()
                .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
                .collect();
            gauge(
                &mut encoder,
                "switchyard_hub_subscriptions",
                "Hub subscriptions open now, by channel pattern (`other`: topics outside the catalog)",
                &live,
            )?;
            for (name, help, f) in [
                (
                    "switchyard_hub_subscriptions_opened",
                    "Hub subscriptions opened, by channel pattern",
                    (|s| s.opened) as fn(&switchyard_core::hub::PatternSnapshot) -> u64,
                ),
                (
                    "switchyard_hub_deliveries",
                    "Events the hub handed to its subscribers (a subscription shared by several clients counts once)",
                    |s| s.deliveries,
                ),
                (
                    "switchyard_hub_gaps",
                    "Gaps the hub handed to subscribers: history no longer covered where they were",
                    |s| s.gaps,
                ),
                (
                    "switchyard_hub_catch_ups",
                    "Subscribers that fell behind their topic's ring and caught up from history",
                    |s| s.catch_ups,
                ),
            ] {
                counter(&mut encoder, name, help, &by_pattern(f))?;
            }
            let depths = hub.queue_depths();
            gauge(
                &mut encoder,
                "switchyard_hub_queued_events",
                "Events in the hub's stream topic rings not yet taken, summed over subscribers",
                &[(vec![("gateway", gw)], signed(depths.queued))],
            )?;
            gauge(
                &mut encoder,
                "switchyard_hub_queue_depth_max",
                "Events not yet taken by the hub's furthest-behind stream subscriber now",
                &[(vec![("gateway", gw)], signed(depths.max))],
            )?;
        }

        // The broker.
        if let Some(bus) = &inner.bus {
            let s = bus.snapshot();
            histogram(
                &mut encoder,
                "switchyard_bus_publish_duration_seconds",
                "Duration of successful bus publishes (to the broker and back)",
                &[(just_gw(), s.publish.clone())],
            )?;
            counter(
                &mut encoder,
                "switchyard_bus_publish_errors",
                "Bus publishes that failed (broker down or timed out)",
                &[(just_gw(), s.publish_errors)],
            )?;
            counter(
                &mut encoder,
                "switchyard_bus_connections_lost",
                "Broker connections lost (each reopened in the background: a reconnect)",
                &[(just_gw(), s.connections_lost)],
            )?;
            let repairs: Vec<_> = REPAIR_REASONS
                .iter()
                .zip(s.repairs)
                .map(|(reason, n)| (vec![("gateway", gw), ("reason", *reason)], n))
                .collect();
            counter(
                &mut encoder,
                "switchyard_bus_feed_repairs",
                "Broker subscriptions that stopped trusting their live feed and caught up from history",
                &repairs,
            )?;
        }

        // The publish APIs: the gateway's, and any other counted here (the launcher's).
        let others = lock(&inner.other_publish);
        if inner.publish.is_some() || !others.is_empty() {
            let mut all = Vec::new();
            if let Some(publish) = &inner.publish {
                all.push((gw, publish.snapshot()));
            }
            for (name, stats) in others.iter() {
                all.push((*name, stats.snapshot()));
            }
            let series: Vec<_> = all
                .iter()
                .flat_map(|(name, snapshot)| {
                    snapshot.iter().map(move |(publisher, outcome, n)| {
                        (
                            vec![
                                ("gateway", *name),
                                ("publisher", &**publisher),
                                ("outcome", *outcome),
                            ],
                            *n,
                        )
                    })
                })
                .collect();
            counter(
                &mut encoder,
                "switchyard_publish_calls",
                "Publish API calls (a batch is one) by publisher and outcome",
                &series,
            )?;
        }
        drop(others);

        // The gateway's own gauges.
        let gauges = lock(&inner.gauges);
        for g in gauges.iter() {
            let value = i64::try_from(g.value.load(Ordering::Acquire)).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                g.name,
                g.help,
                &[(vec![("gateway", gw)], value)],
            )?;
        }
        Ok(())
    }
}
