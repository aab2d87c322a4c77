//! The capped outbound queue of one connection.
//!
//! Chat lines are queued as shared `Bytes` (a room message is one allocation that every
//! recipient holds by reference) next to raw chunks (HTTP responses, pong and close frames).
//! Draining turns each run of consecutive lines into one WebSocket text message: a frame
//! header built for this client, then the shared payloads separated by `\n`. Frames that fit
//! in 1 KiB are copied into one buffer, several to a `send`; a bigger one goes through iovecs
//! with no copy. A frame that has begun to go out is frozen (`Inflight`) so that lines
//! queued meanwhile can never change a length already on the wire.
//!
//! The cap is charged what the queue really costs: each chunk's bytes plus `CHUNK_COST` for
//! its slot and bookkeeping, so a flood of 2-byte pongs cannot hide 60 bytes of heap apiece
//! behind a 2-byte charge. Past a run of `PONG_RUN` pongs not yet begun, a new pong replaces
//! the last (RFC 6455 §5.5.3 lets a server answer only the most recent ping).

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Lines per coalesced frame: keeps one `writev` at `2 * MAX_LINES` iovecs, far under IOV_MAX.
pub const MAX_LINES: usize = 64;

const NEWLINE: &[u8] = b"\n";
/// Frames of up to this many lines are written through a small iovec array.
const SMALL_FRAME: usize = 4;
/// A frame with at most this many bytes left is copied into one buffer for its write.
const GATHER: usize = 1024;
/// At most this many frames are gathered into one write.
const GATHER_FRAMES: usize = 16;
/// An unmasked server frame header is at most 10 bytes (2 + 8-byte length).
const HEAD_MAX: usize = 10;

/// Pongs queued one per ping before later ones merge into the latest (`push_pong`).
pub const PONG_RUN: usize = 16;

/// What one queued chunk costs beyond its bytes: its `VecDeque` slot, and the allocator's
/// header and rounding for a raw chunk's own copy. Charged against the cap with the bytes.
pub const CHUNK_COST: usize = std::mem::size_of::<Chunk>() + 32;

#[derive(Debug)]
enum Chunk {
    /// One JSON line of a text message; adjacent lines are coalesced.
    Line(Bytes),
    /// Bytes that go out exactly as they are.
    Raw(Bytes),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Line(b) | Chunk::Raw(b) => b.len(),
        }
    }
}

/// The frame being written: the first `chunks` entries of the queue, behind `head`.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    head: [u8; HEAD_MAX],
    head_len: u8,
    chunks: u8,
    written: u32,
}

/// What a drain achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Drain {
    /// Everything queued is on the wire.
    Empty,
    /// The socket is full; wait for writability.
    Blocked,
    /// This call's byte budget is spent with more queued: write again on a later turn.
    Budget,
}

/// Empty queue buffers kept for reuse. Without them every write freed each client's
/// buffer and the next line grew a new one (4, 8, 16 entries): in a room fan-out that was a
/// quarter of the server's instructions.
#[derive(Debug, Default)]
// Boxes, not queues: a spare moves into an `Outbox` as the box it already is, with no
// allocation on the hot path.
#[allow(clippy::vec_box)]
pub struct Spare(Vec<Box<Queue>>);

