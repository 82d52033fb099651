//! Deterministic, realistic ad-event generator for lockstep.
//!
//! Produces rows for
//!
//! ```text
//! ad_events(event_id BIGINT, user_id TEXT, campaign_id BIGINT,
//!           kind TEXT ('impression'|'click'), ip TEXT, user_agent TEXT,
//!           event_time TIMESTAMP ms)
//! ```
//!
//! The data is meant to exercise a streaming feature pipeline, so it has the
//! properties that make such pipelines hard:
//!
//! * **Skew.** User activity is Zipf-distributed (a few very heavy users, a
//!   long tail), campaigns too. Hot keys stress per-key state and sharding.
//! * **Causality.** Clicks follow an impression of the same user and
//!   campaign, seconds to minutes later, so join / CTR features have
//!   something real to find.
//! * **Bots.** A small fraction of users are bots: crawler-like user agents,
//!   datacenter ips, several times the event rate and a 30–60 % CTR.
//! * **Disorder.** Events are yielded in *delivery* order, not event-time
//!   order: most arrive on time, some a little late (within a 30 s allowed
//!   lateness) and a few very late (2–10 min, beyond it), so watermark and
//!   late-data handling get exercised.
//! * **Determinism.** The same [`GenConfig`] always yields the same sequence
//!   (with this crate version), so tests and benchmarks are reproducible.
//!   Randomness comes from xoshiro256++ — a named algorithm whose output does
//!   not change between `rand` releases, unlike `StdRng`.
//!
//! Generation streams with bounded memory: per-user attributes are derived by
//! hashing instead of being stored, and only in-flight clicks and delayed
//! deliveries are buffered.
//!
//! ```
//! use lockstep_gen::{GenConfig, Generator};
//!
//! let cfg = GenConfig { events: 1_000, users: 100, seed: 7, ..GenConfig::default() };
//! let events: Vec<_> = Generator::new(cfg).unwrap().collect();
//! assert_eq!(events.len(), 1_000);
//! ```

use std::fmt;
use std::iter::FusedIterator;

use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;

mod delivery;
mod perm;
mod source;
mod users;

#[cfg(test)]
mod tests;

use delivery::ReorderBuffer;
use source::{EventSource, RawEvent};

/// 2024-01-01T00:00:00Z in Unix milliseconds: the default first event time.
pub const DEFAULT_START_MS: i64 = 1_704_067_200_000;

/// What to generate. Construct with struct-update syntax over
/// [`GenConfig::default()`] and check with [`GenConfig::validate`]
/// (which [`Generator::new`] also does).
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Exact number of events to yield. Zero yields nothing.
    pub events: u64,
    /// Number of distinct users (`u000001` ..). At least 1.
    pub users: u64,
    /// RNG seed; the whole output is a pure function of the config.
    pub seed: u64,
    /// Number of campaigns; ids are `1..=campaigns`. At least 1.
    pub campaigns: u64,
    /// Event time of the first event, Unix ms.
    pub start_ms: i64,
    /// Mean gap between consecutive events (all kinds, all users), in ms.
    /// Gaps are exponential, i.e. arrivals form a Poisson process.
    pub mean_gap_ms: f64,
    /// Fraction of events delivered 1–20 s late: overtaken by later events
    /// but within a 30 s allowed lateness.
    pub out_of_order_fraction: f64,
    /// Fraction of events delivered 2–10 min late: beyond a 30 s allowed
    /// lateness, so a watermark-based consumer sees them as late data.
    pub late_fraction: f64,
    /// Fraction of users that are bots (rounded to a whole number of users).
    pub bot_fraction: f64,
    /// Zipf exponent of user activity; larger means more skew, 0 is uniform.
    pub zipf_exponent: f64,
}

impl Default for GenConfig {
    /// One million events from 10 000 users, 200 campaigns, ~20 events/s,
    /// 2 % slightly out of order, 0.1 % very late, 1 % bots, Zipf 1.1.
    fn default() -> Self {
        GenConfig {
            events: 1_000_000,
            users: 10_000,
            seed: 42,
            campaigns: 200,
            start_ms: DEFAULT_START_MS,
            mean_gap_ms: 50.0,
            out_of_order_fraction: 0.02,
            late_fraction: 0.001,
            bot_fraction: 0.01,
            zipf_exponent: 1.1,
        }
    }
}

