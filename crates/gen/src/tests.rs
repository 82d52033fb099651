//! Behavioural tests of the generator. Statistical bounds are deliberately
//! loose; they guard against gross mistakes, not sampling noise.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::*;

const WATERMARK_LATENESS_MS: i64 = 30_000;

fn cfg(events: u64, users: u64, seed: u64) -> GenConfig {
    GenConfig {
        events,
        users,
        seed,
        ..GenConfig::default()
    }
}

/// One shared 200k-event sample with default parameters.
fn sample() -> &'static [AdEvent] {
    static SAMPLE: OnceLock<Vec<AdEvent>> = OnceLock::new();
    SAMPLE.get_or_init(|| Generator::new(cfg(200_000, 10_000, 1)).unwrap().collect())
}

#[test]
fn same_seed_same_output_different_seed_different_output() {
    let a: Vec<_> = Generator::new(cfg(20_000, 500, 7)).unwrap().collect();
    let b: Vec<_> = Generator::new(cfg(20_000, 500, 7)).unwrap().collect();
    let c: Vec<_> = Generator::new(cfg(20_000, 500, 8)).unwrap().collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn yields_exactly_the_configured_number_of_events() {
    for (events, ooo, late) in [
        (0, 0.02, 0.001),
        (1, 0.02, 0.001),
        (17, 0.5, 0.5),
        (10_000, 0.02, 0.001),
        (5_000, 0.0, 1.0),
        (5_000, 0.0, 0.0),
    ] {
        let c = GenConfig {
            out_of_order_fraction: ooo,
            late_fraction: late,
            ..cfg(events, 100, 3)
        };
        let mut g = Generator::new(c).unwrap();
        assert_eq!(g.size_hint(), (events as usize, Some(events as usize)));
        assert_eq!(g.by_ref().count() as u64, events);
        assert_eq!(g.next(), None, "fused after the end");
    }
}

#[test]
fn event_ids_are_exactly_one_to_n_and_follow_event_time() {
    let events = sample();
    let mut by_id: Vec<Option<i64>> = vec![None; events.len() + 1];
    for e in events {
        assert!(e.event_id >= 1 && e.event_id as usize <= events.len());
        let slot = &mut by_id[e.event_id as usize];
        assert!(slot.is_none(), "duplicate event_id {}", e.event_id);
        *slot = Some(e.event_time_ms);
    }
    let times: Vec<i64> = by_id[1..].iter().map(|t| t.unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "event time must not decrease with event_id"
    );
    assert_eq!(times[0], DEFAULT_START_MS);
}

#[test]
fn fields_are_well_formed_and_user_attributes_are_stable() {
    let mut seen: HashMap<&str, (&str, &str)> = HashMap::new();
    for e in sample() {
        assert!((1..=200).contains(&e.campaign_id));
        let digits = e.user_id.strip_prefix('u').expect("u prefix");
        assert!(digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()));
        let n: u64 = digits.parse().unwrap();
        assert!((1..=10_000).contains(&n));
        assert_eq!(e.ip.split('.').count(), 4);
        assert!(e.ip.split('.').all(|o| o.parse::<u8>().is_ok()));
        let prev = seen.insert(&e.user_id, (&e.ip, &e.user_agent));
        if let Some(p) = prev {
            assert_eq!(p, (e.ip.as_str(), e.user_agent.as_str()), "{}", e.user_id);
        }
    }
    assert_eq!(Kind::Impression.as_str(), "impression");
    assert_eq!(Kind::Click.to_string(), "click");
}

