//! The exchange's market: a deterministic random walk of each currency's value in US dollars,
//! and the rates and encoded tick frames of each step.
//!
//! Every step moves each currency except USD by a pseudo-random relative step of at most
//! ±0.05 %, drawn from [`SplitMix64`] seeded with the configured seed, so the same seed gives the
//! same rates at the same `seq` in every run and every build. All arithmetic is [`Decimal`]; no
//! float is ever involved. Values stay between half and twice their starting value (a step that
//! would leave that band is taken the other way).
//!
//! This module does no IO and keeps no time: the ticker decides when to step.

use axum::extract::ws::Utf8Bytes;
use demo_api::ticks::ServerMsg;
use demo_api::{CURRENCIES, Currency, Decimal, Pair};
use rust_decimal::RoundingStrategy;

use crate::splitmix::SplitMix64;

/// How many currencies the market prices.
pub(crate) const CURRENCY_COUNT: usize = CURRENCIES.len();

/// Slots of a pair-indexed table (the diagonal, a currency against itself, is unused).
pub(crate) const PAIR_SLOTS: usize = CURRENCY_COUNT * CURRENCY_COUNT;

/// Decimal places of a published rate.
pub(crate) const RATE_SCALE: u32 = 6;

/// Decimal places kept of a currency's value between steps, so values never grow unbounded
/// digits.
const VALUE_SCALE: u32 = 12;

/// Largest relative step, in millionths (500 = 0.05 %).
const MAX_STEP_MICROS: u64 = 500;

/// Starting values in USD, in the order of [`CURRENCIES`]: mantissa and scale.
const START: [(i64, u32); CURRENCY_COUNT] = [
    (1, 0),   // USD
    (108, 2), // EUR 1.08
    (127, 2), // GBP 1.27
    (67, 4),  // JPY 0.0067
    (113, 2), // CHF 1.13
    (74, 2),  // CAD 0.74
];

/// The position of a currency in [`CURRENCIES`].
pub(crate) fn index(c: Currency) -> usize {
    CURRENCIES
        .iter()
        .position(|code| *code == c.as_str())
        .expect("every Currency is one of CURRENCIES")
}

/// The slot of a pair in a pair-indexed table.
pub(crate) fn pair_index(p: Pair) -> usize {
    index(p.base) * CURRENCY_COUNT + index(p.quote)
}

/// Every pair the market prices, in slot order.
pub(crate) fn all_pairs() -> impl Iterator<Item = Pair> {
    let currencies = || CURRENCIES.iter().filter_map(|c| Currency::parse(c).ok());
    currencies().flat_map(move |b| currencies().filter_map(move |q| Pair::new(b, q).ok()))
}

/// The walk's state.
#[derive(Debug, Clone)]
pub(crate) struct Market {
    rng: SplitMix64,
    values: [Decimal; CURRENCY_COUNT],
    seq: u64,
}

impl Market {
    /// The market at `seq` 0, seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            values: START.map(|(m, s)| Decimal::new(m, s)),
            seq: 0,
        }
    }

    /// Moves every currency but USD by one step and counts the tick.
    pub(crate) fn step(&mut self) {
        for (i, value) in self.values.iter_mut().enumerate().skip(1) {
            let draw = self.rng.next_u64() % (2 * MAX_STEP_MICROS + 1);
            let micros = Decimal::from(draw) - Decimal::from(MAX_STEP_MICROS);
            let step = micros * Decimal::new(1, 6);
            let start = Decimal::new(START[i].0, START[i].1);
            let moved = |s: Decimal| (*value * (Decimal::ONE + s)).round_dp(VALUE_SCALE);
            let mut next = moved(step);
            if next < start / Decimal::TWO || next > start * Decimal::TWO {
                next = moved(-step);
            }
            *value = next;
        }
        self.seq += 1;
    }

    /// The rates and tick frames of the current step.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut rates = [Decimal::ZERO; PAIR_SLOTS];
        let mut frames = vec![Utf8Bytes::from_static(""); PAIR_SLOTS];
        for pair in all_pairs() {
            let slot = pair_index(pair);
            let rate = rate(
                self.values[index(pair.base)],
                self.values[index(pair.quote)],
            );
            rates[slot] = rate;
            let tick = ServerMsg::Tick {
                pair: pair.to_string(),
                rate: rate.to_string(),
                seq: self.seq,
            };
            frames[slot] = serde_json::to_string(&tick)
                .expect("a tick of strings and a number always serialises")
                .into();
        }
        Snapshot {
            seq: self.seq,
            rates,
            frames,
        }
    }
}

/// `base / quote`, rounded half away from zero and written with exactly [`RATE_SCALE`] places.
fn rate(base: Decimal, quote: Decimal) -> Decimal {
    let mut r =
        (base / quote).round_dp_with_strategy(RATE_SCALE, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(RATE_SCALE);
    r
}

/// The market at one tick: every pair's rate, and its tick frame encoded once for every
/// connection that watches it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The tick number.
    pub(crate) seq: u64,
    rates: [Decimal; PAIR_SLOTS],
    frames: Vec<Utf8Bytes>,
}

impl Snapshot {
    /// The rate of `pair`.
    pub(crate) fn rate(&self, pair: Pair) -> Decimal {
        self.rates[pair_index(pair)]
    }

    /// The encoded [`ServerMsg::Tick`] of `pair`.
    pub(crate) fn frame(&self, pair: Pair) -> Utf8Bytes {
        self.frames[pair_index(pair)].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str) -> Pair {
        s.parse().unwrap()
    }

    fn rates(seed: u64, steps: usize) -> Vec<Decimal> {
        let mut m = Market::new(seed);
        (0..steps)
            .map(|_| {
                m.step();
                m.snapshot().rate(pair("EUR/JPY"))
            })
            .collect()
    }

    #[test]
    fn same_seed_same_walk_other_seed_other_walk() {
        assert_eq!(rates(42, 50), rates(42, 50));
        assert_ne!(rates(42, 50), rates(43, 50));
    }

    #[test]
    fn starting_rates_have_six_places() {
        let s = Market::new(1).snapshot();
        assert_eq!(s.seq, 0);
        assert_eq!(s.rate(pair("EUR/USD")).to_string(), "1.080000");
        assert_eq!(s.rate(pair("USD/JPY")).to_string(), "149.253731");
        assert_eq!(s.rate(pair("JPY/USD")).to_string(), "0.006700");
        let frame = s.frame(pair("EUR/USD"));
        let tick: ServerMsg = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(
            tick,
            ServerMsg::Tick {
                pair: "EUR/USD".into(),
                rate: "1.080000".into(),
                seq: 0
            }
        );
    }

    #[test]
    fn steps_are_small_and_values_stay_in_their_band() {
        let mut m = Market::new(7);
        let mut last = m.snapshot().rate(pair("GBP/USD"));
        for _ in 0..5_000 {
            m.step();
            let now = m.snapshot().rate(pair("GBP/USD"));
            let change = ((now - last) / last).abs();
            assert!(change <= Decimal::new(6, 4), "{last} -> {now}");
            last = now;
        }
        for (i, v) in m.values.iter().enumerate() {
            let start = Decimal::new(START[i].0, START[i].1);
            assert!(*v >= start / Decimal::TWO && *v <= start * Decimal::TWO);
        }
        assert_eq!(m.seq, 5_000);
    }

    #[test]
    fn thirty_pairs_each_in_its_own_slot() {
        let slots: std::collections::BTreeSet<usize> = all_pairs().map(pair_index).collect();
        assert_eq!(slots.len(), 30);
    }
}
