//! Connecting a client: a non-blocking TCP connect from the next 127.0.0.x source, then
//! tungstenite's client handshake, resumed on readiness, until the WebSocket is open.

use super::{Conn, Engine, Role, State};
use crate::net::{Sock, first_word, io_reason};
use mio::{Interest, Token};
use std::io;
use std::time::Instant;
use tungstenite::HandshakeError;
use tungstenite::WebSocket;
use tungstenite::handshake::client::{ClientHandshake, Response};

impl Engine<'_> {
    pub(super) fn start_mains(&mut self) {
        while self.next_main < self.args.conns && self.mains_in_flight < self.args.connect_concurrency {
            let i = self.next_main;
            self.next_main += 1;
            self.mains_in_flight += 1;
            match self.open_conn(Role::Main(i as u32)) {
                Ok(t) => self.mains[i].token = Some(t),
                Err(e) => {
                    self.mains_in_flight -= 1;
                    self.mains[i].resolved = true;
                    self.mains[i].failed = true;
                    *self.counts.connect_errors.entry(io_reason(&e)).or_default() += 1;
                }
            }
        }
    }

    /// Starts a non-blocking connect from the next source address.
    pub(super) fn open_conn(&mut self, role: Role) -> io::Result<usize> {
        let mut stream = crate::net::connect_from(self.args.addr, self.args.sources, &mut self.source_rr)?;
        crate::net::enable_rx_timestamps(&stream);
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        entry.insert(Conn {
            role,
            generation,
            state: State::Connecting(Sock::new(stream)),
            started: Instant::now(),
            welcomed: false,
            we_closed: None,
            peer_closed: false,
            dirty: false,
        });
        Ok(token)
    }

    pub(super) fn on_event(&mut self, t: usize, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        match std::mem::replace(&mut conn.state, State::Empty) {
            State::Connecting(mut stream) => {
                stream.drained = false;
                stream.read_closed |= read_closed;
                self.connected(t, stream)
            }
            State::Handshake(mut mid) => {
                let sock = mid.get_mut().get_mut();
                sock.drained = false;
                sock.read_closed |= read_closed;
                self.handshaken(t, mid.handshake())
            }
            State::Open(mut ws) => {
                let sock = ws.get_mut();
                sock.drained = false;
                sock.read_closed |= read_closed;
                conn.state = State::Open(ws);
                self.pump(t);
            }
            State::Empty => {}
        }
    }

    pub(super) fn connected(&mut self, t: usize, stream: Sock) {
        match stream.tcp.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.fail(t, io_reason(&e)),
        }
        match stream.tcp.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                self.conns[t].state = State::Connecting(stream);
                return;
            }
            Err(e) => return self.fail(t, io_reason(&e)),
        }
        let id = match self.conns[t].role {
            Role::Main(i) => self.ids[i as usize].clone(),
            Role::Churn => format!("{}c{}", self.args.id_prefix, self.conns[t].generation),
        };
        let mut url = format!("ws://{}/ws?id={id}", self.args.host);
        url += &match self.conns[t].role {
            Role::Main(i) => self.main_token(i as usize), // minted once per client
            Role::Churn => self.args.token_query(&id),
        };
        if let Role::Main(i) = self.conns[t].role {
            url += &self.blip_query(i as usize); // --mode blip: a resume's token and pseq
            if self.args.raw && self.args.rooms > 0 {
                url += &format!("&room=r{}", self.room_of(i as usize)); // raw: no join, the room is asked here
            }
        }
        let res = tungstenite::client::client_with_config(url.as_str(), stream, Some(self.ws_config));
        self.handshaken(t, res);
    }

    /// With `--token-key`, every held client's token minted now, before any connects: the
    /// connect phase then times the server's handshakes, not this process signing (an ES256
    /// signature costs about as much as the server's check).
    pub fn premint(&mut self) {
        for i in 0..self.args.conns {
            self.main_token(i);
        }
    }

    /// A held client's `&token=..` (empty without `--token-key`), minted once and presented
    /// again on every resume.
    fn main_token(&mut self, i: usize) -> String {
        if self.mains[i].auth.is_none() {
            self.mains[i].auth = Some(self.args.token_query(&self.ids[i]));
        }
        self.mains[i].auth.clone().unwrap_or_default()
    }

    pub(super) fn handshaken(
        &mut self,
        t: usize,
        res: Result<(WebSocket<Sock>, Response), HandshakeError<ClientHandshake<Sock>>>,
    ) {
        match res {
            Ok((ws, _)) => {
                self.conns[t].state = State::Open(Box::new(ws));
                self.open += 1;
                self.counts.peak_open = self.counts.peak_open.max(self.open);
                if self.args.raw {
                    self.on_welcome(t); // --proto raw: no welcome comes, the handshake is it
                }
                // The welcome may have come with the response: read it now.
                self.pump(t);
            }
            Err(HandshakeError::Interrupted(mid)) => self.conns[t].state = State::Handshake(Box::new(mid)),
            Err(HandshakeError::Failure(e)) => {
                let reason = match &e {
                    tungstenite::Error::Http(r) => format!("http_{}", r.status().as_u16()),
                    tungstenite::Error::Io(io) => io_reason(io),
                    other => format!("handshake_{}", first_word(&other.to_string())),
                };
                self.fail(t, reason);
            }
        }
    }

    /// A connection failed before its welcome.
    pub(super) fn fail(&mut self, t: usize, reason: String) {
        *self.counts.connect_errors.entry(reason).or_default() += 1;
        if let Some(Role::Main(i)) = self.conns.get(t).map(|c| c.role) {
            self.mains[i as usize].failed = true;
            self.blip_connect_failed(i as usize);
        }
        self.remove(t);
    }
}
