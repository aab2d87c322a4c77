//! The capped outbound queue of one connection.
//!
//! Chat lines are queued as shared `Bytes` (a room message is one allocation that every
//! recipient holds by reference) next to raw chunks (HTTP responses, pong and close frames).
//! Draining turns each run of consecutive lines into one WebSocket text message: a frame
//! header built for this client, then the shared payloads separated by `\n`, written with one
//! `writev` and no copy. A frame that has begun to go out is frozen (`Inflight`) so that lines
//! queued meanwhile can never change a length already on the wire.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Lines per coalesced frame: keeps one `writev` at `2 * MAX_LINES` iovecs, far under IOV_MAX.
pub const MAX_LINES: usize = 64;

const NEWLINE: &[u8] = b"\n";
/// An unmasked server frame header is at most 10 bytes (2 + 8-byte length).
const HEAD_MAX: usize = 10;

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
#[derive(Debug)]
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
}

/// Empty queue buffers kept for reuse. Without them every flush window freed each client's
/// buffer and the next line grew a new one (4, 8, 16 entries): in a room fan-out that was a
/// quarter of the server's instructions.
#[derive(Debug, Default)]
pub struct Spare(Vec<VecDeque<Chunk>>);

/// Enough for a 1,000-client room at full speed; an idle server keeps at most ~200 KB here.
impl Spare {
    /// Forgets every spare buffer (when the server has gone idle).
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

const SPARE_MAX_BUFFERS: usize = 1024;
const SPARE_MAX_CAPACITY: usize = 64;

#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Chunk>,
    /// Bytes queued and not yet written, frame headers excepted. u32 (caps are at most 4 GiB)
    /// keeps `Conn` 16 bytes smaller, which is 1.5% of an idle connection.
    queued: u32,
    inflight: Option<Inflight>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queued as usize
    }

    /// Queues a chat line unless that would take the queue past `cap`.
    /// Returns false when the line was refused: the caller must drop this slow consumer.
    pub fn push_line(&mut self, line: Bytes, cap: usize) -> bool {
        self.push(Chunk::Line(line), cap)
    }

    /// Queues bytes that go out verbatim, under the same cap.
    pub fn push_raw(&mut self, raw: Bytes, cap: usize) -> bool {
        self.push(Chunk::Raw(raw), cap)
    }

    fn push(&mut self, chunk: Chunk, cap: usize) -> bool {
        let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        if self.queued as usize + len as usize > cap.min(u32::MAX as usize) {
            return false;
        }
        self.queued += len;
        self.queue.push_back(chunk);
        true
    }

    /// Drops the chat lines not yet begun, keeping a half-written frame so the stream stays
    /// valid, and every raw chunk: a 101 or a pong queued before the lines must still go out
    /// ahead of the close that follows.
    pub fn discard_unsent(&mut self) {
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

    /// Writes until the queue is empty or the writer would block.
    pub fn drain(&mut self, w: &mut impl Write) -> io::Result<Drain> {
        while !self.queue.is_empty() {
            let frame = match self.inflight.take() {
                Some(f) => f,
                None => self.begin(),
            };
            let mut frame = frame;
            let (result, total) = {
                let mut iov: [IoSlice<'_>; 2 * MAX_LINES] = [IoSlice::new(&[]); 2 * MAX_LINES];
                let (n, total) = self.iovecs(&frame, &mut iov);
                let mut slices = &mut iov[..n];
                IoSlice::advance_slices(&mut slices, frame.written as usize);
                (w.write_vectored(slices), total)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    frame.written += n as u32;
                    if frame.written as usize == total {
                        for c in self.queue.drain(..frame.chunks as usize) {
                            self.queued -= c.len() as u32;
                        }
                    } else {
                        self.inflight = Some(frame);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.inflight = Some(frame),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inflight = Some(frame);
                    return Ok(Drain::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Drain::Empty)
    }

    /// Hands back the memory of an empty queue, so that an idle connection holds none.
    /// Small buffers go to `spare` for the next queue that fills; big ones are freed.
    pub fn release(&mut self, spare: &mut Spare) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            let buf = std::mem::take(&mut self.queue);
            if buf.capacity() <= SPARE_MAX_CAPACITY && spare.0.len() < SPARE_MAX_BUFFERS {
                spare.0.push(buf);
            }
        }
    }

    /// Gives an unallocated queue a recycled buffer, if there is one, before a push.
    pub fn reuse(&mut self, spare: &mut Spare) {
        if self.queue.capacity() == 0
            && let Some(buf) = spare.0.pop()
        {
            self.queue = buf;
        }
    }

    /// Freezes the next frame: a raw chunk alone, or up to MAX_LINES lines as one text message.
    fn begin(&self) -> Inflight {
        let mut f = Inflight { head: [0; HEAD_MAX], head_len: 0, chunks: 1, written: 0 };
        if let Some(Chunk::Line(_)) = self.queue.front() {
            let lines = self.queue.iter().take(MAX_LINES).take_while(|c| matches!(c, Chunk::Line(_)));
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

    /// Fills `iov` with the whole frame; returns how many slices and how many bytes.
    fn iovecs<'a>(&'a self, f: &'a Inflight, iov: &mut [IoSlice<'a>]) -> (usize, usize) {
        let (mut n, mut total) = (0, 0);
        if f.head_len > 0 {
            iov[n] = IoSlice::new(&f.head[..f.head_len as usize]);
            (n, total) = (1, f.head_len as usize);
        }
        for (i, c) in self.queue.iter().take(f.chunks as usize).enumerate() {
            if i > 0 {
                iov[n] = IoSlice::new(NEWLINE);
                (n, total) = (n + 1, total + 1);
            }
            let (Chunk::Line(b) | Chunk::Raw(b)) = c;
            iov[n] = IoSlice::new(b);
            (n, total) = (n + 1, total + b.len());
        }
        (n, total)
    }
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
        assert_eq!(o.drain(&mut w).unwrap(), Drain::Empty);
        assert_eq!(w.calls, 1);
        assert_eq!(frames(&w.got), vec![(1, b"{\"n\":1}\n{\"n\":2}".to_vec())]);
        assert_eq!(o.queued(), 0);
    }

    #[test]
    fn raw_chunks_keep_their_place_between_lines() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"a"), 100);
        o.push_raw(Bytes::from_static(&[0x8a, 0x00]), 100); // an empty pong
        o.push_line(Bytes::from_static(b"b"), 100);
        let mut w = fake(usize::MAX);
        o.drain(&mut w).unwrap();
        assert_eq!(frames(&w.got), vec![(1, b"a".to_vec()), (10, vec![]), (1, b"b".to_vec())]);
    }

    #[test]
    fn cap_refuses_the_push_that_would_pass_it() {
        let mut o = Outbox::default();
        assert!(o.push_line(Bytes::from(vec![b'x'; 60]), 100));
        assert!(o.push_line(Bytes::from(vec![b'x'; 40]), 100));
        assert!(!o.push_line(Bytes::from_static(b"y"), 100));
        assert_eq!(o.queued(), 100);
    }

    #[test]
    fn partial_writes_resume_and_late_lines_do_not_join_a_started_frame() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"hello"), 1000);
        o.push_line(Bytes::from_static(b"world"), 1000);
        let mut w = fake(4);
        assert_eq!(o.drain(&mut w).unwrap(), Drain::Blocked);
        // Queued after the frame began: must go in a frame of its own.
        o.push_line(Bytes::from_static(b"late"), 1000);
        for step in [1, 3, 0, 2, 100] {
            w.budget = step;
            let _ = o.drain(&mut w).unwrap();
        }
        assert!(o.is_empty());
        assert_eq!(frames(&w.got), vec![(1, b"hello\nworld".to_vec()), (1, b"late".to_vec())]);
    }

    #[test]
    fn empty_queues_give_their_buffer_to_the_next_queue() {
        let mut spare = Spare::default();
        let mut a = Outbox::default();
        a.push_line(Bytes::from_static(b"x"), 100);
        a.release(&mut spare);
        assert_eq!(spare.0.len(), 0, "a queue with lines keeps its buffer");
        a.drain(&mut fake(100)).unwrap();
        a.release(&mut spare);
        assert_eq!((spare.0.len(), a.queue.capacity()), (1, 0));
        let mut b = Outbox::default();
        b.reuse(&mut spare);
        assert!(b.queue.capacity() > 0 && spare.0.is_empty());
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
        o.drain(&mut w).unwrap();
        assert_eq!(&w.got, b"HTTP/1.1 101\x8a\x00");
    }

    #[test]
    fn discard_keeps_the_half_written_frame() {
        let mut o = Outbox::default();
        o.push_line(Bytes::from_static(b"first"), 1000);
        let mut w = fake(3);
        o.drain(&mut w).unwrap();
        o.push_line(Bytes::from_static(b"second"), 1000);
        o.discard_unsent();
        assert_eq!(o.queued(), 5);
        w.budget = 100;
        o.drain(&mut w).unwrap();
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
        o.drain(&mut w).unwrap();
        let f = frames(&w.got);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1.len(), MAX_LINES * 1000 + MAX_LINES - 1);
        assert_eq!(f[1].1.len(), 1000);
        assert_eq!(w.calls, 2);
    }
}
