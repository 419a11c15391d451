//! stompline: a realtime chat server speaking STOMP over WebSocket and TCP.
//!
//! The crate is organised one folder per concern; see `docs/ARCHITECTURE.md`.

pub mod api;
pub mod auth;
pub mod broker;
pub mod bus;
pub mod chat;
pub mod cli;
pub mod config;
pub mod mail;
pub mod metrics;
pub mod pipeline;
pub mod presence;
pub mod relay;
pub mod server;
pub mod shared_state;
pub mod stomp;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod web;
