//! A request's arguments, consumed front to back by a command's parser.

use bytes::Bytes;

use super::limits::Config;
use super::table::Spec;
use resp::{ArgError, Reply, keyword_eq, parse_i64};

/// The arguments after the command name.
///
/// Like [`resp::Args`], but the name is already resolved to its
/// table row, so nothing is allocated for it.
#[derive(Debug)]
pub(crate) struct Argv {
    spec: &'static Spec,
    rest: std::vec::IntoIter<Bytes>,
}

impl Argv {
    /// `request` without its first element, the name.
    pub fn new(spec: &'static Spec, request: Vec<Bytes>) -> Argv {
        let mut rest = request.into_iter();
        rest.next();
        Argv { spec, rest }
    }

    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    /// Arguments not consumed yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The arguments not consumed yet, without consuming them.
    pub fn peek(&self) -> &[Bytes] {
        self.rest.as_slice()
    }

    pub fn wrong_arity(&self) -> ArgError {
        ArgError::WrongArity {
            command: self.spec.name.to_owned(),
        }
    }

    pub fn next(&mut self) -> Result<Bytes, ArgError> {
        self.rest.next().ok_or_else(|| self.wrong_arity())
    }

    pub fn next_i64(&mut self) -> Result<i64, ArgError> {
        parse_i64(&self.next()?).ok_or(ArgError::NotInteger)
    }

    /// Consumes the next argument if it is `keyword`, ignoring ASCII case.
    pub fn eat(&mut self, keyword: &str) -> bool {
        let found = self
            .rest
            .as_slice()
            .first()
            .is_some_and(|arg| keyword_eq(arg, keyword));
        if found {
            self.rest.next();
        }
        found
    }

    /// All remaining arguments. Reuses the request's vector.
    pub fn rest(self) -> Vec<Bytes> {
        self.rest.collect()
    }

    /// Ends parsing: leftovers are a syntax error.
    pub fn finish(self) -> Result<(), ArgError> {
        if self.rest.len() == 0 {
            Ok(())
        } else {
            Err(ArgError::Syntax)
        }
    }

    /// The next argument as a key within the size limit.
    pub fn key(&mut self, config: &Config) -> Result<Bytes, Reply> {
        let key = self.next().map_err(|e| e.to_reply())?;
        check_key(&key, config)?;
        Ok(key)
    }

    /// The next argument as a value within the size limit.
    pub fn value(&mut self, config: &Config) -> Result<Bytes, Reply> {
        let value = self.next().map_err(|e| e.to_reply())?;
        check_value(&value, config)?;
        Ok(value)
    }

    /// All remaining arguments as keys within the size limit.
    pub fn keys(self, config: &Config) -> Result<Vec<Bytes>, Reply> {
        let keys = self.rest();
        for key in &keys {
            check_key(key, config)?;
        }
        Ok(keys)
    }
}

pub(crate) fn check_key(key: &[u8], config: &Config) -> Result<(), Reply> {
    if key.len() > config.key_bytes_max {
        return Err(Reply::Error(format!(
            "ERR key is {} bytes, more than the limit of {} bytes",
            key.len(),
            config.key_bytes_max
        )));
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8], config: &Config) -> Result<(), Reply> {
    if value.len() > config.value_limit() {
        return Err(Reply::Error(format!(
            "ERR value is {} bytes, more than the limit of {} bytes",
            value.len(),
            config.value_limit()
        )));
    }
    Ok(())
}
