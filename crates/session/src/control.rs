//! Who holds control of a session's browser: the agent (a program over the DevTools
//! protocol), a person (through the viewer), or nobody in particular (no agent connected:
//! the person drives as always).
//!
//! One [`ControlBoard`] per server holds a watch channel per session: the control channel
//! tells viewers about every change, the CDP relay tells agents (and holds back their
//! page-changing commands while a person holds control), and the VNC proxy drops the
//! person's input while the agent holds it. A change is one event, not a search for
//! connections.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Who drives the session's browser now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// No agent is connected: the person drives, as without agents.
    None,
    /// An agent drives; the person's input is held back.
    Agent,
    /// A person took control; the agents' page-changing commands wait.
    Person,
}

impl Holder {
    pub fn as_str(self) -> &'static str {
        match self {
            Holder::None => "none",
            Holder::Agent => "agent",
            Holder::Person => "person",
        }
    }
}

/// The current holder, since when, and why (an agent asking for a person says why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ControlState {
    pub holder: Holder,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Set while an agent asks for a person (`Livesession.requestHuman`), until someone
    /// takes control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Agents (CDP connections) connected now: a person can hand control back only to one.
    pub agents: usize,
}

impl ControlState {
    fn new(holder: Holder) -> Self {
        Self {
            holder,
            since: OffsetDateTime::now_utc(),
            reason: None,
            agents: 0,
        }
    }
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no agent is connected to hand control to")]
    NoAgent,
}

/// One session's state; the agent count lives in it (viewers are told it).
struct Entry {
    state: watch::Sender<ControlState>,
}

impl Entry {
    fn new() -> Self {
        Self {
            state: watch::Sender::new(ControlState::new(Holder::None)),
        }
    }

    fn agents(&self) -> usize {
        self.state.borrow().agents
    }

    fn count_agents(&self, count: impl FnOnce(usize) -> usize) {
        self.state.send_modify(|s| s.agents = count(s.agents));
    }

    fn set(&self, holder: Holder, reason: Option<String>) {
        self.state.send_if_modified(|s| {
            let changed = s.holder != holder || s.reason != reason;
            if s.holder != holder {
                s.since = OffsetDateTime::now_utc();
            }
            s.holder = holder;
            s.reason = reason;
            changed
        });
    }
}

/// How many sessions' states are kept before unfollowed ones are dropped.
const FORGET_ABOVE: usize = 1024;

/// Control state of every session this node serves.
#[derive(Default)]
pub struct ControlBoard {
    sessions: Mutex<HashMap<String, Entry>>,
}

/// An agent's presence: control returns to nobody when the last one of a session goes.
pub struct AgentPresence<'a> {
    board: &'a ControlBoard,
    session_id: String,
}

impl Drop for AgentPresence<'_> {
    fn drop(&mut self) {
        let mut sessions = self.board.sessions.lock().expect("control board");
        if let Some(entry) = sessions.get_mut(&self.session_id) {
            entry.count_agents(|n| n.saturating_sub(1));
            if entry.agents() == 0 && entry.state.borrow().holder == Holder::Agent {
                entry.set(Holder::None, None);
            }
        }
    }
}

impl ControlBoard {
    fn with<T>(&self, session_id: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut sessions = self.sessions.lock().expect("control board");
        // Sessions nobody follows any more (ended, or simply left) are forgotten once
        // there are many: their state is `none` again the next time anyone looks.
        if sessions.len() >= FORGET_ABOVE && !sessions.contains_key(session_id) {
            sessions.retain(|_, e| e.agents() > 0 || e.state.receiver_count() > 0);
        }
        f(sessions.entry(session_id.to_owned()).or_insert_with(Entry::new))
    }

    /// Follows the session's control state (the current value first).
    pub fn subscribe(&self, session_id: &str) -> watch::Receiver<ControlState> {
        self.with(session_id, |e| e.state.subscribe())
    }

