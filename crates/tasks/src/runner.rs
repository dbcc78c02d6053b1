//! What a running task may ask of whoever runs it: the built-in runners get this from the
//! gateway (the queue, the session's control board), and the steps and agent loops are
//! written against it only.

use crate::model::EventNote;

/// Why a run must stop now. The loop returns at once; the task's state was already
/// written by whoever stopped it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The lease ended (this worker was too slow, or the task was taken elsewhere).
    #[error("the lease was lost")]
    LeaseLost,
    #[error("the server is shutting down")]
    Shutdown,
}

#[async_trait::async_trait]
pub trait RunContext: Send + Sync {
    /// Records progress (a step begun or done, the agent's thought, a screenshot) as an
    /// event the viewers see.
    async fn report(&self, note: EventNote) -> Result<(), Stopped>;
    /// Returns at once while the agent may drive; while a person holds control of the
    /// browser, waits until they hand it back.
    async fn wait_for_control(&self) -> Result<(), Stopped>;
    /// Asks the person for help (`reason` is shown to them): the task is
    /// `waiting_for_person` until they take control and hand it back, then `running` again.
    async fn ask_person(&self, reason: &str) -> Result<(), Stopped>;
    /// Resolves when the run must stop (cancel, lost lease, shutdown).
    async fn stopped(&self) -> Stopped;
}
