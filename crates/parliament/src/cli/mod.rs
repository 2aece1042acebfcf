//! Subcommands of the `parliament` binary.

pub mod model;
pub mod sim;
