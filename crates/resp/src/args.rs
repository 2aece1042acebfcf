//! Argument parsing for command handlers.

use bytes::Bytes;

use super::decode::Request;
use super::reply::Reply;

/// Why a command's arguments were rejected; the texts are Redis's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// `command` is the command name in lower case, as Redis prints it.
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity { command: String },
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR syntax error")]
    Syntax,
}

impl ArgError {
    pub fn to_reply(&self) -> Reply {
        Reply::Error(self.to_string())
    }
}

/// A request's arguments, consumed front to back by a command handler.
///
/// Running out of arguments is a wrong-arity error and leftovers are a
/// syntax error, so a handler that reads exactly what it expects and then
/// calls [`Args::finish`] gets strict arity checking for free.
#[derive(Debug, Clone)]
pub struct Args {
    /// The command name lower-cased, for error messages.
    command: String,
    rest: std::vec::IntoIter<Bytes>,
}

impl Args {
    /// Splits a request into its command name and arguments; `None` for an
    /// empty request (the decoder never produces one).
    pub fn new(request: Request) -> Option<Self> {
        let mut rest = request.into_iter();
        let name = rest.next()?;
        Some(Self {
            command: String::from_utf8_lossy(&name).to_ascii_lowercase(),
            rest,
        })
    }

    /// The command name in lower case.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Arguments not consumed yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The error for a call with too few or too many arguments.
    pub fn wrong_arity(&self) -> ArgError {
        ArgError::WrongArity {
            command: self.command.clone(),
        }
    }

    /// Checks the remaining count up front, for commands whose arity is
    /// fixed (Redis reports extra arguments to `GET` as wrong arity, not as
    /// a syntax error).
    pub fn expect_remaining(&self, count: usize) -> Result<(), ArgError> {
        if self.remaining() == count {
            Ok(())
        } else {
            Err(self.wrong_arity())
        }
    }

    pub fn next_bytes(&mut self) -> Result<Bytes, ArgError> {
        self.rest.next().ok_or_else(|| self.wrong_arity())
    }

    /// The next argument as a signed integer, with Redis's strict syntax.
    pub fn next_i64(&mut self) -> Result<i64, ArgError> {
        parse_i64(&self.next_bytes()?).ok_or(ArgError::NotInteger)
    }

    /// The next argument as a non-negative integer up to `u64::MAX`.
    pub fn next_u64(&mut self) -> Result<u64, ArgError> {
        parse_u64(&self.next_bytes()?).ok_or(ArgError::NotInteger)
    }

    /// Consumes the next argument if it equals `keyword` ignoring ASCII
    /// case, for optional flags such as `NX` or `WITHSCORES`.
    pub fn eat_keyword(&mut self, keyword: &str) -> bool {
        let matches = self
            .rest
            .as_slice()
            .first()
            .is_some_and(|arg| keyword_eq(arg, keyword));
        if matches {
            self.rest.next();
        }
        matches
    }

    /// Takes all remaining arguments, for variadic commands.
    pub fn take_rest(&mut self) -> Vec<Bytes> {
        self.rest.by_ref().collect()
    }

    /// Ends parsing: leftover arguments are a syntax error.
    pub fn finish(self) -> Result<(), ArgError> {
        if self.rest.len() == 0 {
            Ok(())
        } else {
            Err(ArgError::Syntax)
        }
    }
}

/// Whether `arg` is `keyword` ignoring ASCII case, as Redis matches options.
pub fn keyword_eq(arg: &[u8], keyword: &str) -> bool {
    arg.eq_ignore_ascii_case(keyword.as_bytes())
}

/// Parses a decimal integer the way Redis does: an optional `-`, then digits
/// with no leading zero (only `0` itself starts with one), nothing else — no
/// `+`, no spaces, no `-0` — and the value must fit in an i64.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    match text.split_first()? {
        (b'-', digits) => {
            let magnitude = parse_digits(digits)?;
            if magnitude == 0 {
                return None;
            }
            0i64.checked_sub_unsigned(magnitude)
        }
        _ => i64::try_from(parse_digits(text)?).ok(),
    }
}

/// Like [`parse_i64`] without the sign, up to `u64::MAX`.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    parse_digits(text)
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => digits.iter().try_fold(0u64, |value, &b| {
            let digit = char::from(b).to_digit(10)?;
            value.checked_mul(10)?.checked_add(u64::from(digit))
        }),
    }
}

impl From<ArgError> for crate::Reply {
    fn from(error: ArgError) -> crate::Reply {
        error.to_reply()
    }
}