/// Enough for a 1,000-client room at full speed (up to ~200 KB); `trim_heap` empties it after
/// a crowd's arrival.
impl Spare {
    /// Forgets every spare buffer (when the server has gone idle).
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

const SPARE_MAX_BUFFERS: usize = 1024;
const SPARE_MAX_CAPACITY: usize = 64;

/// A connection's queue, boxed: one pointer in every connection, null while nothing is
/// queued (most connections, most of the time). An emptied box goes to the `Spare` list with
/// its buffer, and the next queue to fill takes it, so the hot path allocates no more than
/// when the queue lived in the connection.
#[derive(Debug, Default)]
pub struct Outbox(Option<Box<Queue>>);

#[derive(Debug, Default)]
pub struct Queue {
    queue: VecDeque<Chunk>,
    /// Bytes queued and not yet written, frame headers excepted. u32: caps are at most 4 GiB.
    queued: u32,
    inflight: Option<Inflight>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.queue.is_empty())
    }

    /// Bytes queued and not yet written (what `/metrics` reports).
    pub fn queued(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.queued as usize)
    }

    /// What the queue costs: its bytes plus `CHUNK_COST` per chunk. This is what caps judge.
    pub fn charged(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.charged())
    }

    /// Whether `len` more bytes in one chunk would keep the charge within `cap`.
    pub fn fits(&self, len: usize, cap: usize) -> bool {
        self.charged() + len + CHUNK_COST <= cap
    }

    /// Queues a chat line unless that would take the charge past `cap`.
    /// Returns false when the line was refused.
    pub fn push_line(&mut self, line: Bytes, cap: usize) -> bool {
        self.push(Chunk::Line(line), cap)
    }

    /// Queues bytes that go out verbatim, under the same cap.
    pub fn push_raw(&mut self, raw: Bytes, cap: usize) -> bool {
        self.push(Chunk::Raw(raw), cap)
    }

    /// Queues a pong frame (see `Queue::push_pong`).
    pub fn push_pong(&mut self, pong: Bytes, cap: usize) -> bool {
        if !self.fits(pong.len(), cap) && self.0.is_none() {
            return false;
        }
        self.0.get_or_insert_with(Box::default).push_pong(pong, cap)
    }

    fn push(&mut self, chunk: Chunk, cap: usize) -> bool {
        if !self.fits(chunk.len(), cap.min(u32::MAX as usize)) {
            return false;
        }
        self.0.get_or_insert_with(Box::default).push(chunk, cap)
    }

    /// See `Queue::discard_unsent`.
    pub fn discard_unsent(&mut self) {
        if let Some(q) = &mut self.0 {
            q.discard_unsent();
        }
    }

    /// See `Queue::drain`.
    pub fn drain(&mut self, w: &mut impl Write, budget: usize) -> io::Result<Drain> {
        match &mut self.0 {
            Some(q) => q.drain(w, budget),
            None => Ok(Drain::Empty),
        }
    }

    /// Hands back the memory of an empty queue, so that an idle connection holds none: a box
    /// with a small buffer goes to `spare` for the next queue that fills; others are freed.
    pub fn release(&mut self, spare: &mut Spare) {
        if self.is_empty()
            && let Some(q) = self.0.take()
            && q.queue.capacity() <= SPARE_MAX_CAPACITY
            && spare.0.len() < SPARE_MAX_BUFFERS
        {
            spare.0.push(q);
        }
    }

    /// Gives an unallocated queue a recycled box, if there is one, before a push.
    pub fn reuse(&mut self, spare: &mut Spare) {
        if self.0.is_none() {
            self.0 = spare.0.pop();
        }
    }

    /// How many chunks are queued.
    #[cfg(test)]
    fn chunks(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.queue.len())
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.queue.capacity())
    }
}

impl Queue {
    fn charged(&self) -> usize {
        self.queued as usize + self.queue.len() * CHUNK_COST
    }

    fn fits(&self, len: usize, cap: usize) -> bool {
        self.charged() + len + CHUNK_COST <= cap
    }

    /// Queues a pong frame; behind a run of `PONG_RUN` pongs not yet begun, it replaces the
    /// last of them instead: only the latest ping needs an answer, and a ping flood then costs
    /// a bounded run, not one chunk per ping.
    fn push_pong(&mut self, pong: Bytes, cap: usize) -> bool {
        let begun = self.inflight.as_ref().map_or(0, |f| f.chunks as usize);
        let charged = self.charged();
        // Pongs waiting at the tail, not yet begun: a short run is answered ping by ping (as
        // Autobahn's 2.10 expects of ten pings); only a longer one merges.
        let run = self
            .queue
            .iter()
            .skip(begun)
            .rev()
            .take(PONG_RUN)
            .take_while(|c| matches!(c, Chunk::Raw(b) if is_pong(b)))
            .count();
        if run == PONG_RUN
            && let Some(Chunk::Raw(last)) = self.queue.back_mut()
        {
            let grown = pong.len().saturating_sub(last.len());
            if charged + grown > cap {
                return false;
            }
            self.queued = self.queued - last.len() as u32 + pong.len() as u32;
            *last = pong;
            return true;
        }
        self.push(Chunk::Raw(pong), cap)
    }

