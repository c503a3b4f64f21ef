//! How many distinct destinations a source reached, in bounded memory: exact while small
//! (the common case, and what a test can assert), a HyperLogLog once large (a scan).
//!
//! Values enter as 32-bit fingerprints (the top half of a 64-bit hash). The sparse form keeps
//! up to [`SPARSE_MAX`] of them sorted; past that it turns into [`REGISTERS`] one-byte
//! HyperLogLog registers indexed by the fingerprint's top [`INDEX_BITS`] bits, ranked by the
//! leading zeros of the other 22. Either form takes at most 1 KiB. The dense estimate's
//! standard error is 1.04/√1024 ≈ 3.25 %; fingerprints collide with probability about
//! n²/2³³ (under 10⁻⁵ at 256), so the sparse form is exact in practice.

/// Fingerprints kept exactly before switching to registers (4 bytes each: 1 KiB).
pub const SPARSE_MAX: usize = 256;
/// Register index bits: 2^10 registers.
pub const INDEX_BITS: u32 = 10;
pub const REGISTERS: usize = 1 << INDEX_BITS;
/// The largest either form grows to, in bytes of payload.
pub const MAX_BYTES: usize = REGISTERS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distinct {
    /// Sorted, deduplicated fingerprints.
    Sparse(Vec<u32>),
    Dense(Box<[u8; REGISTERS]>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Sparse(Vec::new())
    }
}

/// The fingerprint of a 64-bit hash.
pub fn fingerprint(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn register(fp: u32) -> (usize, u8) {
    let index = (fp >> (32 - INDEX_BITS)) as usize;
    let rest = fp << INDEX_BITS;
    // Rank: position of the first 1 bit in the remaining 22 (23 if all zero).
    let rank = (rest.leading_zeros().min(32 - INDEX_BITS) + 1) as u8;
    (index, rank)
}

impl Distinct {
    pub fn insert(&mut self, fp: u32) {
        match self {
            Distinct::Sparse(v) => {
                if let Err(at) = v.binary_search(&fp) {
                    if v.len() < SPARSE_MAX {
                        v.insert(at, fp);
                    } else {
                        let mut d = Self::dense_of(v);
                        Self::set(&mut d, fp);
                        *self = Distinct::Dense(d);
                    }
                }
            }
            Distinct::Dense(d) => Self::set(d, fp),
        }
    }

    fn dense_of(fps: &[u32]) -> Box<[u8; REGISTERS]> {
        let mut d = Box::new([0u8; REGISTERS]);
        for &fp in fps {
            Self::set(&mut d, fp);
        }
        d
    }

    fn set(d: &mut [u8; REGISTERS], fp: u32) {
        let (i, r) = register(fp);
        d[i] = d[i].max(r);
    }

    /// Fold `other` into `self` (the union of both sets).
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Sparse(v) => {
                for &fp in v {
                    self.insert(fp);
                }
            }
            Distinct::Dense(o) => {
                if let Distinct::Sparse(v) = self {
                    *self = Distinct::Dense(Self::dense_of(v));
                }
                if let Distinct::Dense(d) = self {
                    for (a, b) in d.iter_mut().zip(o.iter()) {
                        *a = (*a).max(*b);
                    }
                }
            }
        }
    }

    /// The number of distinct fingerprints: exact while sparse, else the HyperLogLog
    /// estimate with linear counting for small ranges.
    pub fn estimate(&self) -> u64 {
        match self {
            Distinct::Sparse(v) => v.len() as u64,
            Distinct::Dense(d) => {
                let m = REGISTERS as f64;
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let sum: f64 = d.iter().map(|&r| 2f64.powi(-(r as i32))).sum();
                let raw = alpha * m * m / sum;
                let zeros = d.iter().filter(|&&r| r == 0).count();
                let e = if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                e.round() as u64
            }
        }
    }

    /// Heap bytes held (what the state-size metric sums).
    pub fn bytes(&self) -> usize {
        match self {
            Distinct::Sparse(v) => v.capacity() * 4,
            Distinct::Dense(_) => REGISTERS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        // splitmix64: well-mixed, deterministic.
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn exact_while_sparse() {
        let mut d = Distinct::default();
        for i in 0..SPARSE_MAX as u64 {
            d.insert(fingerprint(hash(i)));
            d.insert(fingerprint(hash(i)));
        }
        assert!(matches!(d, Distinct::Sparse(_)));
        assert_eq!(d.estimate(), SPARSE_MAX as u64);
        assert!(d.bytes() <= MAX_BYTES);
    }

    #[test]
    fn large_sets_stay_within_the_error_and_the_size() {
        for n in [1_000u64, 10_000, 100_000] {
            let mut d = Distinct::default();
            for i in 0..n {
                d.insert(fingerprint(hash(i)));
            }
            let e = d.estimate() as f64;
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 3.0 * 0.0325, "n={n} estimate={e} error={err}");
            assert_eq!(d.bytes(), MAX_BYTES);
        }
    }

    #[test]
    fn merge_is_the_union() {
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..100 {
            a.insert(fingerprint(hash(i)));
        }
        for i in 50..150 {
            b.insert(fingerprint(hash(i)));
        }
        let mut u = a.clone();
        u.merge(&b);
        assert_eq!(u.estimate(), 150);
        let mut big = Distinct::default();
        for i in 0..5_000 {
            big.insert(fingerprint(hash(i)));
        }
        a.merge(&big);
        let e = a.estimate() as f64;
        assert!((e - 5_000.0).abs() / 5_000.0 < 0.1, "{e}");
    }
}
