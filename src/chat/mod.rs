//! Chat: conversations, durable ordered messages and everything around
//! them. [`service::Chat`] holds the rules; [`gateway::Gateway`] delivers
//! events to this instance's sessions; [`events`] defines what travels.

pub mod events;
pub mod gateway;
pub mod service;
pub mod state;

pub use gateway::{Activation, ChatDest, Completion, Gateway};
pub use service::{Chat, ChatError};
pub use state::{ChatState, SendRate, TypingState};
