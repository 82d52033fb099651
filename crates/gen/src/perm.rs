//! Small, allocation-free building blocks: a 64-bit mixer and an affine
//! permutation of `0..n`.
//!
//! Per-user attributes (ip, user agent, CTR, bot status) are *derived* from
//! the user index with these helpers instead of being stored in tables, so a
//! generator for 100 million users costs no more memory than one for ten.

/// SplitMix64 finalizer: a cheap, well-distributed bijection on `u64`.
///
/// Used to turn `(salt, index)` pairs into independent-looking hashes.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of `index` under `salt`; different salts give unrelated streams.
#[inline]
pub(crate) fn hash2(salt: u64, index: u64) -> u64 {
    mix64(salt ^ mix64(index))
}

/// Map a hash to a uniform float in `[0, 1)` using its top 53 bits.
#[inline]
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Domains up to this size use plain `u64` arithmetic (no `u128` division).
const SMALL_DOMAIN: u64 = u32::MAX as u64;

/// Bijection `k -> (a*k + b) mod n` on `0..n` with `gcd(a, n) = 1`.
///
/// It scatters "rank" order (popularity, bot slot) over user/campaign ids so
/// that the heaviest user is not simply `u000001`, while staying O(1) in
/// memory and invertible (needed to ask "is user `i` a bot?").
#[derive(Debug, Clone)]
pub(crate) struct AffinePerm {
    n: u64,
    a: u64,
    b: u64,
    a_inv: u64,
}

impl AffinePerm {
    /// Build a permutation of `0..n` (`n >= 1`) chosen by `salt`.
    pub(crate) fn new(n: u64, salt: u64) -> Self {
        assert!(n >= 1, "permutation domain must be non-empty");
        if n == 1 {
            return AffinePerm {
                n,
                a: 1,
                b: 0,
                a_inv: 1,
            };
        }
        let mut a = mix64(salt) % n;
        loop {
            if a == 0 {
                a = 1;
            }
            if gcd(a, n) == 1 {
                break;
            }
            a = (a + 1) % n;
        }
        let b = mix64(salt ^ 0x5851_f42d_4c95_7f2d) % n;
        let a_inv = mod_inverse(a, n);
        AffinePerm { n, a, b, a_inv }
    }

    /// Size `n` of the permuted domain `0..n`.
    #[inline]
    pub(crate) fn domain(&self) -> u64 {
        self.n
    }

    /// Image of `k` (`k < n`).
    #[inline]
    pub(crate) fn forward(&self, k: u64) -> u64 {
        if self.n <= SMALL_DOMAIN {
            // a, k, b < 2^32, so a*k + b cannot overflow u64.
            return (self.a * k + self.b) % self.n;
        }
        ((self.a as u128 * k as u128 + self.b as u128) % self.n as u128) as u64
    }

    /// Pre-image of `x` (`x < n`): `forward(inverse(x)) == x`.
    #[inline]
    pub(crate) fn inverse(&self, x: u64) -> u64 {
        if self.n <= SMALL_DOMAIN {
            return ((x + self.n - self.b) % self.n) * self.a_inv % self.n;
        }
        let shifted = (x as u128 + self.n as u128 - self.b as u128) % self.n as u128;
        ((shifted * self.a_inv as u128) % self.n as u128) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// Inverse of `a` modulo `n`, for coprime `a`, `n` (extended Euclid).
fn mod_inverse(a: u64, n: u64) -> u64 {
    let (mut old_r, mut r) = (a as i128, n as i128);
    let (mut old_s, mut s) = (1i128, 0i128);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    debug_assert_eq!(old_r, 1, "a and n must be coprime");
    old_s.rem_euclid(n as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_perm_is_a_bijection() {
        for n in [1u64, 2, 3, 10, 97, 1000, 1024] {
            for salt in 0..5 {
                let p = AffinePerm::new(n, salt);
                let mut seen = vec![false; n as usize];
                for k in 0..n {
                    let x = p.forward(k);
                    assert!(x < n);
                    assert!(!seen[x as usize], "n={n} salt={salt} collides");
                    seen[x as usize] = true;
                    assert_eq!(p.inverse(x), k);
                }
            }
        }
    }

    #[test]
    fn affine_perm_handles_huge_domains() {
        let n = u64::MAX - 58;
        let p = AffinePerm::new(n, 42);
        for k in [0, 1, 12345, n / 2, n - 1] {
            assert_eq!(p.inverse(p.forward(k)), k);
        }
    }

    #[test]
    fn unit_is_in_range() {
        for i in 0..1000 {
            let u = unit(hash2(7, i));
            assert!((0.0..1.0).contains(&u));
        }
        assert!(unit(u64::MAX) < 1.0);
    }
}