impl GenConfig {
    /// Check the parameters, explaining the first problem found.
    ///
    /// `events == 0` is allowed (an empty stream). Ids must fit the `BIGINT`
    /// columns, fractions must be probabilities, and the two delay fractions
    /// together cannot exceed 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.events > i64::MAX as u64 {
            return Err(format!("events must be at most {}", i64::MAX));
        }
        if self.users == 0 {
            return Err("users must be at least 1".into());
        }
        if self.campaigns == 0 || self.campaigns > i64::MAX as u64 {
            return Err(format!("campaigns must be in 1..={}", i64::MAX));
        }
        if !(self.mean_gap_ms.is_finite() && self.mean_gap_ms > 0.0) {
            return Err(format!(
                "mean_gap_ms must be a positive finite number, got {}",
                self.mean_gap_ms
            ));
        }
        for (name, v) in [
            ("out_of_order_fraction", self.out_of_order_fraction),
            ("late_fraction", self.late_fraction),
            ("bot_fraction", self.bot_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if self.out_of_order_fraction + self.late_fraction > 1.0 {
            return Err("out_of_order_fraction + late_fraction must not exceed 1".into());
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return Err(format!(
                "zipf_exponent must be a finite number >= 0, got {}",
                self.zipf_exponent
            ));
        }
        Ok(())
    }
}

/// Kind of ad event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The ad was shown.
    Impression,
    /// The ad was clicked (always after an impression of the same user and
    /// campaign).
    Click,
}

impl Kind {
    /// The value of the `kind` column: `"impression"` or `"click"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Impression => "impression",
            Kind::Click => "click",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `ad_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdEvent {
    /// Unique, 1-based, increasing in event-time order (not delivery order).
    pub event_id: i64,
    /// `u` + user number zero-padded to six digits, e.g. `u000123`.
    pub user_id: String,
    /// In `1..=campaigns`.
    pub campaign_id: i64,
    pub kind: Kind,
    /// Dotted-quad IPv4, stable per user.
    pub ip: String,
    /// Browser or crawler user agent, stable per user.
    pub user_agent: String,
    /// True event time, Unix ms. Delivery order may differ.
    pub event_time_ms: i64,
}

/// Whether `ua` is one of the user agents this generator gives to bots.
///
/// Handy for labelling generated data (e.g. checking a bot-detection feature
/// against ground truth); some bot UAs do not look like crawlers to a UA
/// parser on purpose.
pub fn is_bot_user_agent(ua: &str) -> bool {
    users::is_bot_ua(ua)
}

/// Streaming iterator over [`AdEvent`]s in delivery order.
///
/// Yields exactly `cfg.events` events. Internally it generates events in
/// event-time order and passes them through a small reorder buffer keyed by
/// delivery time; memory does not grow with `events`.
pub struct Generator {
    cfg: GenConfig,
    rng: Xoshiro256PlusPlus,
    source: EventSource,
    reorder: ReorderBuffer,
    generated: u64,
    yielded: u64,
}

impl fmt::Debug for Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .field("generated", &self.generated)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Validate `cfg` and set up a generator for it.
    pub fn new(cfg: GenConfig) -> Result<Self, String> {
        cfg.validate()?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let source = EventSource::new(&cfg, &mut rng);
        Ok(Generator {
            cfg,
            rng,
            source,
            reorder: ReorderBuffer::default(),
            generated: 0,
            yielded: 0,
        })
    }

    /// The configuration this generator was built from.
    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// Next event in delivery order, before its strings are rendered.
    fn next_raw(&mut self) -> Option<RawEvent> {
        loop {
            let horizon = (self.generated < self.cfg.events).then(|| self.source.peek_time());
            if let Some(ev) = self.reorder.pop_ready(horizon) {
                return Some(ev);
            }
            horizon?;
            let ev = self.source.next_event(&mut self.rng);
            self.generated += 1;
            let delay = delivery::sample_delay(
                &mut self.rng,
                self.cfg.out_of_order_fraction,
                self.cfg.late_fraction,
            );
            self.reorder.push(ev, delay);
        }
    }

    fn render(&self, ev: RawEvent) -> AdEvent {
        let profile = self.source.population().profile(ev.user);
        AdEvent {
            event_id: ev.id as i64,
            user_id: users::format_user_id(ev.user + 1),
            campaign_id: ev.campaign as i64,
            kind: ev.kind,
            ip: users::format_ip(profile.ip),
            user_agent: profile.user_agent.to_owned(),
            event_time_ms: ev.time_ms,
        }
    }
}

impl Iterator for Generator {
    type Item = AdEvent;

    fn next(&mut self) -> Option<AdEvent> {
        let ev = self.next_raw()?;
        self.yielded += 1;
        Some(self.render(ev))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.cfg.events - self.yielded;
        match usize::try_from(left) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

impl FusedIterator for Generator {}
