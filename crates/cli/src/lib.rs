//! The `lockstep` user tool as a library, so tests drive exactly what the
//! binary runs: `run` a view over a file, `gen` data, `quickstart`, `bench`.

pub mod alloc;
pub mod bench;
pub mod bench_cluster;
pub mod bench_soak;
pub mod gen;
pub mod node;
pub mod pipeline;
pub mod quickstart;
pub mod run;
