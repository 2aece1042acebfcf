//! String commands: `GET`, `SET` and friends, counters, `MGET`/`MSET`, and
//! parliament's `CAS`.

use super::argv::Argv;
use super::limits::Config;
use super::table::Cmd;
use kv::{Command, SetCondition};
use resp::{ArgError, Reply};

/// What `SET` answers for the expiry options of Redis.
pub(crate) const NO_EXPIRY: &str = "ERR parliament does not support key expiry";

/// Parses a string command into the command the store runs.
pub(crate) fn parse(mut argv: Argv, config: &Config) -> Result<Command, Reply> {
    let command = match argv.spec().cmd {
        Cmd::Get => Command::Get(argv.key(config)?),
        Cmd::Set => return set(argv, config),
        Cmd::SetNx => Command::SetNx(argv.key(config)?, argv.value(config)?),
        Cmd::GetSet => Command::GetSet(argv.key(config)?, argv.value(config)?),
        Cmd::GetDel => Command::GetDel(argv.key(config)?),
        Cmd::Incr => Command::IncrBy {
            key: argv.key(config)?,
            delta: 1,
        },
        Cmd::Decr => Command::IncrBy {
            key: argv.key(config)?,
            delta: -1,
        },
        Cmd::IncrBy => Command::IncrBy {
            key: argv.key(config)?,
            delta: argv.next_i64()?,
        },
        Cmd::DecrBy => {
            let key = argv.key(config)?;
            Command::decr_by(key, argv.next_i64()?).map_err(super::reply::from_kv)?
        }
        Cmd::Append => Command::Append(argv.key(config)?, argv.value(config)?),
        Cmd::Strlen => Command::Strlen(argv.key(config)?),
        Cmd::MGet => return Ok(Command::MGet(argv.keys(config)?)),
        Cmd::MSet => return mset(argv, config),
        Cmd::Cas => Command::Cas {
            key: argv.key(config)?,
            expected: Some(argv.value(config)?),
            new: argv.value(config)?,
        },
        other => unreachable_family(other)?,
    };
    argv.finish()?;
    Ok(command)
}

/// `SET key value [NX|XX] [GET]`; the expiry options are refused clearly.
fn set(mut argv: Argv, config: &Config) -> Result<Command, Reply> {
    let key = argv.key(config)?;
    let value = argv.value(config)?;
    let mut condition = SetCondition::None;
    let mut get = false;
    while let Some(option) = argv.peek().first() {
        let option = option.to_ascii_uppercase();
        match option.as_slice() {
            b"NX" if condition != SetCondition::Xx => condition = SetCondition::Nx,
            b"XX" if condition != SetCondition::Nx => condition = SetCondition::Xx,
            b"GET" => get = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" => {
                return Err(Reply::error(NO_EXPIRY));
            }
            _ => return Err(ArgError::Syntax.into()),
        }
        argv.next()?;
    }
    Ok(Command::Set {
        key,
        value,
        condition,
        get,
    })
}

/// `MSET key value [key value ...]`: an odd count is wrong arity, as in Redis.
fn mset(argv: Argv, config: &Config) -> Result<Command, Reply> {
    if !argv.remaining().is_multiple_of(2) {
        return Err(argv.wrong_arity().into());
    }
    let mut pairs = Vec::with_capacity(argv.remaining() / 2);
    let mut rest = argv.rest().into_iter();
    while let (Some(key), Some(value)) = (rest.next(), rest.next()) {
        super::argv::check_key(&key, config)?;
        super::argv::check_value(&value, config)?;
        pairs.push((key, value));
    }
    Ok(Command::MSet(pairs))
}

/// The dispatcher sends only this family's commands here; anything else is
/// answered as a server bug rather than a panic.
pub(crate) fn unreachable_family(cmd: Cmd) -> Result<Command, Reply> {
    Err(Reply::Error(format!(
        "ERR internal error: {cmd:?} dispatched to the wrong family"
    )))
}

/// A key argument for tests of this family.
#[cfg(test)]
pub(crate) fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::table::lookup;

    fn parse_line(line: &str, config: &Config) -> Result<Command, Reply> {
        let request: Vec<bytes::Bytes> = line.split(' ').map(b).collect();
        let spec = lookup(&request[0]).unwrap();
        assert!(spec.arity_ok(request.len()), "{line}");
        parse(Argv::new(spec, request), config)
    }

    #[test]
    fn set_options() {
        let config = Config::default();
        let set = |condition, get| Command::Set {
            key: b("k"),
            value: b("v"),
            condition,
            get,
        };
        assert_eq!(
            parse_line("SET k v", &config),
            Ok(set(SetCondition::None, false))
        );
        assert_eq!(
            parse_line("set k v nx", &config),
            Ok(set(SetCondition::Nx, false))
        );
        assert_eq!(
            parse_line("SET k v XX GET", &config),
            Ok(set(SetCondition::Xx, true))
        );
        assert_eq!(
            parse_line("SET k v NX NX", &config),
            Ok(set(SetCondition::Nx, false))
        );
        assert_eq!(
            parse_line("SET k v NX XX", &config),
            Err(Reply::error("ERR syntax error"))
        );
        assert_eq!(
            parse_line("SET k v FOO", &config),
            Err(Reply::error("ERR syntax error"))
        );
        assert_eq!(
            parse_line("SET k v EX 10", &config),
            Err(Reply::error(NO_EXPIRY))
        );
        assert_eq!(
            parse_line("SET k v keepttl", &config),
            Err(Reply::error(NO_EXPIRY))
        );
    }

    #[test]
    fn size_limits_apply_to_keys_and_values() {
        let config = Config {
            key_bytes_max: 3,
            value_bytes_max: 4,
            ..Config::default()
        };
        assert!(parse_line("SET abc 1234", &config).is_ok());
        assert_eq!(
            parse_line("SET abcd 1", &config),
            Err(Reply::error(
                "ERR key is 4 bytes, more than the limit of 3 bytes"
            ))
        );
        assert_eq!(
            parse_line("MSET a 1 b 12345", &config),
            Err(Reply::error(
                "ERR value is 5 bytes, more than the limit of 4 bytes"
            ))
        );
        assert!(parse_line("MGET a abcd", &config).is_err());
        assert!(parse_line("CAS a 12345 1", &config).is_err());
        assert!(parse_line("APPEND a 12345", &config).is_err());
    }

    #[test]
    fn counters_and_overflow() {
        let config = Config::default();
        assert_eq!(
            parse_line("DECRBY k 5", &config),
            Ok(Command::IncrBy {
                key: b("k"),
                delta: -5
            })
        );
        assert_eq!(
            parse_line("DECRBY k -9223372036854775808", &config),
            Err(Reply::error("ERR decrement would overflow"))
        );
        assert_eq!(
            parse_line("INCRBY k x", &config),
            Err(Reply::error("ERR value is not an integer or out of range"))
        );
        assert_eq!(
            parse_line("MSET a 1 b", &config),
            Err(Reply::error(
                "ERR wrong number of arguments for 'mset' command"
            ))
        );
    }
}
