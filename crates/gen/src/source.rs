//! Event-time generation: the "true" order in which things happen.
//!
//! Two kinds of events are merged by event time:
//!
//! * *organic* impressions, arriving as a Poisson process (exponential gaps)
//!   with a Zipf-chosen user and campaign;
//! * *follow-up* clicks, scheduled when an impression is generated and held
//!   in a small min-heap until their time comes.
//!
//! Because every click is scheduled from an impression with a strictly
//! positive delay, a click always follows an impression of the same user and
//! campaign in event time. Ids are handed out in event-time order, so
//! `event_id` and `event_time_ms` increase together.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;
use rand_distr::{Distribution, Exp1, Zipf};

use crate::perm::AffinePerm;
use crate::users::{Population, BOT_CTR, BOT_RATE_MULTIPLIER, HUMAN_CTR, MAX_BOT_STREAM_SHARE};
use crate::{GenConfig, Kind};

/// Campaign popularity is skewed, but less than user activity.
const CAMPAIGN_ZIPF_EXPONENT: f64 = 0.9;
/// Human click delay: log-scaled between 2 s and 10 min, biased to short.
const HUMAN_CLICK_DELAY_MS: (f64, f64) = (2_000.0, 600_000.0);
/// Bot click delay: scripted, fast and narrow.
const BOT_CLICK_DELAY_MS: (i64, i64) = (150, 2_500);

/// A generated event before its strings are rendered; cheap to buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) id: u64,
    pub(crate) user: u64,
    pub(crate) campaign: u64,
    pub(crate) kind: Kind,
    pub(crate) time_ms: i64,
}

/// A click waiting for its event time. Ordered by `(time_ms, impression)`
/// so ties resolve deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PendingClick {
    time_ms: i64,
    impression: u64,
    user: u64,
    campaign: u64,
}

pub(crate) struct EventSource {
    population: Population,
    user_zipf: Zipf<f64>,
    campaign_zipf: Zipf<f64>,
    campaign_perm: AffinePerm,
    /// Probability that an organic event comes from the dedicated bot stream.
    bot_stream_share: f64,
    start_ms: i64,
    /// Offset of the next organic event from `start_ms`, in fractional ms.
    clock: f64,
    /// Mean gap between organic events, stretched so that organic events
    /// plus the clicks they cause average `mean_gap_ms` apart.
    organic_gap_ms: f64,
    pending: BinaryHeap<Reverse<PendingClick>>,
    next_id: u64,
}

impl EventSource {
    /// `cfg` must already be validated.
    pub(crate) fn new(cfg: &GenConfig, rng: &mut Xoshiro256PlusPlus) -> Self {
        let population = Population::new(cfg.users, cfg.bot_fraction, cfg.seed);
        let bot_share_of_users = population.bots() as f64 / population.users() as f64;
        let bot_stream_share = (BOT_RATE_MULTIPLIER * bot_share_of_users).min(MAX_BOT_STREAM_SHARE);
        // Expected clicks per organic impression, treating the Zipf stream's
        // bots as spread evenly over ranks (they are: slots are scattered).
        let p_bot = bot_stream_share + (1.0 - bot_stream_share) * bot_share_of_users;
        let mean = |(lo, hi): (f64, f64)| (lo + hi) / 2.0;
        let clicks_per_organic = p_bot * mean(BOT_CTR) + (1.0 - p_bot) * mean(HUMAN_CTR);
        let campaign_salt = rng.random::<u64>();
        EventSource {
            user_zipf: Zipf::new(cfg.users as f64, cfg.zipf_exponent)
                .expect("validated zipf parameters"),
            campaign_zipf: Zipf::new(cfg.campaigns as f64, CAMPAIGN_ZIPF_EXPONENT)
                .expect("validated campaign count"),
            campaign_perm: AffinePerm::new(cfg.campaigns, campaign_salt),
            population,
            bot_stream_share,
            start_ms: cfg.start_ms,
            clock: 0.0,
            organic_gap_ms: cfg.mean_gap_ms * (1.0 + clicks_per_organic),
            pending: BinaryHeap::new(),
            next_id: 1,
        }
    }

    pub(crate) fn population(&self) -> &Population {
        &self.population
    }

    #[inline]
    fn organic_time(&self) -> i64 {
        // `as` saturates, and the clock is never negative.
        self.start_ms.saturating_add(self.clock as i64)
    }

    /// Event time of the event the next `next_event` call will return.
    #[inline]
    pub(crate) fn peek_time(&self) -> i64 {
        let organic = self.organic_time();
        match self.pending.peek() {
            Some(Reverse(c)) if c.time_ms <= organic => c.time_ms,
            _ => organic,
        }
    }

    /// Produce the next event in event-time order.
    pub(crate) fn next_event(&mut self, rng: &mut Xoshiro256PlusPlus) -> RawEvent {
        let organic = self.organic_time();
        let id = self.next_id;
        self.next_id += 1;
        if let Some(Reverse(c)) = self.pending.peek().copied() {
            if c.time_ms <= organic {
                self.pending.pop();
                return RawEvent {
                    id,
                    user: c.user,
                    campaign: c.campaign,
                    kind: Kind::Click,
                    time_ms: c.time_ms,
                };
            }
        }
        let user = self.pick_user(rng);
        let campaign = self.pick_campaign(rng);
        let profile = self.population.profile(user);
        if rng.random::<f64>() < profile.ctr {
            let delay = if profile.is_bot {
                rng.random_range(BOT_CLICK_DELAY_MS.0..=BOT_CLICK_DELAY_MS.1)
            } else {
                let u: f64 = rng.random();
                let (lo, hi) = HUMAN_CLICK_DELAY_MS;
                // lo * (hi/lo)^(u^2): median ~8 s, long tail up to `hi`.
                (lo * (hi / lo).powf(u * u)) as i64
            };
            self.pending.push(Reverse(PendingClick {
                time_ms: organic.saturating_add(delay.max(1)),
                impression: id,
                user,
                campaign,
            }));
        }
        let gap: f64 = Exp1.sample(rng);
        self.clock += gap * self.organic_gap_ms;
        RawEvent {
            id,
            user,
            campaign,
            kind: Kind::Impression,
            time_ms: organic,
        }
    }

    fn pick_user(&self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        let bots = self.population.bots();
        if bots > 0 && rng.random::<f64>() < self.bot_stream_share {
            return self.population.bot_by_slot(rng.random_range(0..bots));
        }
        let rank = self.user_zipf.sample(rng) as u64;
        self.population.user_by_rank(rank.saturating_sub(1))
    }

    /// Campaign id in `1..=campaigns`.
    fn pick_campaign(&self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        let rank = (self.campaign_zipf.sample(rng) as u64).saturating_sub(1);
        let rank = rank.min(self.campaign_perm.domain() - 1);
        self.campaign_perm.forward(rank) + 1
    }
}
