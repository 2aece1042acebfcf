//! What the clients send: the command mix, the keys and the values.

use std::fmt;

/// One kind of request in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `SET key value` (etcd: `Put`).
    Set,
    /// `GET key` (etcd: a linearizable `Range` of one key).
    Get,
    /// `INCR counter`, on a key space of its own so it never meets a value
    /// written by `SET` (which would not be an integer).
    Incr,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Set, OpKind::Get, OpKind::Incr];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Set => "set",
            OpKind::Get => "get",
            OpKind::Incr => "incr",
        }
    }

    fn index(self) -> usize {
        match self {
            OpKind::Set => 0,
            OpKind::Get => 1,
            OpKind::Incr => 2,
        }
    }
}

/// Why a `--mix` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("'{0}' is not of the form command=weight")]
    NotAPair(String),
    #[error("unknown command '{0}' in the mix (set, get or incr)")]
    UnknownCommand(String),
    #[error("'{0}' is not a whole-number weight up to {WEIGHT_MAX}")]
    BadWeight(String),
    #[error("'{0}' appears twice in the mix")]
    Repeated(String),
    #[error("the mix has no command with a weight above zero")]
    Empty,
}

/// The largest weight of one command in a mix.
pub const WEIGHT_MAX: u32 = 1_000_000;

/// Relative weights of the commands, e.g. `set=50,get=50`. Weights need not
/// add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Indexed by [`OpKind::index`]. Invariant: at least one is non-zero.
    weights: [u32; 3],
}

impl Mix {
    pub fn parse(text: &str) -> Result<Mix, MixError> {
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError::NotAPair(part.to_owned()))?;
            let name = name.trim();
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name().eq_ignore_ascii_case(name))
                .ok_or_else(|| MixError::UnknownCommand(name.to_owned()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= WEIGHT_MAX)
                .ok_or_else(|| MixError::BadWeight(weight.trim().to_owned()))?;
            if std::mem::replace(&mut seen[kind.index()], true) {
                return Err(MixError::Repeated(kind.name().to_owned()));
            }
            weights[kind.index()] = weight;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(MixError::Empty);
        }
        Ok(Mix { weights })
    }

    /// Only one command, always.
    pub fn only(kind: OpKind) -> Mix {
        let mut weights = [0; 3];
        weights[kind.index()] = 1;
        Mix { weights }
    }

    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The commands with a weight above zero.
    pub fn kinds(&self) -> impl Iterator<Item = OpKind> + '_ {
        OpKind::ALL.into_iter().filter(|&k| self.weight(k) > 0)
    }

    /// Picks a command in proportion to the weights.
    pub fn pick(&self, rng: &mut Rng) -> OpKind {
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut roll = rng.below(total);
        for kind in OpKind::ALL {
            let weight = u64::from(self.weight(kind));
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        // `roll < total` and the weights add up to `total`.
        unreachable!("a roll below the total weight always lands on a command")
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in self.kinds() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={}", kind.name(), self.weight(kind))?;
        }
        Ok(())
    }
}

/// Bytes in every key.
pub const KEY_BYTES: usize = 16;
/// Digits after the four-byte prefix of a key.
const KEY_DIGITS: usize = KEY_BYTES - 4;
/// The largest key space: every index must fit in [`KEY_DIGITS`] digits.
pub const KEYS_MAX: u64 = 10u64.pow(KEY_DIGITS as u32);

/// The key with number `index` (below [`KEYS_MAX`]) for a command:
/// `key:000000000042` for `SET` and `GET`, `ctr:000000000042` for `INCR`.
pub fn key(kind: OpKind, index: u64) -> [u8; KEY_BYTES] {
    debug_assert!(index < KEYS_MAX);
    let mut key = [b'0'; KEY_BYTES];
    key[..4].copy_from_slice(match kind {
        OpKind::Set | OpKind::Get => b"key:",
        OpKind::Incr => b"ctr:",
    });
    let mut rest = index % KEYS_MAX;
    for at in (4..KEY_BYTES).rev() {
        // A digit, so below 10: the cast cannot truncate.
        key[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, portable generator, so
/// a seed picks the same keys on every build.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0), by Lemire's
    /// multiply-shift; the bias is below `bound / 2^64`, far under what a
    /// benchmark can see.
    pub fn below(&mut self, bound: u64) -> u64 {
        // The high half of a 64 x 64 bit product fits in 64 bits.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_back_as_written() {
        let mix = Mix::parse("set=50, get=50").unwrap();
        assert_eq!(mix.weight(OpKind::Set), 50);
        assert_eq!(mix.weight(OpKind::Get), 50);
        assert_eq!(mix.weight(OpKind::Incr), 0);
        assert_eq!(mix.to_string(), "set=50,get=50");
        assert_eq!(Mix::parse("INCR=1").unwrap(), Mix::only(OpKind::Incr));
    }

    #[test]
    fn bad_mixes_are_refused_with_the_reason() {
        assert_eq!(Mix::parse("set"), Err(MixError::NotAPair("set".to_owned())));
        assert_eq!(
            Mix::parse("del=3"),
            Err(MixError::UnknownCommand("del".to_owned()))
        );
        assert_eq!(
            Mix::parse("set=-1"),
            Err(MixError::BadWeight("-1".to_owned()))
        );
        assert_eq!(
            Mix::parse("set=1,set=2"),
            Err(MixError::Repeated("set".to_owned()))
        );
        assert_eq!(Mix::parse("set=0,get=0"), Err(MixError::Empty));
        assert_eq!(Mix::parse(""), Err(MixError::Empty));
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix = Mix::parse("set=1,get=3").unwrap();
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[mix.pick(&mut rng).index()] += 1;
        }
        assert_eq!(counts[OpKind::Incr.index()], 0);
        // Expect 10,000 sets; allow a wide margin (the standard deviation
        // is about 87).
        assert!(
            (9_000..11_000).contains(&counts[OpKind::Set.index()]),
            "{counts:?}"
        );
    }

    #[test]
    fn keys_are_sixteen_bytes_and_distinct_per_command() {
        assert_eq!(&key(OpKind::Set, 42), b"key:000000000042");
        assert_eq!(key(OpKind::Get, 42), key(OpKind::Set, 42));
        assert_eq!(&key(OpKind::Incr, KEYS_MAX - 1), b"ctr:999999999999");
    }

    #[test]
    fn below_stays_below_and_the_seed_replays() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        for bound in [1u64, 2, 3, 10, 10_000, u64::MAX] {
            for _ in 0..100 {
                let x = a.below(bound);
                assert!(x < bound);
                assert_eq!(x, b.below(bound));
            }
        }
        assert_eq!(a.below(0), 0);
    }
}
