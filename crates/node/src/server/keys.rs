//! Keyspace commands: `DEL`, `EXISTS`, `DBSIZE`, `KEYS`, `SCAN`, `FLUSHALL`.

use super::argv::{Argv, check_key};
use super::limits::Config;
use super::table::Cmd;
use kv::{Command, MAX_SCAN_COUNT};
use resp::{ArgError, Reply, parse_u64};

/// How many keys `SCAN` visits per call when the client does not say, as
/// in Redis.
const SCAN_COUNT_DEFAULT: usize = 10;

/// Parses a keyspace command into the command the store runs.
pub(crate) fn parse(mut argv: Argv, config: &Config) -> Result<Command, Reply> {
    let command = match argv.spec().cmd {
        Cmd::Del | Cmd::Unlink => return Ok(Command::Del(argv.keys(config)?)),
        Cmd::Exists => return Ok(Command::Exists(argv.keys(config)?)),
        Cmd::DbSize => Command::DbSize,
        Cmd::Keys => Command::Keys(argv.key(config)?),
        Cmd::Scan => return scan(argv, config),
        Cmd::FlushAll | Cmd::FlushDb => {
            // Flushing is synchronous either way.
            if !argv.eat("ASYNC") {
                argv.eat("SYNC");
            }
            Command::FlushAll
        }
        other => super::strings::unreachable_family(other)?,
    };
    argv.finish()?;
    Ok(command)
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE string]`.
fn scan(mut argv: Argv, config: &Config) -> Result<Command, Reply> {
    let cursor = parse_u64(&argv.next()?).ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let mut pattern = None;
    let mut count = SCAN_COUNT_DEFAULT;
    while argv.remaining() > 0 {
        if argv.eat("MATCH") {
            let glob = argv.next()?;
            check_key(&glob, config)?;
            // `*` matches everything: skip the matching altogether.
            pattern = (glob.as_ref() != b"*").then_some(glob);
        } else if argv.eat("COUNT") {
            let n = argv.next_i64()?;
            if n < 1 {
                return Err(ArgError::Syntax.into());
            }
            count = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_SCAN_COUNT);
        } else if argv.eat("TYPE") {
            if !argv.next()?.eq_ignore_ascii_case(b"string") {
                return Err(Reply::error(
                    "ERR parliament stores only strings: SCAN TYPE must be 'string'",
                ));
            }
        } else {
            return Err(ArgError::Syntax.into());
        }
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
    })
}
