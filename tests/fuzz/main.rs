//! Fuzzing of everything a client controls before and after the handshake, with proptest:
//! HTTP request heads through `http::parse` and `router::route`, and client frames through
//! `protocol::decode` and `Chat::handle`. Arbitrary bytes and near-valid inputs (built from
//! parts, or mutated from the corpus) go in; the properties say that nothing panics and every
//! input gets a clear answer: a 4xx with a one-line reason, an embedded file, a 101, a chat
//! line, or exactly one error line to the sender.
//!
//! Each property runs a fixed number of cases so `cargo test` stays quick; `FUZZ_CASES=200000
//! cargo test --release --test fuzz` runs longer. Hand-made hostile inputs live in
//! tests/corpus/{http,json}/*.txt, one raw input per file, named `EXPECTED-what.txt`; they run
//! through the same properties and must give the expected answer. Failures proptest finds are
//! kept beside the module that found them, in tests/fuzz/MODULE.proptest-regressions, and
//! replayed first on every run of that module's properties.

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

type Check<T = ()> = Result<T, TestCaseError>;

// ---------------------------------------------------------------------------------------------
// Configuration

/// Cases per property: `FUZZ_CASES` when set, else `default` (sized for a quick debug run).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // tests/fuzz/MODULE.proptest-regressions beside the module's source (`file!()` of its
        // `proptest!`), replayed before new cases.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Modules, one per section

mod api;
mod chat;
mod cluster;
mod corpus;
mod frames;
mod http;
mod json;
mod model;
mod mutation;
