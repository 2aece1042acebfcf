//! One fast, reproducible hasher for the crate's searches, where SipHash's
//! protection against chosen keys buys nothing and costs most of the time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fast, fixed (hence reproducible) 64-bit hasher, for the model checker's
/// state fingerprints and the search maps of the linearizability checker.
/// Each word is scrambled before it is combined and `finish` avalanches, which
/// keeps keys of similar structure apart in every bit; SipHash would be
/// stronger but cost a third of a search.
#[derive(Default)]
pub struct FastHasher {
    h: u64,
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // MurmurHash3's 64-bit block step: each word is scrambled by two
        // multiplications before it is folded in; `finish` avalanches.
        let k = n
            .wrapping_mul(0x87C3_7B91_1142_53D5)
            .rotate_left(31)
            .wrapping_mul(0x4CF5_AD43_2745_937F);
        self.h = (self.h ^ k)
            .rotate_left(27)
            .wrapping_mul(5)
            .wrapping_add(0x52DC_E729);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        mix(self.h)
    }
}

/// A hash map keyed through [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::Hash;

    use super::*;

    fn hash<T: Hash>(t: &T) -> u64 {
        let mut h = FastHasher::default();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn equal_inputs_agree_and_near_inputs_differ_in_many_bits() {
        assert_eq!(hash(&(1u64, "a")), hash(&(1u64, "a")));
        let a = hash(&1u64);
        let b = hash(&2u64);
        assert!((a ^ b).count_ones() > 16, "{a:x} {b:x}");
        assert_ne!(hash(&[1u8, 2, 3].as_slice()), hash(&[1u8, 2, 4].as_slice()));
    }
}
