//! The task domain: what a task is, the durable queue with leases, and the workers that
//! run tasks in a session's browser over the DevTools protocol.
//!
//! - [`model`]: tasks, states, events, the steps a `steps` task runs and their validation;
//! - [`store`]: the store trait and its SQLite and PostgreSQL backends;
//! - [`queue`]: creating, claiming, leasing, cancelling, and live updates per session;
//! - [`cdp`]: a small DevTools client; [`steps`]: runs steps in a page;
//! - [`agent`]: the model loop against an OpenAI-compatible Chat Completions API;
//! - [`runner`]: what a running task may ask of whoever runs it.

pub mod agent;
pub mod cdp;
pub mod model;
pub mod queue;
pub mod runner;
pub mod steps;
pub mod store;

pub use model::{
    EventNote, InputError, Lease, NewTask, Step, Task, TaskEvent, TaskInput, TaskKind, TaskState,
};

pub use queue::{CreateError, QueueConfig, TaskQueue};
pub use runner::{RunContext, Stopped};
pub use store::{PgTaskStore, SqliteTaskStore, StoreError, TaskStore, WriteError};
