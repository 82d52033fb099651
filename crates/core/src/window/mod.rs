//! Incremental window operators: exact frame semantics with bounded state.

pub mod acc;
pub mod events;
pub mod exact_sum;
pub mod group;
pub mod input;
pub mod partition;
mod timers;
pub mod view_state;

pub use group::Entry;
pub use view_state::{RowFate, ViewMeta, ViewState, ViewStats};
