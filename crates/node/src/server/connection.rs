//! Connection commands: `PING`, `ECHO`, `SELECT`, `AUTH`, `READONLY`,
//! `READWRITE`. (`QUIT` is the connection loop's, `HELLO` and `CLIENT`
//! are with the introspection commands.)

use super::argv::Argv;
use super::dispatch::ClientState;
use super::limits::Config;
use crate::api::ReadMode;
use resp::{ArgError, Reply, parse_i64};

pub(crate) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";

/// `PING [message]`.
pub(crate) fn ping(mut argv: Argv) -> Result<Reply, Reply> {
    if argv.remaining() == 0 {
        return Ok(Reply::Simple("PONG".to_owned()));
    }
    let message = argv.next()?;
    argv.finish().map_err(|_| argv_arity("ping"))?;
    Ok(Reply::Bulk(message))
}

/// Wrong arity for a command whose table arity is open-ended.
fn argv_arity(name: &str) -> Reply {
    ArgError::WrongArity {
        command: name.to_owned(),
    }
    .to_reply()
}

/// `ECHO message`.
pub(crate) fn echo(mut argv: Argv) -> Result<Reply, Reply> {
    Ok(Reply::Bulk(argv.next()?))
}

/// `SELECT index`: there is one database, number 0.
pub(crate) fn select(mut argv: Argv) -> Reply {
    match argv.next().map(|index| parse_i64(&index)) {
        Ok(Some(0)) => Reply::ok(),
        Ok(Some(_)) => Reply::error("ERR DB index is out of range"),
        Ok(None) => ArgError::NotInteger.to_reply(),
        Err(error) => error.to_reply(),
    }
}

/// `AUTH [username] password`; the only user is `default`.
///
/// Without a configured password the `default` user needs none, as in
/// Redis: `AUTH default <anything>` succeeds, while the one-argument form
/// is answered with Redis's hint that no password is configured.
pub(crate) fn auth(argv: Argv, state: &mut ClientState, config: &Config) -> Reply {
    let args = argv.rest();
    let (user, password) = match args.as_slice() {
        [password] => (None, password),
        [user, password] => (Some(&user[..]), password),
        _ => return ArgError::Syntax.to_reply(),
    };
    if config.password.is_none() && user.is_none() {
        return Reply::error(NO_PASSWORD);
    }
    match check_password(user, password, config.password.as_deref()) {
        Ok(()) => {
            state.authenticated = true;
            Reply::ok()
        }
        Err(error) => error,
    }
}

/// Checks a user and password against the configured password, if any.
pub(crate) fn check_password(
    user: Option<&[u8]>,
    password: &[u8],
    expected: Option<&str>,
) -> Result<(), Reply> {
    let user_ok = user.is_none_or(|user| user == b"default");
    let password_ok =
        expected.is_none_or(|expected| constant_time_eq(password, expected.as_bytes()));
    if user_ok && password_ok {
        Ok(())
    } else {
        Err(Reply::error(WRONGPASS))
    }
}

/// Compares without returning early at the first difference, so the time
/// taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `READONLY` / `READWRITE`: whether reads may be served from this node's
/// possibly stale state.
pub(crate) fn set_read_mode(state: &mut ClientState, mode: ReadMode) -> Reply {
    state.read_mode = mode;
    Reply::ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_compare_exactly() {
        let expected = Some("secret");
        assert!(check_password(None, b"secret", expected).is_ok());
        assert!(check_password(Some(b"default"), b"secret", expected).is_ok());
        assert!(check_password(Some(b"admin"), b"secret", expected).is_err());
        assert!(check_password(None, b"secreT", expected).is_err());
        assert!(check_password(None, b"secret2", expected).is_err());
        assert!(check_password(None, b"", expected).is_err());
        // Without a password, only the user is checked.
        assert!(check_password(Some(b"default"), b"any", None).is_ok());
        assert!(check_password(Some(b"admin"), b"any", None).is_err());
    }
}
