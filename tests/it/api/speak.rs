//! `POST /api/publish` and `POST /api/send`.
