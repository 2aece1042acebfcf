//! Subcommands of the `parliament` binary.

pub mod backup;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod member;
pub mod model;
pub mod serve;
pub mod sim;
pub mod status;

use anyhow::{Result, bail};
use testkit::bugs::Variant;

/// What `--bug` asked for.
pub enum BugChoice<B> {
    /// No `--bug`: the correct protocol.
    Correct,
    /// `--bug list`: the variants were printed; nothing more to do.
    Listed,
    Bug(B),
}

impl<B> BugChoice<B> {
    pub fn bug(&self) -> Option<&B> {
        match self {
            BugChoice::Bug(b) => Some(b),
            BugChoice::Correct | BugChoice::Listed => None,
        }
    }
}

/// Reads a `--bug` argument: a variant's name, or `list` to print them.
pub fn choose_bug<B: Variant>(arg: Option<&str>) -> Result<BugChoice<B>> {
    match arg {
        None => Ok(BugChoice::Correct),
        Some("list") => {
            for b in B::ALL {
                println!("{:<28} {}", b.name(), b.description());
            }
            Ok(BugChoice::Listed)
        }
        Some(name) => match B::parse(name) {
            Some(b) => Ok(BugChoice::Bug(b)),
            None => bail!("unknown bug '{name}'; `--bug list` names them"),
        },
    }
}
