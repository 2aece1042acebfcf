//! The record of a simulated run: every event as a line, and a digest of
//! them all, so that two runs of one seed can be compared cheaply.

/// Lines of a run, with a running FNV-1a digest over their bytes.
#[derive(Clone, Debug)]
pub struct Trace {
    digest: u64,
    lines: Option<Vec<String>>,
    events: u64,
}

impl Trace {
    /// A trace that keeps its lines when `keep` is true; the digest is always
    /// computed.
    pub fn new(keep: bool) -> Trace {
        Trace {
            digest: 0xCBF2_9CE4_8422_2325,
            lines: keep.then(Vec::new),
            events: 0,
        }
    }

    pub fn record(&mut self, line: String) {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            self.digest ^= u64::from(byte);
            self.digest = self.digest.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.events += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(line);
        }
    }

    /// A fingerprint of every line recorded so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The lines, when they were kept.
    pub fn lines(&self) -> Option<&[String]> {
        self.lines.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lines_give_equal_digests_and_any_change_shows() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(true);
        for t in [&mut a, &mut b] {
            t.record("one".into());
            t.record("two".into());
        }
        assert_eq!(a.digest(), b.digest());
        let mut c = Trace::new(false);
        c.record("one".into());
        c.record("twp".into());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(b.lines().map(<[String]>::len), Some(2));
        assert!(a.lines().is_none());
    }
}