    pub fn current(&self, session_id: &str) -> ControlState {
        self.with(session_id, |e| e.state.borrow().clone())
    }

    /// An agent connected. With nobody holding control, the agent gets it; a person who
    /// holds it keeps it.
    pub fn agent_joined(&self, session_id: &str) -> AgentPresence<'_> {
        self.with(session_id, |e| {
            e.count_agents(|n| n + 1);
            if e.state.borrow().holder == Holder::None {
                e.set(Holder::Agent, None);
            }
        });
        AgentPresence {
            board: self,
            session_id: session_id.to_owned(),
        }
    }

    /// A person takes control (from the agent, or before one connects).
    pub fn take(&self, session_id: &str) {
        self.with(session_id, |e| e.set(Holder::Person, None));
    }

    /// The person hands control back: to the agents if any is connected, else to nobody.
    pub fn release(&self, session_id: &str) {
        self.with(session_id, |e| {
            let to = if e.agents() > 0 { Holder::Agent } else { Holder::None };
            e.set(to, None);
        });
    }

    /// Sets the holder outright (the HTTP API). `agent` needs a connected agent.
    pub fn set(&self, session_id: &str, holder: Holder) -> Result<(), ControlError> {
        self.with(session_id, |e| {
            if holder == Holder::Agent && e.agents() == 0 {
                return Err(ControlError::NoAgent);
            }
            e.set(holder, None);
            Ok(())
        })
    }

    /// Withdraws an agent's request for a person (its task ended or was cancelled before
    /// anyone took control); the holder stays.
    pub fn withdraw_request(&self, session_id: &str) {
        self.with(session_id, |e| {
            let holder = e.state.borrow().holder;
            e.set(holder, None);
        });
    }

    /// An agent asks for a person: the viewers show `reason` and offer to take control.
    /// Control does not change until someone takes it.
    pub fn request_human(&self, session_id: &str, reason: &str) {
        self.with(session_id, |e| {
            let holder = e.state.borrow().holder;
            e.set(holder, Some(reason.to_owned()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_take_free_control_and_give_it_back_when_the_last_one_leaves() {
        let board = ControlBoard::default();
        let rx = board.subscribe("s");
        assert_eq!(rx.borrow().holder, Holder::None);
        let first = board.agent_joined("s");
        assert_eq!(board.current("s").holder, Holder::Agent);
        let second = board.agent_joined("s");
        assert_eq!(board.current("s").agents, 2);
        drop(first);
        assert_eq!(board.current("s").holder, Holder::Agent, "one agent is still there");
        drop(second);
        assert_eq!(board.current("s").holder, Holder::None);
    }

    #[test]
    fn a_person_keeps_control_until_they_release_it() {
        let board = ControlBoard::default();
        let agent = board.agent_joined("s");
        board.request_human("s", "a captcha");
        assert_eq!(board.current("s").reason.as_deref(), Some("a captcha"));
        board.take("s");
        let state = board.current("s");
        assert_eq!((state.holder, state.reason), (Holder::Person, None));
        let other = board.agent_joined("s");
        assert_eq!(board.current("s").holder, Holder::Person, "a new agent does not take it");
        board.release("s");
        assert_eq!(board.current("s").holder, Holder::Agent);
        board.take("s");
        drop((agent, other));
        assert_eq!(board.current("s").holder, Holder::Person, "agents leaving do not take it from the person");
        board.release("s");
        assert_eq!(board.current("s").holder, Holder::None);
        assert_eq!(board.set("s", Holder::Agent), Err(ControlError::NoAgent));
    }

    #[test]
    fn every_change_is_one_event_and_repeats_are_none() {
        let board = ControlBoard::default();
        let mut rx = board.subscribe("s");
        rx.borrow_and_update();
        board.take("s");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        board.take("s");
        assert!(!rx.has_changed().unwrap(), "taking twice is not a change");
    }
}
