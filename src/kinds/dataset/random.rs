//! Seeded randomness with algorithms fixed here, so a seed gives the same subset, order and
//! synthetic tensors on every platform and with every version of the crates: ChaCha8 for
//! the bits, a partial Fisher-Yates shuffle with rejection sampling for subsets, and
//! Box-Muller over `libm` (portable, correctly specified) for normal values.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// What a stream of random numbers is for: each purpose gets its own key.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    Subset = 1,
    Shuffle = 2,
    Synthetic = 3,
}

/// One deterministic stream of random numbers.
pub(super) struct Stream(ChaCha8Rng);

impl Stream {
    /// Key = (seed, purpose); `stream` selects one of 2^64 independent streams (a sample).
    pub(super) fn new(seed: u64, purpose: Purpose, stream: u64) -> Stream {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(stream);
        Stream(rng)
    }

    /// Uniform in `0..n` without bias (`n >= 1`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let x = self.0.next_u64();
            if x <= zone {
                return x % n;
            }
        }
    }

    /// Uniform in `[0, 1)` with 24 bits (every float32 step there).
    pub(super) fn uniform(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Two independent standard normal values (Box-Muller).
    pub(super) fn normal_pair(&mut self) -> (f64, f64) {
        let unit = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.0.next_u64() >> 11) + 1) as f64 * unit; // (0, 1]
        let u2 = (self.0.next_u64() >> 11) as f64 * unit; // [0, 1)
        let radius = (-2.0 * libm::log(u1)).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        (radius * libm::cos(angle), radius * libm::sin(angle))
    }
}

/// `k` distinct indices of `0..n` drawn with `seed`, in the order drawn.
pub(super) fn subset(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..n).collect();
    let mut stream = Stream::new(seed, Purpose::Subset, 0);
    let k = k.min(n);
    for i in 0..k {
        let j = i + stream.below((n - i) as u64) as usize;
        indices.swap(i, j);
    }
    indices.truncate(k);
    indices
}

/// Shuffles `items` with `seed` (Fisher-Yates).
pub(super) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut stream = Stream::new(seed, Purpose::Shuffle, 0);
    for i in (1..items.len()).rev() {
        let j = stream.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Random values for synthetic sample `index`: standard normal or uniform in `[0, 1)`.
pub(super) fn values(len: usize, normal: bool, seed: u64, index: u64) -> Vec<f32> {
    let mut stream = Stream::new(seed, Purpose::Synthetic, index);
    let mut out = Vec::with_capacity(len);
    if normal {
        while out.len() < len {
            let (a, b) = stream.normal_pair();
            out.push(a as f32);
            if out.len() < len {
                out.push(b as f32);
            }
        }
    } else {
        out.extend((0..len).map(|_| stream.uniform()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_distinct_deterministic_and_seed_dependent() {
        let a = subset(100, 10, 42);
        assert_eq!(a, subset(100, 10, 42));
        assert_ne!(a, subset(100, 10, 43));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert!(sorted.iter().all(|&i| i < 100));
        assert_eq!(subset(5, 9, 0).len(), 5);
    }

    #[test]
    fn the_generator_is_pinned() {
        // A change here changes every user's data for the same seed: bump the format.
        assert_eq!(subset(1000, 3, 0), vec![861, 114, 104]);
        assert_eq!(values(2, false, 0, 0), vec![0.10612953, 0.05083257]);
        assert_eq!(values(2, true, 5, 1), vec![0.29260483, 0.68377024]);
        let mut items = [1, 2, 3, 4, 5];
        shuffle(&mut items, 7);
        let mut again = [1, 2, 3, 4, 5];
        shuffle(&mut again, 7);
        assert_eq!(items, again);
    }

    #[test]
    fn normal_values_look_standard() {
        let v = values(20_001, true, 3, 0);
        assert_eq!(v.len(), 20_001);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        assert_ne!(values(4, true, 3, 0), values(4, true, 3, 1));
    }
}
