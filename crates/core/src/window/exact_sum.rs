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

/// Integer-valued doubles up to this magnitude are summed in an `i128`
/// (exactly: 2^74 of them fit); anything else goes to the wide accumulator,
/// which is allocated only then. Most feature sums (counts as 1.0/0.0,
/// prices in cents) never need it.
const SMALL_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct ExactSum {
    /// Sum of the integer-valued inputs.
    small: I128,
    /// Everything else, allocated only when the first such input arrives: a
    /// window of integer-valued sums costs 24 bytes.
    big: Option<Box<Wide>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Wide {
    /// Two's-complement little-endian fixed-point integer in units of
    /// 2^-1074, for every other finite input.
    limbs: [u64; LIMBS],
    nan: i64,
    pos_inf: i64,
    neg_inf: i64,
}

/// The serialized form, as earlier versions wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    small: i128,
    big: Option<Box<[u64]>>,
    nan: i64,
    pos_inf: i64,
    neg_inf: i64,
}

impl From<ExactSum> for Wire {
    fn from(e: ExactSum) -> Wire {
        let (big, nan, pos_inf, neg_inf) = match e.big {
            None => (None, 0, 0, 0),
            Some(w) => (
                w.limbs
                    .iter()
                    .any(|&l| l != 0)
                    .then(|| w.limbs.to_vec().into_boxed_slice()),
                w.nan,
                w.pos_inf,
                w.neg_inf,
            ),
        };
        Wire {
            small: e.small.get(),
            big,
            nan,
            pos_inf,
            neg_inf,
        }
    }
}

impl From<Wire> for ExactSum {
    fn from(w: Wire) -> ExactSum {
        let special = w.nan != 0 || w.pos_inf != 0 || w.neg_inf != 0;
        let big = (w.big.is_some() || special).then(|| {
            let mut limbs = [0; LIMBS];
            if let Some(b) = &w.big {
                for (l, v) in limbs.iter_mut().zip(b.iter()) {
                    *l = *v;
                }
            }
            Box::new(Wide {
                limbs,
                nan: w.nan,
                pos_inf: w.pos_inf,
                neg_inf: w.neg_inf,
            })
        });
        ExactSum {
            small: I128::from(w.small),
            big,
        }
    }
}

/// An `i128` stored as two words, so structs holding one stay 8-byte
/// aligned (an `i128` field pads them to 16); serialized as an `i128`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I128 {
    lo: u64,
    hi: u64,
}

impl I128 {
    pub fn get(self) -> i128 {
        ((self.hi as u128) << 64 | self.lo as u128) as i128
    }
}

impl From<i128> for I128 {
    fn from(v: i128) -> I128 {
        I128 {
            lo: v as u64,
            hi: ((v as u128) >> 64) as u64,
        }
    }
}

impl std::ops::AddAssign<i128> for I128 {
    fn add_assign(&mut self, d: i128) {
        *self = I128::from(self.get().wrapping_add(d));
    }
}

impl serde::Serialize for I128 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i128(self.get())
    }
}

impl<'de> serde::Deserialize<'de> for I128 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i128::deserialize(d).map(I128::from)
    }
}

impl ExactSum {
    pub fn add(&mut self, x: f64) {
        if x.fract() == 0.0 && x.abs() <= SMALL_LIMIT {
            self.small += x as i128;
        } else {
            self.apply(x, false)
        }
    }

    pub fn sub(&mut self, x: f64) {
        if x.fract() == 0.0 && x.abs() <= SMALL_LIMIT {
            self.small += -(x as i128);
        } else {
            self.apply(x, true)
        }
    }

    fn wide(&mut self) -> &mut Wide {
        self.big.get_or_insert_with(|| {
            Box::new(Wide {
                limbs: [0; LIMBS],
                nan: 0,
                pos_inf: 0,
                neg_inf: 0,
            })
        })
    }