#[test]
fn every_click_follows_an_impression_of_same_user_and_campaign() {
    let events = sample();
    let mut first_impression: HashMap<(&str, i64), i64> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Impression) {
        let t = first_impression
            .entry((&e.user_id, e.campaign_id))
            .or_insert(e.event_time_ms);
        *t = (*t).min(e.event_time_ms);
    }
    let mut clicks = 0;
    for e in events.iter().filter(|e| e.kind == Kind::Click) {
        clicks += 1;
        let t = first_impression
            .get(&(e.user_id.as_str(), e.campaign_id))
            .unwrap_or_else(|| panic!("click {} has no impression", e.event_id));
        assert!(
            *t < e.event_time_ms,
            "click {} precedes impression",
            e.event_id
        );
    }
    assert!(clicks > 1_000, "only {clicks} clicks");
}

#[test]
fn humans_click_a_few_percent_bots_far_more() {
    let mut counts = [[0u64; 2]; 2]; // [is_bot][is_click]
    for e in sample() {
        let bot = is_bot_user_agent(&e.user_agent) as usize;
        counts[bot][(e.kind == Kind::Click) as usize] += 1;
    }
    let ctr = |c: [u64; 2]| c[1] as f64 / c[0] as f64;
    let (human, bot) = (ctr(counts[0]), ctr(counts[1]));
    assert!((0.015..0.05).contains(&human), "human CTR {human}");
    assert!((0.25..0.65).contains(&bot), "bot CTR {bot}");
    let bot_events = counts[1][0] + counts[1][1];
    assert!(bot_events > 2_000, "only {bot_events} bot events");
}

#[test]
fn bots_are_more_active_than_the_typical_user() {
    let mut per_user: HashMap<&str, (bool, u64)> = HashMap::new();
    for e in sample() {
        let entry = per_user
            .entry(&e.user_id)
            .or_insert((is_bot_user_agent(&e.user_agent), 0));
        entry.1 += 1;
    }
    let mean = |bot: bool| {
        let v: Vec<u64> = per_user
            .values()
            .filter(|(b, _)| *b == bot)
            .map(|(_, n)| *n)
            .collect();
        v.iter().sum::<u64>() as f64 / v.len() as f64
    };
    let (bots, humans) = (mean(true), mean(false));
    assert!(bots > 2.0 * humans, "bots {bots} vs humans {humans}");
}

#[test]
fn user_activity_is_zipf_skewed() {
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for e in sample() {
        *per_user.entry(&e.user_id).or_default() += 1;
    }
    let mut counts: Vec<u64> = per_user.into_values().collect();
    counts.sort_unstable();
    let top = *counts.last().unwrap();
    let median = counts[counts.len() / 2];
    assert!(top > 100 * median.max(1), "top {top} vs median {median}");
    assert!(
        counts.len() > 2_000,
        "long tail too short: {}",
        counts.len()
    );
}

#[test]
fn campaigns_are_skewed_and_cover_the_range() {
    let mut per_campaign: HashMap<i64, u64> = HashMap::new();
    for e in sample() {
        *per_campaign.entry(e.campaign_id).or_default() += 1;
    }
    let mut counts: Vec<u64> = per_campaign.into_values().collect();
    counts.sort_unstable();
    assert!(counts.len() > 150, "{} campaigns seen", counts.len());
    assert!(*counts.last().unwrap() > 10 * counts[counts.len() / 2]);
}

#[test]
fn mean_gap_matches_configuration() {
    let events = sample();
    let last = events.iter().map(|e| e.event_time_ms).max().unwrap();
    let gap = (last - DEFAULT_START_MS) as f64 / (events.len() - 1) as f64;
    assert!((45.0..55.0).contains(&gap), "mean gap {gap} ms");
}

/// Fractions of deliveries that are behind the max event time seen so far
/// (out of order at all) and behind it by more than the watermark lateness.
fn disorder(events: &[AdEvent]) -> (f64, f64) {
    let (mut max_seen, mut behind, mut too_late) = (i64::MIN, 0u64, 0u64);
    for e in events {
        if e.event_time_ms < max_seen {
            behind += 1;
            if max_seen - e.event_time_ms > WATERMARK_LATENESS_MS {
                too_late += 1;
            }
        }
        max_seen = max_seen.max(e.event_time_ms);
    }
    let n = events.len() as f64;
    (behind as f64 / n, too_late as f64 / n)
}

