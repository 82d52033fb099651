//! The user population: who is a bot, and each user's stable ip, user agent
//! and click-through rate.
//!
//! Nothing is stored per user. Every attribute is a pure function of the
//! user index and a seed-derived salt, so the same user always looks the same
//! within a run (a stable ip and UA, as in real logs) and memory stays O(1)
//! whatever the number of users.

use crate::perm::{hash2, mix64, unit, AffinePerm};

/// Human CTR range: a few percent, typical for display ads.
pub(crate) const HUMAN_CTR: (f64, f64) = (0.02, 0.04);
/// Bot CTR range: click fraud shows up as an abnormally high CTR.
pub(crate) const BOT_CTR: (f64, f64) = (0.30, 0.60);
/// A bot produces, on average, this many times the events of an average
/// user (on top of whatever its Zipf rank gives it).
pub(crate) const BOT_RATE_MULTIPLIER: f64 = 5.0;
/// Cap on the share of organic events that come from the dedicated bot
/// stream, so that a large `bot_fraction` cannot drown out humans entirely.
pub(crate) const MAX_BOT_STREAM_SHARE: f64 = 0.5;

/// Real-looking browser user agents with rough market-share weights
/// (weights sum to 100). All parse as ordinary browsers with `woothee`.
const HUMAN_UAS: &[(u32, &str)] = &[
    (24, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    (18, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"),
    (16, "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"),
    (8, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    (7, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"),
    (7, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0"),
    (5, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"),
    (4, "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36"),
    (3, "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"),
    (3, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1"),
    (2, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0"),
    (2, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    (1, "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
];

/// Crawler / scripted-client user agents, each with the first two octets of
/// the network it typically comes from (search engines from their own
/// ranges, scripts from cloud providers). Most are recognisable as crawlers
/// by a UA parser; the scripted clients (`python-requests`, `Go-http-client`)
/// deliberately are not, so a bot detector has to look at behaviour too.
const BOT_UAS: &[(&str, [u8; 2])] = &[
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        [66, 249],
    ),
    (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        [157, 55],
    ),
    (
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        [54, 36],
    ),
    (
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        [5, 255],
    ),
    ("python-requests/2.31.0", [3, 91]),
    ("curl/8.4.0", [34, 82]),
    ("Wget/1.21.4", [52, 14]),
    ("Go-http-client/1.1", [35, 190]),
];

/// First octets of large consumer ISP ranges (public, non-reserved), so
/// human ips look like residential / mobile addresses.
const HUMAN_FIRST_OCTETS: &[u8] = &[
    24, 67, 68, 71, 73, 76, 98, 99, 174, 2, 5, 31, 37, 46, 78, 81, 82, 86, 90, 92, 109, 151, 176,
    188, 1, 27, 36, 49, 58, 101, 112, 114, 117, 121, 124, 177, 179, 186, 187, 189, 200, 201,
];

/// Whether `ua` is one of the generator's bot user agents.
pub(crate) fn is_bot_ua(ua: &str) -> bool {
    BOT_UAS.iter().any(|(b, _)| *b == ua)
}

/// Stable attributes of one user, derived on demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile {
    pub(crate) is_bot: bool,
    pub(crate) ctr: f64,
    pub(crate) ip: [u8; 4],
    pub(crate) user_agent: &'static str,
}

/// The user population of one generator.
#[derive(Debug, Clone)]
pub(crate) struct Population {
    users: u64,
    bots: u64,
    /// Popularity rank (0 = heaviest) -> user index.
    by_rank: AffinePerm,
    /// Bot slot (`0..bots`) -> user index; its inverse answers "is a bot?".
    by_bot_slot: AffinePerm,
    salt: u64,
}

impl Population {
    pub(crate) fn new(users: u64, bot_fraction: f64, seed: u64) -> Self {
        let salt = mix64(seed ^ 0x00c0_ffee_0000_0001);
        let bots = ((users as f64) * bot_fraction).round() as u64;
        Population {
            users,
            bots: bots.min(users),
            by_rank: AffinePerm::new(users, salt ^ 0x1111),
            by_bot_slot: AffinePerm::new(users, salt ^ 0x2222),
            salt,
        }
    }

    pub(crate) fn users(&self) -> u64 {
        self.users
    }

    pub(crate) fn bots(&self) -> u64 {
        self.bots
    }

    /// User index of popularity rank `rank` (0-based).
    #[inline]
    pub(crate) fn user_by_rank(&self, rank: u64) -> u64 {
        self.by_rank.forward(rank.min(self.users - 1))
    }

    /// User index of bot slot `slot` (`slot < bots()`).
    #[inline]
    pub(crate) fn bot_by_slot(&self, slot: u64) -> u64 {
        self.by_bot_slot.forward(slot)
    }

    #[inline]
    pub(crate) fn is_bot(&self, user: u64) -> bool {
        self.bots > 0 && self.by_bot_slot.inverse(user) < self.bots
    }

    /// The stable ip / UA / CTR of `user`.
    pub(crate) fn profile(&self, user: u64) -> Profile {
        let h = hash2(self.salt, user);
        let h2 = mix64(h);
        let is_bot = self.is_bot(user);
        if is_bot {
            let (ua, prefix) = BOT_UAS[(h % BOT_UAS.len() as u64) as usize];
            Profile {
                is_bot,
                ctr: lerp(BOT_CTR, unit(h2)),
                ip: [prefix[0], prefix[1], (h2 >> 8) as u8, last_octet(h2 >> 16)],
                user_agent: ua,
            }
        } else {
            let first = HUMAN_FIRST_OCTETS[((h >> 32) % HUMAN_FIRST_OCTETS.len() as u64) as usize];
            Profile {
                is_bot,
                ctr: lerp(HUMAN_CTR, unit(h2)),
                ip: [
                    first,
                    (h2 >> 8) as u8,
                    (h2 >> 16) as u8,
                    last_octet(h2 >> 24),
                ],
                user_agent: pick_human_ua((h % 100) as u32),
            }
        }
    }
}

#[inline]
fn lerp((lo, hi): (f64, f64), u: f64) -> f64 {
    lo + (hi - lo) * u
}

/// A host octet in `1..=254` (avoid network / broadcast looking addresses).
#[inline]
fn last_octet(h: u64) -> u8 {
    1 + (h % 254) as u8
}

fn pick_human_ua(mut roll: u32) -> &'static str {
    for &(w, ua) in HUMAN_UAS {
        if roll < w {
            return ua;
        }
        roll -= w;
    }
    HUMAN_UAS[0].1
}

/// Render `u` followed by `n` zero-padded to at least six digits
/// (`u000123`), without going through `fmt`.
pub(crate) fn format_user_id(n: u64) -> String {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = buf.len() - i;
    let mut s = String::with_capacity(1 + digits.max(6));
    s.push('u');
    for _ in digits..6 {
        s.push('0');
    }
    for &d in &buf[i..] {
        s.push(d as char);
    }
    s
}

/// Dotted-quad rendering of an ip, without going through `fmt`.
pub(crate) fn format_ip(ip: [u8; 4]) -> String {
    let mut s = String::with_capacity(15);
    for (k, &o) in ip.iter().enumerate() {
        if k > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push((b'0' + o / 100) as char);
        }
        if o >= 10 {
            s.push((b'0' + (o / 10) % 10) as char);
        }
        s.push((b'0' + o % 10) as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ua_weights_sum_to_100() {
        assert_eq!(HUMAN_UAS.iter().map(|(w, _)| w).sum::<u32>(), 100);
    }

    #[test]
    fn formats() {
        assert_eq!(format_user_id(123), "u000123");
        assert_eq!(format_user_id(0), "u000000");
        assert_eq!(format_user_id(1_234_567), "u1234567");
        assert_eq!(format_ip([10, 0, 255, 7]), "10.0.255.7");
        assert_eq!(format_ip([192, 168, 1, 100]), "192.168.1.100");
    }

    #[test]
    fn bot_count_and_membership() {
        let p = Population::new(10_000, 0.01, 9);
        assert_eq!(p.bots(), 100);
        let counted = (0..p.users()).filter(|&u| p.is_bot(u)).count();
        assert_eq!(counted, 100);
        for slot in 0..p.bots() {
            assert!(p.is_bot(p.bot_by_slot(slot)));
        }
        assert_eq!(Population::new(50, 0.0, 1).bots(), 0);
        assert_eq!(Population::new(50, 1.0, 1).bots(), 50);
    }

    #[test]
    fn profiles_are_stable_and_consistent() {
        let p = Population::new(1000, 0.05, 3);
        for u in 0..1000 {
            let a = p.profile(u);
            assert_eq!(a, p.profile(u));
            assert_eq!(a.is_bot, is_bot_ua(a.user_agent));
            let range = if a.is_bot { BOT_CTR } else { HUMAN_CTR };
            assert!(a.ctr >= range.0 && a.ctr <= range.1);
            assert!(a.ip[3] >= 1 && a.ip[3] <= 254);
        }
    }

    #[test]
    fn user_agents_classify_as_expected() {
        let parser = woothee::parser::Parser::new();
        for (_, ua) in HUMAN_UAS {
            let r = parser.parse(ua).expect("human UA parses");
            assert!(
                r.category == "pc" || r.category == "smartphone",
                "{ua} -> {}",
                r.category
            );
        }
        let crawlers = BOT_UAS
            .iter()
            .filter(|(ua, _)| parser.parse(ua).is_some_and(|r| r.category == "crawler"))
            .count();
        assert!(crawlers >= 4, "only {crawlers} bot UAs look like crawlers");
    }
}
