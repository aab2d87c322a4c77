//! Unit tests of the token module.