    fn push(&mut self, chunk: Chunk, cap: usize) -> bool {
        if !self.fits(chunk.len(), cap.min(u32::MAX as usize)) {
            return false;
        }
        self.queued += chunk.len() as u32;
        self.queue.push_back(chunk);
        true
    }

    /// Drops the chat lines not yet begun, keeping a half-written frame so the stream stays
    /// valid, and every raw chunk: a 101 or a pong queued before the lines must still go out
    /// ahead of the close that follows.
    fn discard_unsent(&mut self) {
        let keep = self.inflight.as_ref().map_or(0, |f| f.chunks as usize);
        let mut index = 0;
        let mut dropped = 0u32;
        self.queue.retain(|c| {
            index += 1;
            let drop = index > keep && matches!(c, Chunk::Line(_));
            if drop {
                dropped += c.len() as u32;
            }
            !drop
        });
        self.queued -= dropped;
    }

    /// Writes until the queue is empty, the writer would block, or about `budget` bytes have
    /// gone out (a frame already begun is finished first only if it fits the budget).
    fn drain(&mut self, w: &mut impl Write, budget: usize) -> io::Result<Drain> {
        let mut sent = 0usize;
        while !self.queue.is_empty() {
            if sent >= budget {
                return Ok(Drain::Budget);
            }
            let first = self.inflight.take().unwrap_or_else(|| self.begin(0));
            let mut frames = Gathered::one(first, self.frame_len(0, &first));
            let mut buf = [0u8; GATHER];
            let result = match self.gather(&mut frames, &mut buf, budget - sent) {
                Some(len) => w.write(&buf[..len]),
                // Most frames carry a line or two: filling 128 iovecs for them was most of
                // the loop's own instructions per delivery in a room fan-out (callgrind).
                None if first.chunks as usize <= SMALL_FRAME => {
                    self.write_frame::<{ 2 * SMALL_FRAME }>(&first, w)
                }
                None => self.write_frame::<{ 2 * MAX_LINES }>(&first, w),
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    self.consume(&frames, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.inflight = Some(first),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inflight = Some(first);
                    return Ok(Drain::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Drain::Empty)
    }

    /// Copies what is left of the first of `frames` and the whole frames after it into
    /// `buf`, while they fit: a line or two and a ping for the same client go out in one
    /// `send`, not one each (a private fan-out sent a sixth of its writes for pings alone),
    /// and the kernel's iovec import and per-segment copy cost more than copying a few hundred
    /// bytes. `None` if the first (the only one in `frames`) alone does not fit: it goes
    /// through iovecs. Frames after the first join `frames`, only within `budget`.
    fn gather(&self, frames: &mut Gathered, buf: &mut [u8; GATHER], budget: usize) -> Option<usize> {
        let (first, total) = frames.frames[0];
        let mut len = self.copy_frame(0, &first, total, first.written as usize, buf)?;
        let mut at = first.chunks as usize;
        while at < self.queue.len() && frames.count < GATHER_FRAMES {
            let f = self.begin(at);
            let room = budget.clamp(len, GATHER);
            let Some(n) = self.copy_frame(at, &f, self.frame_len(at, &f), 0, &mut buf[len..room]) else {
                break;
            };
            len += n;
            frames.push(f, n);
            at += f.chunks as usize;
        }
        Some(len)
    }

    /// Copies frame `f` (`total` bytes, made of the chunks from `at`), less its first `skip`
    /// bytes, into `buf`; how many bytes, or `None` if they do not fit.
    fn copy_frame(
        &self,
        at: usize,
        f: &Inflight,
        total: usize,
        skip: usize,
        buf: &mut [u8],
    ) -> Option<usize> {
        if total - skip > buf.len() {
            return None;
        }
        let mut out = 0;
        let mut put = |bytes: &[u8], skip: &mut usize| {
            let from = (*skip).min(bytes.len());
            *skip -= from;
            buf[out..out + bytes.len() - from].copy_from_slice(&bytes[from..]);
            out += bytes.len() - from;
        };
        let mut skip = skip;
        put(&f.head[..f.head_len as usize], &mut skip);
        for (i, c) in self.queue.range(at..at + f.chunks as usize).enumerate() {
            if i > 0 {
                put(NEWLINE, &mut skip);
            }
            let (Chunk::Line(b) | Chunk::Raw(b)) = c;
            put(b, &mut skip);
        }
        Some(out)
    }

    /// The wire length of frame `f`, made of the chunks from `at`.
    fn frame_len(&self, at: usize, f: &Inflight) -> usize {
        let chunks = self.queue.range(at..at + f.chunks as usize);
        f.head_len as usize + chunks.map(Chunk::len).sum::<usize>() + f.chunks as usize - 1
    }

    /// Drops the frames `n` written bytes completed; a frame they end inside is in flight.
    fn consume(&mut self, frames: &Gathered, mut n: usize) {
        for &(mut f, len) in &frames.frames[..frames.count] {
            let left = len - f.written as usize;
            if n < left {
                f.written += n as u32;
                self.inflight = Some(f);
                return;
            }
            n -= left;
            for c in self.queue.drain(..f.chunks as usize) {
                self.queued -= c.len() as u32;
            }
        }
    }

    /// Writes what is left of `frame` in one call, through `N` iovecs (at least 2 per line).
    fn write_frame<const N: usize>(&self, frame: &Inflight, w: &mut impl Write) -> io::Result<usize> {
        let mut iov: [IoSlice<'_>; N] = [IoSlice::new(&[]); N];
        let n = self.iovecs(frame, &mut iov);
        let mut slices = &mut iov[..n];
        IoSlice::advance_slices(&mut slices, frame.written as usize);
        match slices {
            [one] => w.write(one),
            _ => w.write_vectored(slices),
        }
    }

    /// Freezes the frame that starts at chunk `at`: a raw chunk alone, or up to MAX_LINES
    /// lines as one text message.
    fn begin(&self, at: usize) -> Inflight {
        let mut f = Inflight { head: [0; HEAD_MAX], head_len: 0, chunks: 1, written: 0 };
        if let Some(Chunk::Line(_)) = self.queue.get(at) {
            let lines = self.queue.range(at..).take(MAX_LINES).take_while(|c| matches!(c, Chunk::Line(_)));
            let (mut n, mut len) = (0usize, 0usize);
            for c in lines {
                n += 1;
                len += c.len();
            }
            let payload = len + n - 1;
            let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
            let mut out = &mut f.head[..];
            header.format(payload as u64, &mut out).expect("header fits in MAX_SIZE");
            f.head_len = (HEAD_MAX - out.len()) as u8;
            f.chunks = n as u8;
        }
        f
    }

    /// Fills `iov` with the whole frame at the queue's front; returns how many slices.
    fn iovecs<'a>(&'a self, f: &'a Inflight, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if f.head_len > 0 {
            iov[n] = IoSlice::new(&f.head[..f.head_len as usize]);
            n = 1;
        }
        for (i, c) in self.queue.iter().take(f.chunks as usize).enumerate() {
            if i > 0 {
                iov[n] = IoSlice::new(NEWLINE);
                n += 1;
            }
            let (Chunk::Line(b) | Chunk::Raw(b)) = c;
            iov[n] = IoSlice::new(b);
            n += 1;
        }
        n
    }
}

/// The frames one write carries, in order, each with its wire length; the first may have
/// been begun by an earlier write.
struct Gathered {
    frames: [(Inflight, usize); GATHER_FRAMES],
    count: usize,
}

impl Gathered {
    fn one(first: Inflight, len: usize) -> Gathered {
        Gathered { frames: [(first, len); GATHER_FRAMES], count: 1 }
    }

    fn push(&mut self, f: Inflight, len: usize) {
        self.frames[self.count] = (f, len);
        self.count += 1;
    }
}

/// An unmasked server pong frame with a short payload: opcode 0xA with FIN, nothing after it.
pub fn is_pong(b: &[u8]) -> bool {
    b.len() >= 2
        && b[0] == 0x8a
        && b[1] & 0x80 == 0
        && (b[1] & 0x7f) < 126
        && b.len() == 2 + (b[1] & 0x7f) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `budget` bytes, then says WouldBlock; counts write calls.
    struct Fake {
        got: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget);
                self.got.extend_from_slice(&b[..take]);
                self.budget -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn fake(budget: usize) -> Fake {
        Fake { got: Vec::new(), budget, calls: 0 }
    }

    /// Splits a byte stream of unmasked server frames into (opcode, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let mut c = std::io::Cursor::new(b);
            let (h, len) = FrameHeader::parse(&mut c).unwrap().expect("whole header");
            let start = c.position() as usize;
            let op: u8 = h.opcode.into();
            out.push((op, b[start..start + len as usize].to_vec()));
            b = &b[start + len as usize..];
        }
        out
    }