    fn apply(&mut self, x: f64, remove: bool) {
        let d = if remove { -1 } else { 1 };
        if x.is_nan() {
            self.wide().nan += d;
            return;
        }
        if x.is_infinite() {
            if x > 0.0 {
                self.wide().pos_inf += d;
            } else {
                self.wide().neg_inf += d;
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
        add_at(&mut self.wide().limbs, limb, lo, hi)
    }

    fn sub_at(&mut self, limb: usize, lo: u64, hi: u64) {
        sub_at(&mut self.wide().limbs, limb, lo, hi)
    }

    /// The exact sum, rounded once to the nearest double (ties to even).
    pub fn value(&self) -> f64 {
        let Some(big) = &self.big else {
            // exact integer; the cast rounds to nearest, ties to even
            return self.small.get() as f64;
        };
        if big.nan > 0 || (big.pos_inf > 0 && big.neg_inf > 0) {
            return f64::NAN;
        }
        if big.pos_inf > 0 {
            return f64::INFINITY;
        }
        if big.neg_inf > 0 {
            return f64::NEG_INFINITY;
        }
        let mut mag: [u64; LIMBS] = big.limbs;
        // fold the integer part in at the units bit (2^0 = bit 1074)
        let small = self.small.get();
        let (neg_small, m) = (small < 0, small.unsigned_abs());
        for (k, part) in [(m as u64) as u128, ((m >> 64) as u64) as u128]
            .into_iter()
            .enumerate()
        {
            let bit = BIAS as usize + 64 * k;
            let wide = part << (bit % 64);
            let (lo, hi) = (wide as u64, (wide >> 64) as u64);
            if neg_small {
                sub_at(&mut mag, bit / 64, lo, hi);
            } else {
                add_at(&mut mag, bit / 64, lo, hi);
            }
        }
        let negative = (mag[LIMBS - 1] >> 63) != 0;
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

fn add_at(limbs: &mut [u64], limb: usize, lo: u64, hi: u64) {
    let (v, c1) = limbs[limb].overflowing_add(lo);
    limbs[limb] = v;
    let (v, c2) = limbs[limb + 1].overflowing_add(hi);
    let (v, c3) = v.overflowing_add(c1 as u64);
    limbs[limb + 1] = v;
    let mut carry = c2 || c3;
    let mut i = limb + 2;
    while carry && i < LIMBS {
        let (v, c) = limbs[i].overflowing_add(1);
        limbs[i] = v;
        carry = c;
        i += 1;
    }
}

fn sub_at(limbs: &mut [u64], limb: usize, lo: u64, hi: u64) {
    let (v, b1) = limbs[limb].overflowing_sub(lo);
    limbs[limb] = v;
    let (v, b2) = limbs[limb + 1].overflowing_sub(hi);
    let (v, b3) = v.overflowing_sub(b1 as u64);
    limbs[limb + 1] = v;
    let mut borrow = b2 || b3;
    let mut i = limb + 2;
    while borrow && i < LIMBS {
        let (v, b) = limbs[i].overflowing_sub(1);
        limbs[i] = v;
        borrow = b;
        i += 1;
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

    /// The checkpoint form is the one earlier versions wrote (a plain
    /// `i128`, the limbs as a slice, the special counts), both ways.
    #[test]
    fn checkpoints_keep_the_earlier_form() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Earlier {
            small: i128,
            big: Option<Box<[u64]>>,
            nan: i64,
            pos_inf: i64,
            neg_inf: i64,
        }
        let cfg = bincode::config::standard();
        let mut s = ExactSum::default();
        for x in [3.0, -1e30, 0.25, f64::INFINITY, f64::NAN, 7.0] {
            s.add(x);
        }
        s.sub(f64::NAN);
        s.sub(f64::INFINITY);
        let bytes = bincode::serde::encode_to_vec(&s, cfg).unwrap();
        let old: Earlier = bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0;
        assert_eq!(old.small, 10);
        assert_eq!((old.nan, old.pos_inf, old.neg_inf), (0, 0, 0));
        assert_eq!(old.big.as_ref().map(|b| b.len()), Some(LIMBS));
        let back: ExactSum = bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0;
        assert_eq!(back.value(), s.value());
        let only_int = Earlier {
            small: -(1 << 70),
            big: None,
            nan: 1,
            pos_inf: 0,
            neg_inf: 0,
        };
        let bytes = bincode::serde::encode_to_vec(&only_int, cfg).unwrap();
        let mut back: ExactSum = bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0;
        assert!(back.value().is_nan());
        back.sub(f64::NAN);
        assert_eq!(back.value(), -((1u128 << 70) as f64));
        assert_eq!(std::mem::size_of::<ExactSum>(), 24);
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

        /// Integers (summed apart, in an i128) and fractions mix exactly:
        /// the result is the two-term IEEE sum when there are two terms.
        #[test]
        fn integers_and_fractions_mix(i in -1_000_000_000i64..1_000_000_000, f in -1e9f64..1e9, big in any::<bool>()) {
            let a = if big { (i as f64) * 4096.0 } else { i as f64 };
            let mut s = ExactSum::default();
            s.add(a);
            s.add(f);
            prop_assert_eq!(s.value().to_bits(), (a + f).to_bits());
            s.sub(f);
            prop_assert_eq!(s.value(), a);
            s.add(0.5);
            s.add(-0.5);
            prop_assert_eq!(s.value(), a);
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
