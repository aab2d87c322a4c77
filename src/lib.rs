//! chatloop: a WebSocket chat server on one mio poll loop.
//!
//! The binary (`main.rs`) parses flags and starts [`server::Server`]; everything it needs
//! lives in these modules, which are public so tests and fuzz targets can reach them.
//! ARCHITECTURE.md has the map and the invariants.

pub mod api;
pub mod assets;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod events;
pub mod flags;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod redis;
pub mod rlimit;
pub mod router;
pub mod server;
pub mod timers;
pub mod ws;