    #[test]
    fn coalesces_lines_into_one_text_frame_in_one_write() {
        let mut o = Outbox::default();
        let shared = Bytes::from_static(b"{\"n\":1}");
        assert!(o.push_line(shared.clone(), 1000));
        assert!(o.push_line(Bytes::from_static(b"{\"n\":2}"), 1000));
        let mut w = fake(usize::MAX);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Empty);
        assert_eq!(w.calls, 1);
        assert_eq!(frames(&w.got), vec![(1, b"{\"n\":1}\n{\"n\":2}".to_vec())]);
        assert_eq!(o.queued(), 0);
    }

    #[test]
    fn raw_chunks_keep_their_place_between_lines() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"a"), 1000);
        o.push_raw(Bytes::from_static(&[0x8a, 0x00]), 1000); // an empty pong
        o.push_line(Bytes::from_static(b"b"), 1000);
        let mut w = fake(usize::MAX);
        o.drain(&mut w, usize::MAX).unwrap();
        assert_eq!(frames(&w.got), vec![(1, b"a".to_vec()), (10, vec![]), (1, b"b".to_vec())]);
    }

    #[test]
    fn cap_refuses_the_push_that_would_pass_it_counting_each_chunks_cost() {
        let mut o = Outbox::default();
        let cap = 100 + 2 * CHUNK_COST;
        assert!(o.push_line(Bytes::from(vec![b'x'; 60]), cap));
        assert!(o.push_line(Bytes::from(vec![b'x'; 40]), cap));
        assert!(!o.push_line(Bytes::from_static(b"y"), cap));
        assert_eq!((o.queued(), o.charged()), (100, cap));
        // A thousand 2-byte chunks cost far more than 2,000 bytes.
        let mut p = Outbox::default();
        let n = (0..1000).take_while(|_| p.push_raw(Bytes::from_static(b"ab"), 4096)).count();
        assert_eq!(n, 4096 / (2 + CHUNK_COST));
    }

    #[test]
    fn a_run_of_pongs_is_merged_into_the_latest_but_a_begun_one_is_kept() {
        let mut o = Outbox::default();
        let cap = 100 * PONG_RUN;
        for i in 0..100u8 {
            assert!(o.push_pong(Bytes::from(vec![0x8a, 1, i]), cap));
        }
        assert_eq!((o.chunks(), o.queued()), (PONG_RUN, 3 * PONG_RUN), "a run, then merged");
        let mut w = fake(1);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Blocked);
        w.budget = 1000;
        o.drain(&mut w, usize::MAX).unwrap();
        let pongs: Vec<u8> = frames(&w.got)
            .into_iter()
            .map(|(op, p)| {
                assert_eq!(op, 10);
                p[0]
            })
            .collect();
        let mut want: Vec<u8> = (0..PONG_RUN as u8 - 1).collect();
        want.push(99);
        assert_eq!(pongs, want, "each of the first pings answered, then the latest");
        // A begun pong is never replaced; a line between pongs keeps them apart.
        let mut o = Outbox::default();
        for _ in 0..PONG_RUN {
            o.push_pong(Bytes::from_static(&[0x8a, 0]), cap);
        }
        let mut w = fake(1);
        o.drain(&mut w, usize::MAX).unwrap();
        o.push_pong(Bytes::from_static(&[0x8a, 1, 7]), cap);
        assert_eq!(o.chunks(), PONG_RUN + 1, "the begun one does not count toward the run");
        o.push_line(Bytes::from_static(b"x"), cap);
        o.push_pong(Bytes::from_static(&[0x8a, 0]), cap);
        assert_eq!(o.chunks(), PONG_RUN + 3);
    }

    #[test]
    fn drain_stops_at_its_budget_and_resumes() {
        let mut o = Outbox::default();
        for _ in 0..10 {
            o.push_raw(Bytes::from(vec![b'r'; 100]), usize::MAX);
        }
        let mut w = fake(usize::MAX);
        assert_eq!(o.drain(&mut w, 250).unwrap(), Drain::Budget);
        assert_eq!(w.got.len(), 300);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Empty);
        assert_eq!(w.got.len(), 1000);
    }

    #[test]
    fn small_frames_share_one_write_and_a_cut_inside_one_resumes_there() {
        let queue = |o: &mut Outbox| {
            o.push_line(Bytes::from_static(b"hello"), 1000);
            o.push_raw(Bytes::from_static(&[0x89, 0x02, b'p', b'1']), 1000); // a ping
            o.push_line(Bytes::from_static(b"world"), 1000);
        };
        let mut o = Outbox::default();
        queue(&mut o);
        let mut w = fake(usize::MAX);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Empty);
        assert_eq!(w.calls, 1, "three small frames, one write");
        let want = |last: &[u8]| vec![(1, b"hello".to_vec()), (9, b"p1".to_vec()), (1, last.to_vec())];
        assert_eq!(frames(&w.got), want(b"world"));
        // Cut inside the ping (7 bytes of hello's frame, then 3 of the ping's 4): the ping is
        // in flight, the line after it not begun, so a late line joins that one's frame.
        let mut o = Outbox::default();
        queue(&mut o);
        let mut w = fake(10);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Blocked);
        assert_eq!(o.queued(), 4 + 5, "hello went whole; the ping (until its last byte) and world are left");
        o.push_line(Bytes::from_static(b"late"), 1000);
        w.budget = usize::MAX;
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Empty);
        assert_eq!(frames(&w.got), want(b"world\nlate"));
    }

    #[test]
    fn partial_writes_resume_and_late_lines_do_not_join_a_started_frame() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"hello"), 1000);
        o.push_line(Bytes::from_static(b"world"), 1000);
        let mut w = fake(4);
        assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Blocked);
        // Queued after the frame began: must go in a frame of its own.
        o.push_line(Bytes::from_static(b"late"), 1000);
        for step in [1, 3, 0, 2, 100] {
            w.budget = step;
            let _ = o.drain(&mut w, usize::MAX).unwrap();
        }
        assert!(o.is_empty());
        assert_eq!(frames(&w.got), vec![(1, b"hello\nworld".to_vec()), (1, b"late".to_vec())]);
    }

    #[test]
    fn empty_queues_give_their_buffer_to_the_next_queue() {
        let mut spare = Spare::default();
        let mut a = Outbox::default();
        a.push_line(Bytes::from_static(b"x"), 1000);
        a.release(&mut spare);
        assert_eq!(spare.0.len(), 0, "a queue with lines keeps its buffer");
        a.drain(&mut fake(100), usize::MAX).unwrap();
        a.release(&mut spare);
        assert_eq!((spare.0.len(), a.capacity()), (1, 0));
        assert!(a.0.is_none(), "an empty queue holds no box");
        let mut b = Outbox::default();
        b.reuse(&mut spare);
        assert!(b.capacity() > 0 && spare.0.is_empty());
        assert_eq!(std::mem::size_of::<Outbox>(), 8);
    }

    #[test]
    fn discard_keeps_raw_chunks_in_their_place() {
        let mut o = Outbox::default();
        o.push_raw(Bytes::from_static(b"HTTP/1.1 101"), 1000);
        o.push_line(Bytes::from_static(b"welcome"), 1000);
        o.push_raw(Bytes::from_static(&[0x8a, 0x00]), 1000);
        o.push_line(Bytes::from_static(b"later"), 1000);
        o.discard_unsent();
        assert_eq!(o.queued(), 14);
        let mut w = fake(100);
        o.drain(&mut w, usize::MAX).unwrap();
        assert_eq!(&w.got, b"HTTP/1.1 101\x8a\x00");
    }

    #[test]
    fn discard_keeps_the_half_written_frame() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"first"), 1000);
        let mut w = fake(3);
        o.drain(&mut w, usize::MAX).unwrap();
        o.push_line(Bytes::from_static(b"second"), 1000);
        o.discard_unsent();
        assert_eq!(o.queued(), 5);
        w.budget = 100;
        o.drain(&mut w, usize::MAX).unwrap();
        assert_eq!(frames(&w.got), vec![(1, b"first".to_vec())]);
    }

    #[test]
    fn long_runs_split_at_max_lines_and_big_payloads_get_long_headers() {
        let mut o = Outbox::default();
        let line = Bytes::from(vec![b'z'; 1000]);
        for _ in 0..MAX_LINES + 1 {
            o.push_line(line.clone(), usize::MAX);
        }
        let mut w = fake(usize::MAX);
        o.drain(&mut w, usize::MAX).unwrap();
        let f = frames(&w.got);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1.len(), MAX_LINES * 1000 + MAX_LINES - 1);
        assert_eq!(f[1].1.len(), 1000);
        assert_eq!(w.calls, 2);
    }

    proptest::proptest! {
        /// Any sequence of pushes (lines, raw frames, pongs) and partial writes: `queued` is
        /// always the real bytes not yet written, the charge never passes the cap, and what
        /// comes out is every accepted line and raw frame, in whole frames.
        #[test]
        fn accounting_holds_under_any_pushes_and_partial_writes(
            ops in proptest::collection::vec((0u8..4, 0usize..126, 0usize..200), 1..80),
            cap in 200usize..4000,
        ) {
            let mut o = Outbox::default();
            let mut w = fake(0);
            let (mut lines, mut line_bytes, mut raw_bytes, mut pongs) = (0, 0, 0, 0);
            for (kind, len, budget) in ops {
                match kind {
                    0 => if o.push_line(Bytes::from(vec![b'l'; len.max(1)]), cap) {
                        lines += 1;
                        line_bytes += len.max(1);
                    },
                    1 => {
                        let mut f = vec![0x82, len as u8];
                        f.resize(2 + len, b'r');
                        if o.push_raw(Bytes::from(f), cap) {
                            raw_bytes += len;
                        }
                    }
                    2 => pongs += o.push_pong(Bytes::from_static(&[0x8a, 0]), cap) as usize,
                    _ => {
                        w.budget = budget;
                        let _ = o.drain(&mut w, len.max(1)).unwrap();
                    }
                }
                proptest::prop_assert!(o.charged() <= cap, "charged {} > cap {}", o.charged(), cap);
                let real: usize = o.0.as_ref().map_or(0, |q| q.queue.iter().map(Chunk::len).sum());
                proptest::prop_assert_eq!(o.queued(), real);
            }
            w.budget = usize::MAX;
            proptest::prop_assert_eq!(o.drain(&mut w, usize::MAX).unwrap(), Drain::Empty);
            proptest::prop_assert_eq!(o.queued(), 0);
            let out = frames(&w.got);
            let text: Vec<&[u8]> = out.iter().filter(|f| f.0 == 1).flat_map(|f| f.1.split(|b| *b == b'\n')).collect();
            proptest::prop_assert_eq!(text.len(), lines);
            proptest::prop_assert_eq!(text.iter().map(|l| l.len()).sum::<usize>(), line_bytes);
            proptest::prop_assert!(text.iter().all(|l| l.iter().all(|b| *b == b'l')));
            proptest::prop_assert_eq!(out.iter().filter(|f| f.0 == 2).map(|f| f.1.len()).sum::<usize>(), raw_bytes);
            proptest::prop_assert!(out.iter().filter(|f| f.0 == 10).count() <= pongs);
        }
    }
}
