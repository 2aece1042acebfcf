//! Redis-style glob matching for `KEYS` and `SCAN ... MATCH`.
//!
//! Supported: `*` (any run of bytes), `?` (one byte), `[abc]`, `[^abc]`,
//! `[a-z]` (a reversed range such as `[z-a]` means the same), and `\x`
//! for a literal `x`, inside or outside brackets. Matching is on bytes and
//! case-sensitive. An unclosed `[` ends the class at the end of the pattern,
//! as Redis does; a trailing lone `\` matches a backslash.
//!
//! The pattern is first split into single-byte tokens and stars, and then
//! matched with the classic backtrack-to-last-star loop, so the cost is
//! bounded by pattern length times key length (Redis's recursive matcher can
//! go exponential on many stars).
//!
//! Ours rather than a glob crate's: those match paths (separators, `**`,
//! brace sets, UTF-8), and a key must match exactly as Redis would match it.

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star => true,
            Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
            }
        }
    }
}

fn tokenize(pattern: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => {
                // Consecutive stars are one star.
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                i += 1;
            }
            b'?' => {
                tokens.push(Token::Any);
                i += 1;
            }
            b'\\' => {
                match pattern.get(i + 1) {
                    Some(&b) => tokens.push(Token::Byte(b)),
                    None => tokens.push(Token::Byte(b'\\')),
                }
                i += 2;
            }
            b'[' => {
                i += 1;
                let negated = pattern.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                while i < pattern.len() && pattern[i] != b']' {
                    let mut lo = pattern[i];
                    if lo == b'\\' && i + 1 < pattern.len() {
                        i += 1;
                        lo = pattern[i];
                        ranges.push((lo, lo));
                        i += 1;
                        continue;
                    }
                    // `a-z`, unless the `-` is the last byte before `]`.
                    if pattern.get(i + 1) == Some(&b'-')
                        && i + 2 < pattern.len()
                        && pattern[i + 2] != b']'
                    {
                        let mut hi = pattern[i + 2];
                        let mut step = 3;
                        if hi == b'\\' && i + 3 < pattern.len() {
                            hi = pattern[i + 3];
                            step = 4;
                        }
                        ranges.push((lo.min(hi), lo.max(hi)));
                        i += step;
                    } else {
                        ranges.push((lo, lo));
                        i += 1;
                    }
                }
                // Skip the closing `]` if there is one.
                i += 1;
                tokens.push(Token::Class { negated, ranges });
            }
            b => {
                tokens.push(Token::Byte(b));
                i += 1;
            }
        }
    }
    tokens
}

/// A compiled pattern, so that a scan over many keys parses it once.
#[derive(Debug)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        Glob {
            tokens: tokenize(pattern),
        }
    }

    pub fn matches(&self, text: &[u8]) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut s) = (0usize, 0usize);
        // Position of the last star seen and the text position it was
        // tried at, for backtracking.
        let mut star: Option<(usize, usize)> = None;
        while s < text.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, s));
                    t += 1;
                }
                Some(tok) if tok.matches(text[s]) => {
                    t += 1;
                    s += 1;
                }
                _ => match star {
                    // Let the last star swallow one more byte and retry.
                    Some((st, ss)) => {
                        star = Some((st, ss + 1));
                        t = st + 1;
                        s = ss + 1;
                    }
                    None => return false,
                },
            }
        }
        tokens[t.min(tokens.len())..]
            .iter()
            .all(|tok| *tok == Token::Star)
    }
}

/// One-shot match of `text` against `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    Glob::new(pattern).matches(text)
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn literals_and_wildcards() {
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(m(b"abc", b"abc"));
        assert!(!m(b"abc", b"abd"));
        assert!(!m(b"abc", b"abcd"));
        assert!(m(b"*", b""));
        assert!(m(b"*", b"anything"));
        assert!(m(b"a*", b"a"));
        assert!(m(b"a*c", b"abbbc"));
        assert!(!m(b"a*c", b"abbbd"));
        assert!(m(b"*a*b*", b"xxaxxbxx"));
        assert!(!m(b"*a*b*", b"xxbxxaxx"));
        assert!(m(b"h?llo", b"hello"));
        assert!(!m(b"h?llo", b"hllo"));
        assert!(m(b"user:*:name", b"user:42:name"));
        assert!(!m(b"user:*:name", b"user:42:names"));
        assert!(m(b"**a", b"bba"));
        assert!(m(b"*ab", b"aab"));
    }

    #[test]
    fn classes() {
        assert!(m(b"h[ae]llo", b"hello"));
        assert!(m(b"h[ae]llo", b"hallo"));
        assert!(!m(b"h[ae]llo", b"hillo"));
        assert!(m(b"h[^e]llo", b"hallo"));
        assert!(!m(b"h[^e]llo", b"hello"));
        assert!(m(b"h[a-b]llo", b"hbllo"));
        assert!(!m(b"h[a-b]llo", b"hcllo"));
        assert!(m(b"[z-a]", b"m"), "reversed range");
        assert!(m(b"[a-]", b"-"), "dash before ] is literal");
        assert!(m(b"[a-]", b"a"));
        assert!(m(b"[\\]]", b"]"), "escaped ] inside class");
        assert!(m(b"[^a-c]x", b"dx"));
        assert!(!m(b"[^a-c]x", b"bx"));
        assert!(m(b"[abc", b"b"), "unclosed class ends at pattern end");
    }

    #[test]
    fn escapes() {
        assert!(m(b"a\\*b", b"a*b"));
        assert!(!m(b"a\\*b", b"axb"));
        assert!(m(b"\\?", b"?"));
        assert!(!m(b"\\?", b"x"));
        assert!(m(b"a\\", b"a\\"), "trailing backslash is literal");
        assert!(m(b"\\[a]", b"[a]"));
    }

    #[test]
    fn many_stars_are_not_exponential() {
        let pattern = b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let text = [b'a'; 200];
        assert!(!m(pattern, &text));
    }
}
