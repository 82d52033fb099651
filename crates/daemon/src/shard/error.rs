//! What can go wrong in a shard, as types: the HTTP layer maps each kind
//! to a status in one place (`http::reply::shard_error`), and the
//! supervisor and the actor decide on kinds, never on message text.

/// A shard's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The shard cannot answer now but will shortly: it is moving,
    /// restarting, or waiting for the control plane. Retry (503).
    #[error("{0}")]
    Unavailable(String),
    /// The control plane refused a commit: another node owns the shard now
    /// (or owns it under a newer owner epoch).
    #[error("fenced: {0}")]
    Fenced(String),
    /// A commit whose outcome is unknown (the proposal's answer was lost):
    /// the shard restarts from what the control plane holds.
    #[error("uncertain: {0}")]
    Uncertain(String),
    /// Serve-and-ingest of an event ingested before: its Idempotency-Key
    /// or its event id (tables with `event_id`) was applied already.
    #[error("this event was already ingested (its Idempotency-Key or event id was seen before); its features are in its training row")]
    AlreadyIngested,
    /// Serve-and-ingest of an event its shard refused when it read it (a
    /// dead letter, with this reason): it has no training row (400).
    #[error("the event was refused to the dead-letter output: {0}; it has no training row")]
    Refused(String),
    /// Serve-and-ingest under an Idempotency-Key its shard had applied for
    /// another body: the event is a dead letter (422).
    #[error("{0}")]
    KeyReused(String),
    /// The view does not run (any more: `views apply` replaced it).
    #[error("view `{0}` is no longer running")]
    UnknownView(String),
    /// Storage, the object store, a codec, the engine: the shard's own
    /// failure.
    #[error("{0}")]
    Internal(String),
}

impl ShardError {
    /// An internal error from anything that displays.
    pub fn internal(e: impl std::fmt::Display) -> ShardError {
        ShardError::Internal(e.to_string())
    }
}

/// Why a shard actor stopped, as ractor carries it (a string); the
/// supervisor restarts a shard unless the reason is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `views apply`: restart under the new pipeline.
    PipelineChange,
    /// The control plane gave the shard to another node.
    Fenced,
    /// A graceful move ended: the shard is the target's now.
    HandedOff,
    /// The shard map no longer gives the shard to this node.
    Released,
    /// Another actor replaced this one.
    Superseded,
}

impl StopReason {
    const ALL: [StopReason; 5] = [
        StopReason::PipelineChange,
        StopReason::Fenced,
        StopReason::HandedOff,
        StopReason::Released,
        StopReason::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::PipelineChange => "pipeline change",
            StopReason::Fenced => "fenced",
            StopReason::HandedOff => "handed off",
            StopReason::Released => "released",
            StopReason::Superseded => "superseded",
        }
    }

    /// The reason a stopped actor gave, if it is one of ours.
    pub fn parse(s: &str) -> Option<StopReason> {
        StopReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// After these the supervisor starts nothing.
    pub fn is_final(self) -> bool {
        !matches!(self, StopReason::PipelineChange)
    }
}

impl From<StopReason> for String {
    fn from(r: StopReason) -> String {
        r.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_round_trip_through_their_text() {
        for r in StopReason::ALL {
            assert_eq!(StopReason::parse(&String::from(r)), Some(r));
        }
        assert_eq!(StopReason::parse("shard 3: failure requested"), None);
    }
}