#[test]
fn delivery_disorder_matches_configuration() {
    let (behind, too_late) = disorder(sample());
    // 2 % a little late + 0.1 % very late; nearly all of them get overtaken.
    assert!((0.017..0.025).contains(&behind), "out of order {behind}");
    assert!(
        (0.0005..0.0016).contains(&too_late),
        "beyond lateness {too_late}"
    );

    let in_order = GenConfig {
        out_of_order_fraction: 0.0,
        late_fraction: 0.0,
        ..cfg(20_000, 100, 5)
    };
    let events: Vec<_> = Generator::new(in_order).unwrap().collect();
    assert_eq!(disorder(&events), (0.0, 0.0));
    assert!(events.windows(2).all(|w| w[0].event_id < w[1].event_id));
}

#[test]
fn reorder_buffer_stays_small() {
    let mut g = Generator::new(cfg(100_000, 1_000, 11)).unwrap();
    let mut max_len = 0;
    while g.next().is_some() {
        max_len = max_len.max(g.reorder.len());
    }
    // ~12 000 events per 10 min, 0.1 % of them very late, plus ~8 in the
    // 20 s window: far below the event count.
    assert!(max_len < 200, "reorder buffer grew to {max_len}");
}

#[test]
fn validate_rejects_bad_configs() {
    let ok = GenConfig::default();
    assert_eq!(ok.validate(), Ok(()));
    assert!(GenConfig {
        events: 0,
        ..ok.clone()
    }
    .validate()
    .is_ok());
    let bad = [
        GenConfig {
            users: 0,
            ..ok.clone()
        },
        GenConfig {
            campaigns: 0,
            ..ok.clone()
        },
        GenConfig {
            mean_gap_ms: 0.0,
            ..ok.clone()
        },
        GenConfig {
            mean_gap_ms: f64::NAN,
            ..ok.clone()
        },
        GenConfig {
            out_of_order_fraction: -0.1,
            ..ok.clone()
        },
        GenConfig {
            late_fraction: 1.5,
            ..ok.clone()
        },
        GenConfig {
            bot_fraction: f64::NAN,
            ..ok.clone()
        },
        GenConfig {
            out_of_order_fraction: 0.7,
            late_fraction: 0.4,
            ..ok.clone()
        },
        GenConfig {
            zipf_exponent: -1.0,
            ..ok.clone()
        },
        GenConfig {
            zipf_exponent: f64::INFINITY,
            ..ok.clone()
        },
        GenConfig {
            events: u64::MAX,
            ..ok.clone()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?} accepted");
        assert!(Generator::new(c).is_err());
    }
}

#[test]
fn edge_populations_work() {
    // One user, one campaign, all bots, uniform popularity.
    for c in [
        GenConfig {
            campaigns: 1,
            ..cfg(2_000, 1, 1)
        },
        GenConfig {
            bot_fraction: 1.0,
            ..cfg(2_000, 10, 1)
        },
        GenConfig {
            zipf_exponent: 0.0,
            ..cfg(2_000, 10, 1)
        },
        GenConfig {
            bot_fraction: 0.0,
            ..cfg(2_000, 10, 1)
        },
    ] {
        let events: Vec<_> = Generator::new(c.clone()).unwrap().collect();
        assert_eq!(events.len(), 2_000);
        let users: HashSet<_> = events.iter().map(|e| e.user_id.as_str()).collect();
        assert!(users.len() as u64 <= c.users);
        let bots = events
            .iter()
            .filter(|e| is_bot_user_agent(&e.user_agent))
            .count();
        if c.bot_fraction == 1.0 {
            assert_eq!(bots, events.len());
        }
        if c.bot_fraction == 0.0 {
            assert_eq!(bots, 0);
        }
    }
}
