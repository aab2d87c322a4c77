//! Integration tests: one crate, a module per area, all against the real binary.

mod api;
mod auth;
mod bound_backlog;
mod bound_history;
mod bound_resume;
mod chat;
mod cluster;
mod events;
mod fair;
mod history;
mod hostile;
mod http;
mod moderation;
mod ops;
mod rooms;
mod util;
