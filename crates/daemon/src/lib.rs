//! lockstepd as a library: the node daemon's parts, so tests drive exactly
//! what the binary runs. Today: its configuration.

pub mod config;
