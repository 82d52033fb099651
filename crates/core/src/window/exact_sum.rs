//! An exact, invertible sum of doubles.
//!
//! Sliding windows add and remove values in an order that depends on how
//! events arrived. With plain `f64` addition, `(a + b) - a` need not equal
//! `b`, so an incremental SUM would drift from a sum recomputed from scratch,
//! and the online path could disagree with a replay. This accumulator keeps the
//! sum as a fixed-point integer wide enough for every finite double (units of
//! 2^-1074), so adding and removing are exact, the order never matters, and the
//! result is the exact sum rounded once to the nearest double.

const LIMBS: usize = 36;
const BIAS: i32 = 1074;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExactSum {
    /// Two's-complement little-endian fixed-point integer.
    limbs: Box<[u64; LIMBS]>,
    nan: i64,
    pos_inf: i64,
    neg_inf: i64,
}

impl Default for ExactSum {
    fn default() -> Self {
        ExactSum {
            limbs: Box::new([0; LIMBS]),
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
        }
    }
}

impl ExactSum {
    pub fn add(&mut self, x: f64) {
        self.apply(x, false)
    }

    pub fn sub(&mut self, x: f64) {
        self.apply(x, true)
    }

    fn apply(&mut self, x: f64, remove: bool) {
        let d = if remove { -1 } else { 1 };
        if x.is_nan() {
            self.nan += d;
            return;
        }
        if x.is_infinite() {
            if x > 0.0 {
                self.pos_inf += d;
            } else {
                self.neg_inf += d;
            }
            return;
        }
        if x == 0.0 {
            return;
        }
        let bits = x.to_bits();
        let negative = (bits >> 63) != 0;
        let exp = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1u64 << 52) - 1);
        // value = mant * 2^(shift - BIAS)
        let (mant, shift) = if exp == 0 {
            (frac, 0)
        } else {
            (frac | (1u64 << 52), exp - 1)
        };
        let shift = shift as usize; // exponent + BIAS, 0 ..= 2045
        let limb = shift / 64;
        let wide = (mant as u128) << (shift % 64);
        let lo = wide as u64;
        let hi = (wide >> 64) as u64;
        if negative != remove {
            self.sub_at(limb, lo, hi);
        } else {
            self.add_at(limb, lo, hi);
        }
    }

    fn add_at(&mut self, limb: usize, lo: u64, hi: u64) {
        let (v, c1) = self.limbs[limb].overflowing_add(lo);
        self.limbs[limb] = v;
        let (v, c2) = self.limbs[limb + 1].overflowing_add(hi);
        let (v, c3) = v.overflowing_add(c1 as u64);
        self.limbs[limb + 1] = v;
        let mut carry = c2 || c3;
        let mut i = limb + 2;
        while carry && i < LIMBS {
            let (v, c) = self.limbs[i].overflowing_add(1);
            self.limbs[i] = v;
            carry = c;
            i += 1;
        }
    }

    fn sub_at(&mut self, limb: usize, lo: u64, hi: u64) {
        let (v, b1) = self.limbs[limb].overflowing_sub(lo);
        self.limbs[limb] = v;
        let (v, b2) = self.limbs[limb + 1].overflowing_sub(hi);
        let (v, b3) = v.overflowing_sub(b1 as u64);
        self.limbs[limb + 1] = v;
        let mut borrow = b2 || b3;
        let mut i = limb + 2;
        while borrow && i < LIMBS {
            let (v, b) = self.limbs[i].overflowing_sub(1);
            self.limbs[i] = v;
            borrow = b;
            i += 1;
        }
    }

    /// The exact sum, rounded once to the nearest double (ties to even).
    pub fn value(&self) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            return f64::NAN;
        }
        if self.pos_inf > 0 {
            return f64::INFINITY;
        }
        if self.neg_inf > 0 {
            return f64::NEG_INFINITY;
        }
        let negative = (self.limbs[LIMBS - 1] >> 63) != 0;
        let mut mag = *self.limbs;
        if negative {
            // two's complement negation
            let mut carry = true;
            for l in mag.iter_mut() {
                let (v, c) = (!*l).overflowing_add(carry as u64);
                *l = v;
                carry = c;
            }
        }
        let Some(top) = mag.iter().rposition(|&l| l != 0) else {
            return 0.0;
        };
        let lead = 63 - mag[top].leading_zeros() as usize;
        let p = top * 64 + lead; // index of the highest set bit
        let v = if p < 64 {
            mag[0] as f64 * pow2(-BIAS)
        } else {
            // 64 bits starting at p, plus a sticky bit for everything below.
            let start = p - 63;
            let window = read_bits(&mag, start);
            let (full, part) = (start / 64, start % 64);
            let sticky = mag[..full].iter().any(|&l| l != 0)
                || (part > 0 && mag[full] & ((1u64 << part) - 1) != 0);
            let f = (window | sticky as u64) as f64;
            let e = start as i32 - BIAS;
            // split the scaling so that neither factor overflows
            let half = e / 2;
            f * pow2(half) * pow2(e - half)
        };
        if negative {
            -v
        } else {
            v
        }
    }
}

