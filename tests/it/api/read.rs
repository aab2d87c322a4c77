//! `GET /api/rooms`, `/api/rooms/NAME`, `/api/history`, `/api/users/ID`.
