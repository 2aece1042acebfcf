//! Exhaustive model checking of the protocol on small configurations.

pub mod explorer;
pub mod replica;
pub mod synod;

pub use explorer::{Expectation, Model, Options, Property, Report, Trace, explore};