fn read_bits(mag: &[u64; LIMBS], start: usize) -> u64 {
    let limb = start / 64;
    let off = start % 64;
    if off == 0 {
        mag[limb]
    } else {
        let next = if limb + 1 < LIMBS { mag[limb + 1] } else { 0 };
        (mag[limb] >> off) | (next << (64 - off))
    }
}

/// 2^k exactly, for k in -1074 ..= 1023; saturates to 0 / infinity outside.
fn pow2(k: i32) -> f64 {
    if k > 1023 {
        f64::INFINITY
    } else if k >= -1022 {
        f64::from_bits(((k + 1023) as u64) << 52)
    } else if k >= -1074 {
        f64::from_bits(1u64 << (k + 1074))
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_exactly_where_naive_addition_drifts() {
        let mut s = ExactSum::default();
        s.add(1e100);
        s.add(1.0);
        s.sub(1e100);
        assert_eq!(s.value(), 1.0);
        let mut s = ExactSum::default();
        for _ in 0..10 {
            s.add(0.1);
        }
        // exact sum of ten copies of the double nearest 0.1, rounded once
        assert_eq!(s.value(), 1.0000000000000000555f64);
    }

    #[test]
    fn handles_specials_and_extremes() {
        let mut s = ExactSum::default();
        s.add(f64::MAX);
        s.add(f64::MAX);
        assert_eq!(s.value(), f64::INFINITY);
        s.sub(f64::MAX);
        assert_eq!(s.value(), f64::MAX);
        let mut s = ExactSum::default();
        s.add(f64::from_bits(1));
        assert_eq!(s.value(), f64::from_bits(1));
        s.add(-3.5);
        assert_eq!(s.value(), -3.5);
        s.add(f64::INFINITY);
        assert_eq!(s.value(), f64::INFINITY);
        s.add(f64::NEG_INFINITY);
        assert!(s.value().is_nan());
        s.sub(f64::INFINITY);
        s.sub(f64::NEG_INFINITY);
        assert_eq!(s.value(), -3.5);
    }

    proptest! {
        /// Two values: the exact sum rounded once is what IEEE addition gives.
        #[test]
        fn two_term_sum_matches_ieee(a in any::<f64>().prop_filter("finite", |x| x.is_finite()),
                                     b in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let mut s = ExactSum::default();
            s.add(a);
            s.add(b);
            let expect = a + b;
            if expect.is_finite() {
                prop_assert_eq!(s.value().to_bits(), (a + b).to_bits() & !(if expect == 0.0 { 1u64 << 63 } else { 0 }));
            }
        }

        /// Order of additions and removals never changes the result.
        #[test]
        fn order_independent(xs in proptest::collection::vec(-1e6f64..1e6, 0..40), cut in 0usize..40) {
            let mut a = ExactSum::default();
            for x in &xs { a.add(*x); }
            let mut b = ExactSum::default();
            for x in xs.iter().rev() { b.add(*x); }
            prop_assert_eq!(a.value().to_bits(), b.value().to_bits());
            let cut = cut.min(xs.len());
            let mut c = ExactSum::default();
            for x in &xs { c.add(*x); }
            for x in &xs[..cut] { c.sub(*x); }
            let mut d = ExactSum::default();
            for x in &xs[cut..] { d.add(*x); }
            prop_assert_eq!(c.value().to_bits(), d.value().to_bits());
        }
    }
}
