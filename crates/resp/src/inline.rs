//! Splitting of inline commands (`SET key "some value"`), which is how people
//! type at a raw telnet prompt and how `redis-benchmark` sends `PING`.

use bytes::Bytes;

use super::decode::ProtocolError;

/// Splits an inline command line into arguments with Redis's quoting rules.
///
/// Arguments are separated by whitespace. Inside "double quotes" the escapes
/// `\n \r \t \b \a \xHH` are decoded and any other escaped byte stands for
/// itself (so `\\` and `\"` work); inside 'single quotes' only `\'` is an
/// escape. A quote may open in the middle of an argument, but a closing
/// quote must be followed by whitespace or the end of the line. Unquoted
/// arguments are sliced from `line` without copying.
pub(crate) fn split_inline(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while line.get(pos).copied().is_some_and(is_space) {
            pos += 1;
        }
        if pos >= line.len() {
            return Ok(args);
        }
        let (arg, next) = split_one(line, pos)?;
        args.push(arg);
        pos = next;
    }
}

/// C's `isspace` in the "C" locale, which is what Redis splits on.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Reads one argument starting at the non-space byte `start`; returns it and
/// the position just after it.
fn split_one(line: &Bytes, start: usize) -> Result<(Bytes, usize), ProtocolError> {
    // Stays `None` until the argument needs decoding; until then the
    // argument is the plain slice `start..pos`.
    let mut owned: Option<Vec<u8>> = None;
    let mut quote = Quote::None;
    let mut pos = start;
    loop {
        let Some(&b) = line.get(pos) else {
            if quote != Quote::None {
                return Err(ProtocolError::UnbalancedQuotes);
            }
            break;
        };
        match quote {
            Quote::None => {
                if is_space(b) {
                    break;
                }
                if b == b'"' || b == b'\'' {
                    quote = if b == b'"' {
                        Quote::Double
                    } else {
                        Quote::Single
                    };
                    owned.get_or_insert_with(|| line[start..pos].to_vec());
                } else if let Some(out) = &mut owned {
                    out.push(b);
                }
                pos += 1;
            }
            Quote::Double => {
                let out = owned.get_or_insert_with(Vec::new);
                match (b, line.get(pos + 1).copied()) {
                    (b'\\', Some(b'x')) => match hex_byte(line, pos + 2) {
                        Some(value) => {
                            out.push(value);
                            pos += 4;
                        }
                        None => {
                            out.push(b'x');
                            pos += 2;
                        }
                    },
                    (b'\\', Some(escaped)) => {
                        out.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        pos += 2;
                    }
                    (b'"', after) => {
                        if after.is_some_and(|a| !is_space(a)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        pos += 1;
                        break;
                    }
                    _ => {
                        out.push(b);
                        pos += 1;
                    }
                }
            }
            Quote::Single => {
                let out = owned.get_or_insert_with(Vec::new);
                match (b, line.get(pos + 1).copied()) {
                    (b'\\', Some(b'\'')) => {
                        out.push(b'\'');
                        pos += 2;
                    }
                    (b'\'', after) => {
                        if after.is_some_and(|a| !is_space(a)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        pos += 1;
                        break;
                    }
                    _ => {
                        out.push(b);
                        pos += 1;
                    }
                }
            }
        }
    }
    let arg = match owned {
        Some(bytes) => Bytes::from(bytes),
        None => line.slice(start..pos),
    };
    Ok((arg, pos))
}

/// The byte written as two hex digits at `at`, if both are there.
fn hex_byte(line: &[u8], at: usize) -> Option<u8> {
    let hi = hex_digit(*line.get(at)?)?;
    let lo = hex_digit(*line.get(at + 1)?)?;
    Some(hi << 4 | lo)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
