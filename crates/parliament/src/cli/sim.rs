//! `parliament sim ...`: the deterministic simulator.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SimCommand {}

pub fn run(command: SimCommand) -> Result<ExitCode> {
    match command {}
}
