//! Incremental window operators: exact frame semantics with bounded state.

pub mod acc;
pub mod events;
pub mod exact_sum;
pub mod group;
pub mod input;
pub mod partition;
pub mod prepare;
mod timers;
pub mod view_state;

pub use group::Entry;
pub use prepare::{Pre, Prepared};
pub use view_state::{RowFate, ViewMeta, ViewState, ViewStats};
