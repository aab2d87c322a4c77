//! The server side of RFC 6455 framing: reading client frames, and the few frames the server
//! writes besides chat lines (pong, ping, close, echo).
//!
//! The reader holds nothing while a connection is idle: `Reader` is one pointer, null between
//! messages. The loop reads into one buffer shared by every connection (`Server`'s), and the
//! reader decodes frames in place there: a whole text frame is unmasked, checked and handed on
//! as a slice of that buffer, with no copy. Only what is incomplete when the buffer runs out
//! (a frame header cut short, a payload still arriving, a fragmented message, bytes left
//! unread when the turn's message budget ran out) moves into a `Partial` of its own, which
//! goes again as soon as a message completes.
//!
//! What it checks (each failure an `Error`, which the session turns into a close code):
//! masking (clients must mask), RSV bits (no extension is negotiated), opcodes, FIN on control
//! frames and their 125-byte limit, continuation frames only inside a fragmented message and
//! new messages never inside one, frame and message size (`--max-message`), the wire bytes a
//! message may take with all its frames (`Limits::max_wire`), UTF-8 in text messages
//! (incrementally, so an invalid fragment fails before the message ends) and in close
//! reasons, and the close frame's length.

use std::borrow::Cow;
use std::fmt;

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A client frame header is at most 14 bytes: 2, an 8-byte length, a 4-byte mask.
const HEAD_MAX: usize = 14;

/// Why a stream of frames cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not the protocol (1002).
    Protocol(&'static str),
    /// A frame or message past `--max-message` (1009).
    TooBig,
    /// A message whose frames took more than `Limits::max_wire` bytes (1009, a flood).
    Overhead,
    /// Text that is not UTF-8 (1007).
    Utf8,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Protocol(why) => f.write_str(why),
            Error::TooBig => f.write_str("message too big"),
            Error::Overhead => f.write_str("message too big (counting its frames)"),
            Error::Utf8 => f.write_str("invalid UTF-8"),
        }
    }
}

/// What a client said: a complete message or a control frame. Borrowed from the read buffer
/// when it arrived whole, owned when it was put together across reads or fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(Cow<'a, str>),
    Binary(Cow<'a, [u8]>),
    Ping(Cow<'a, [u8]>),
    /// Its payload: ours echoed (see `Chat::ack`), or anything for an unsolicited one.
    Pong(Cow<'a, [u8]>),
    /// The client's close: its code, if it gave one, and its reason (valid UTF-8).
    Close(Option<u16>, Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-message`: the largest frame and the largest message.
    pub max_message: usize,
    /// The most wire bytes (headers and payloads, control frames between included) a message
    /// may take before it completes.
    pub max_wire: u32,
}

/// One connection's reading state: nothing (a null pointer) while no frame or message is
/// incomplete and no input is waiting.
#[derive(Debug, Default)]
pub struct Reader {
    partial: Option<Box<Partial>>,
}

#[derive(Debug, Default)]
struct Partial {
    /// Header bytes of a frame cut short by the end of the input.
    head: [u8; HEAD_MAX],
    have: u8,
    /// The frame whose payload is still arriving.
    frame: Option<Frame>,
    /// A data message begun and not finished.
    message: Option<Message>,
    /// The payload so far of a control frame cut short.
    control: Vec<u8>,
    /// Input read but not yet decoded (the turn's message budget ran out first).
    tail: Vec<u8>,
    /// Wire bytes taken since the last complete message or control frame.
    wire: u32,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.have == 0 && self.frame.is_none() && self.message.is_none() && self.tail.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    op: u8,
    fin: bool,
    mask: [u8; 4],
    len: u64,
    /// Payload bytes already taken.
    done: u64,
}

#[derive(Debug)]
struct Message {
    text: bool,
    data: Vec<u8>,
    /// UTF-8 checked up to here (the rest is at most the start of one character).
    valid: usize,
}

impl Message {
    fn new(op: u8) -> Message {
        Message { text: op == OP_TEXT, data: Vec::new(), valid: 0 }
    }

    fn append(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.data.extend_from_slice(chunk);
        if self.text {
            match std::str::from_utf8(&self.data[self.valid..]) {
                Ok(_) => self.valid = self.data.len(),
                Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
                Err(_) => return Err(Error::Utf8),
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Event<'static>, Error> {
        if self.text {
            String::from_utf8(self.data).map(|s| Event::Text(Cow::Owned(s))).map_err(|_| Error::Utf8)
        } else {
            Ok(Event::Binary(Cow::Owned(self.data)))
        }
    }
}

/// Parses the frame header at the start of `b` (None: not all of it is there yet). What can
/// be judged from the first two bytes is judged before the rest arrives.
fn parse_head(b: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Error::Protocol("reserved bits set"));
    }
    let (fin, op, len7) = (b0 & 0x80 != 0, b0 & 0x0f, b1 & 0x7f);
    match op {
        OP_CONTINUE | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(Error::Protocol("fragmented control frame")),
        OP_CLOSE | OP_PING | OP_PONG if len7 > 125 => {
            return Err(Error::Protocol("control frame over 125 bytes"));
        }
        OP_CLOSE | OP_PING | OP_PONG => {}
        3..=7 => return Err(Error::Protocol("reserved data opcode")),
        _ => return Err(Error::Protocol("reserved control opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(Error::Protocol("unmasked client frame"));
    }
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let hlen = 2 + ext + 4;
    let Some(h) = b.get(..hlen) else { return Ok(None) };
    let len = match ext {
        0 => len7 as u64,
        2 => u16::from_be_bytes([h[2], h[3]]) as u64,
        _ => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
    };
    let mask = [h[hlen - 4], h[hlen - 3], h[hlen - 2], h[hlen - 1]];
    Ok(Some((Frame { op, fin, mask, len, done: 0 }, hlen)))
}

/// How many header bytes the partial header `b` needs in all (as far as it tells).
fn head_len(b: &[u8]) -> usize {
    match b.get(1) {
        None => 2,
        Some(b1) => {
            2 + 4
                + match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                }
        }
    }
}

/// XORs `data` with the mask, `offset` bytes into the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let s = (offset % 4) as usize;
    let m = [mask[s], mask[(s + 1) % 4], mask[(s + 2) % 4], mask[(s + 3) % 4]];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// A complete control frame's event.
fn control(op: u8, payload: Cow<'_, [u8]>) -> Result<Event<'_>, Error> {
    match op {
        OP_PING => Ok(Event::Ping(payload)),
        OP_PONG => Ok(Event::Pong(payload)),
        _ => match payload.len() {
            0 => Ok(Event::Close(None, Vec::new())),
            1 => Err(Error::Protocol("close frame with a 1-byte payload")),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = &payload[2..];
                std::str::from_utf8(reason).map_err(|_| Error::Utf8)?;
                Ok(Event::Close(Some(code), reason.to_vec()))
            }
        },
    }
}

impl Reader {
    /// A reader with input already waiting (bytes that came with the HTTP request).
    pub fn with_input(rest: Vec<u8>) -> Reader {
        let mut r = Reader::default();
        if !rest.is_empty() {
            r.partial = Some(Box::new(Partial { tail: rest, ..Partial::default() }));
        }
        r
    }

    /// Whether nothing is held: no frame or message incomplete, no input waiting.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Moves input left from an earlier turn to the front of `buf`; returns how much.
    pub fn take_input(&mut self, buf: &mut [u8]) -> usize {
        let Some(p) = self.partial.as_mut() else { return 0 };
        let n = p.tail.len().min(buf.len());
        buf[..n].copy_from_slice(&p.tail[..n]);
        p.tail.drain(..n);
        if p.tail.is_empty() {
            p.tail = Vec::new();
        }
        self.tidy();
        n
    }

    /// Keeps input that was read but not decoded, ahead of any kept before.
    pub fn keep_input(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let p = self.partial.get_or_insert_with(Default::default);
        p.tail.splice(0..0, bytes.iter().copied());
    }

    /// Bytes this reader holds on the heap (for tests and the memory table).
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| {
            std::mem::size_of::<Partial>()
                + p.control.capacity()
                + p.tail.capacity()
                + p.message.as_ref().map_or(0, |m| m.data.capacity())
        })
    }

    fn tidy(&mut self) {
        if self.partial.as_ref().is_some_and(|p| p.is_empty()) {
            self.partial = None;
        }
    }

    /// Decodes from `buf[*pos..]`, advancing `pos`, until one message or control frame is
    /// complete (`Some`) or the input is used up (`None`: what was incomplete is kept). After
    /// an error the reader holds nothing and must not be used again.
    pub fn next<'b>(
        &mut self,
        buf: &'b mut [u8],
        pos: &mut usize,
        lim: &Limits,
    ) -> Result<Option<Event<'b>>, Error> {
        let r = self.step(buf, pos, lim);
        match &r {
            Err(_) => self.partial = None,
            Ok(Some(_)) => {
                if let Some(p) = self.partial.as_mut() {
                    p.wire = 0;
                }
                self.tidy();
            }
            Ok(None) => self.tidy(),
        }
        r
    }

    /// Counts `n` wire bytes against the message's bound.
    fn count(&mut self, n: usize, lim: &Limits) -> Result<(), Error> {
        if let Some(p) = self.partial.as_mut() {
            p.wire = p.wire.saturating_add(n.min(u32::MAX as usize) as u32);
            if p.wire > lim.max_wire {
                return Err(Error::Overhead);
            }
        }
        Ok(())
    }

    /// Checks a new frame against the message in progress and the size limits.
    fn check(&self, f: &Frame, lim: &Limits) -> Result<(), Error> {
        if f.op >= OP_CLOSE {
            return Ok(());
        }
        let so_far = self.partial.as_ref().and_then(|p| p.message.as_ref()).map(|m| m.data.len() as u64);
        match (f.op, so_far) {
            (OP_CONTINUE, None) => return Err(Error::Protocol("continuation with nothing to continue")),
            (OP_TEXT | OP_BINARY, Some(_)) => {
                return Err(Error::Protocol("new message inside a fragmented one"));
            }
            _ => {}
        }
        let max = lim.max_message as u64;
        if f.len > max || so_far.unwrap_or(0) + f.len > max {
            return Err(Error::TooBig);
        }
        Ok(())
    }

    /// Completes a frame header that an earlier read cut short, from `buf` at `pos`: the
    /// frame once its header is whole, None while more bytes are needed.
    fn rest_of_head(&mut self, buf: &[u8], pos: &mut usize, lim: &Limits) -> Result<Option<Frame>, Error> {
        let p = self.partial.as_mut().expect("have > 0");
        let mut took = 0;
        while (p.have as usize) < head_len(&p.head[..p.have as usize]) && *pos < buf.len() {
            let want = head_len(&p.head[..p.have as usize]) - p.have as usize;
            let n = want.min(buf.len() - *pos);
            let at = p.have as usize;
            p.head[at..at + n].copy_from_slice(&buf[*pos..*pos + n]);
            p.have += n as u8;
            *pos += n;
            took += n;
            // Judge what the first two bytes tell as soon as they are here.
            parse_head(&p.head[..p.have as usize])?;
        }
        let parsed = parse_head(&p.head[..p.have as usize])?;
        self.count(took, lim)?;
        match parsed {
            Some((f, _)) => {
                let p = self.partial.as_mut().expect("have > 0");
                p.have = 0;
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    fn step<'b>(
        &mut self,
        buf: &'b mut [u8],
        pos: &mut usize,
        lim: &Limits,
    ) -> Result<Option<Event<'b>>, Error> {
        loop {
            if *pos >= buf.len() {
                return Ok(None);
            }
            let current = self.partial.as_ref().and_then(|p| p.frame);
            let mut f = match current {
                Some(f) => f,
                None => {
                    // A new frame: its header from the input, or completing one cut short.
                    let have = self.partial.as_ref().map_or(0, |p| p.have as usize);
                    let (f, used) = if have == 0 {
                        match parse_head(&buf[*pos..])? {
                            Some(h) => h,
                            None => {
                                let rest = &buf[*pos..];
                                let p = self.partial.get_or_insert_with(Default::default);
                                p.head[..rest.len()].copy_from_slice(rest);
                                p.have = rest.len() as u8;
                                *pos = buf.len();
                                self.count(rest.len(), lim)?;
                                return Ok(None);
                            }
                        }
                    } else {
                        match self.rest_of_head(buf, pos, lim)? {
                            Some(f) => (f, 0),
                            None => return Ok(None),
                        }
                    };
                    self.check(&f, lim)?;
                    let start = *pos + used;
                    let whole = (buf.len() - start) as u64 >= f.len;
                    let idle = self.partial.as_ref().is_none_or(|p| p.message.is_none());
                    if whole && (f.op >= OP_CLOSE || (f.fin && idle)) {
                        // The common case: all of it is here, and it is all of its message.
                        let end = start + f.len as usize;
                        *pos = end;
                        unmask(&mut buf[start..end], f.mask, 0);
                        let payload: &'b [u8] = &buf[start..end];
                        return match f.op {
                            OP_TEXT => match std::str::from_utf8(payload) {
                                Ok(s) => Ok(Some(Event::Text(Cow::Borrowed(s)))),
                                Err(_) => Err(Error::Utf8),
                            },
                            OP_BINARY => Ok(Some(Event::Binary(Cow::Borrowed(payload)))),
                            op => control(op, Cow::Borrowed(payload)).map(Some),
                        };
                    }
                    *pos = start;
                    let p = self.partial.get_or_insert_with(Default::default);
                    if f.op == OP_TEXT || f.op == OP_BINARY {
                        p.message = Some(Message::new(f.op));
                    }
                    p.frame = Some(f);
                    self.count(used, lim)?;
                    f
                }
            };
            // Payload bytes of `f`, as many as are here.
            let n = (f.len - f.done).min((buf.len() - *pos) as u64) as usize;
            let chunk = &mut buf[*pos..*pos + n];
            unmask(chunk, f.mask, f.done);
            *pos += n;
            f.done += n as u64;
            let p = self.partial.as_mut().expect("a frame in progress");
            if f.op >= OP_CLOSE {
                p.control.extend_from_slice(chunk);
            } else {
                p.message.as_mut().expect("a message in progress").append(chunk)?;
            }
            self.count(n, lim)?;
            let p = self.partial.as_mut().expect("a frame in progress");
            if f.done < f.len {
                p.frame = Some(f);
                return Ok(None);
            }
            p.frame = None;
            if f.op >= OP_CLOSE {
                let payload = std::mem::take(&mut p.control);
                return control(f.op, Cow::Owned(payload)).map(Some);
            }
            if f.fin {
                let m = p.message.take().expect("a message in progress");
                return m.finish().map(Some);
            }
        }
    }
}

/// A server frame (FIN set, unmasked) with `payload`; the header is tungstenite's, as the
/// outbox's are.
pub fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    use tungstenite::protocol::frame::FrameHeader;
    let header = FrameHeader { opcode: op.into(), ..FrameHeader::default() };
    let mut v = Vec::with_capacity(payload.len() + 10);
    header.format(payload.len() as u64, &mut v).expect("a Vec takes any header");
    v.extend_from_slice(payload);
    v
}

/// A close frame: the code and as much of the reason as fits in a control frame.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    // Never cut a character in two: the reason must stay UTF-8.
    while cut > 0 && cut < reason.len() && reason[cut] & 0xc0 == 0x80 {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason[..cut]);
    frame(OP_CLOSE, &payload)
}

/// Whether a client may send this close code (RFC 6455 §7.4): the defined codes that may be
/// sent, and the registered (3000-3999) and private (4000-4999) ranges. The same set as
/// tungstenite's `CloseCode::is_allowed`, which answered closes before this reader.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = frame(b0 & 0x0f, payload);
        v[0] = b0;
        let hlen = v.len() - payload.len();
        v[1] |= 0x80;
        let mut p = payload.to_vec();
        unmask(&mut p, mask, 0);
        v.truncate(hlen);
        v.extend_from_slice(&mask);
        v.extend_from_slice(&p);
        v
    }

    const LIM: Limits = Limits { max_message: 1 << 20, max_wire: 3 << 20 };

    /// Decodes `input` fed in pieces of `step` bytes: the events, as owned values.
    fn decode(input: &[u8], step: usize) -> Result<Vec<Event<'static>>, Error> {
        let mut r = Reader::default();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut buf = piece.to_vec();
            let mut pos = 0;
            while let Some(ev) = r.next(&mut buf, &mut pos, &LIM)? {
                out.push(match ev {
                    Event::Text(t) => Event::Text(Cow::Owned(t.into_owned())),
                    Event::Binary(b) => Event::Binary(Cow::Owned(b.into_owned())),
                    Event::Ping(b) => Event::Ping(Cow::Owned(b.into_owned())),
                    Event::Pong(b) => Event::Pong(Cow::Owned(b.into_owned())),
                    Event::Close(c, r) => Event::Close(c, r),
                });
            }
        }
        assert!(r.is_idle() || r.partial.as_ref().is_some_and(|p| !p.is_empty()));
        Ok(out)
    }

    #[test]
    fn whole_split_and_fragmented_messages_decode_alike() {
        let mut input = masked(0x81, b"hello", [1, 2, 3, 4]);
        input.extend(masked(0x01, "h\u{e9}".as_bytes(), [5, 6, 7, 8]));
        input.extend(masked(0x89, b"p", [9, 9, 9, 9]));
        input.extend(masked(0x80, "llo \u{1F600}".as_bytes(), [1, 1, 1, 1]));
        input.extend(masked(0x82, &[0u8; 300], [3, 1, 4, 1]));
        input.extend(masked(0x88, &[3, 232, b'o', b'k'], [2, 7, 1, 8]));
        let want = vec![
            Event::Text("hello".into()),
            Event::Ping(Cow::Owned(b"p".to_vec())),
            Event::Text("h\u{e9}llo \u{1F600}".into()),
            Event::Binary(Cow::Owned(vec![0; 300])),
            Event::Close(Some(1000), b"ok".to_vec()),
        ];
        for step in [1, 2, 3, 7, 13, 64, input.len()] {
            assert_eq!(decode(&input, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn violations_are_errors() {
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (frame(OP_TEXT, b"hi"), Error::Protocol("unmasked client frame")),
            (masked(0xC1, b"hi", [1; 4]), Error::Protocol("reserved bits set")),
            (masked(0x83, b"hi", [1; 4]), Error::Protocol("reserved data opcode")),
            (masked(0x8B, b"", [1; 4]), Error::Protocol("reserved control opcode")),
            (masked(0x80, b"hi", [1; 4]), Error::Protocol("continuation with nothing to continue")),
            (masked(0x09, b"p", [1; 4]), Error::Protocol("fragmented control frame")),
            (masked(0x88, b"x", [1; 4]), Error::Protocol("close frame with a 1-byte payload")),
            (masked(0x81, b"\xff", [1; 4]), Error::Utf8),
            (masked(0x88, b"\x03\xe8\xff", [1; 4]), Error::Utf8),
            (masked(0x82, &vec![0; (1 << 20) + 1], [1; 4]), Error::TooBig),
            (
                {
                    let mut v = masked(0x01, b"a", [1; 4]);
                    v.extend(masked(0x81, b"b", [1; 4]));
                    v
                },
                Error::Protocol("new message inside a fragmented one"),
            ),
        ];
        for (input, err) in cases {
            for step in [1, 5, input.len()] {
                assert_eq!(decode(&input, step), Err(err), "{input:?} in steps of {step}");
            }
        }
        // A ping of 126 bytes is refused from its first two bytes.
        let big = masked(0x89, &[0; 126], [1; 4]);
        assert_eq!(decode(&big[..2], 1), Err(Error::Protocol("control frame over 125 bytes")));
    }

    #[test]
    fn invalid_utf8_fails_in_the_fragment_that_has_it() {
        let mut r = Reader::default();
        let mut first = masked(0x01, b"ok \xce", [1, 2, 3, 4]); // a character cut in two: fine
        let mut pos = 0;
        assert_eq!(r.next(&mut first, &mut pos, &LIM), Ok(None));
        let mut bad = masked(0x00, b"\xff", [1, 2, 3, 4]);
        pos = 0;
        assert_eq!(r.next(&mut bad, &mut pos, &LIM), Err(Error::Utf8));
    }

    #[test]
    fn endless_empty_fragments_pass_the_wire_bound() {
        let lim = Limits { max_message: 1000, max_wire: 6000 };
        let mut input = masked(0x01, b"x", [1; 4]);
        for _ in 0..2000 {
            input.extend(masked(0x00, b"", [1; 4]));
        }
        let mut r = Reader::default();
        let mut pos = 0;
        assert_eq!(r.next(&mut input, &mut pos, &lim), Err(Error::Overhead));
        assert!(pos < 6100, "stopped at {pos}");
    }

    #[test]
    fn idle_between_messages_and_keeps_unread_input() {
        let mut r = Reader::with_input(masked(0x81, b"hi", [1; 4]));
        assert!(!r.is_idle());
        let mut buf = [0u8; 64];
        let n = r.take_input(&mut buf);
        assert!(r.is_idle());
        let mut pos = 0;
        assert_eq!(r.next(&mut buf[..n], &mut pos, &LIM), Ok(Some(Event::Text("hi".into()))));
        assert!(r.is_idle());
        let mut half = masked(0x81, b"hello", [1; 4]);
        half.truncate(5);
        pos = 0;
        assert_eq!(r.next(&mut half, &mut pos, &LIM), Ok(None));
        assert!(!r.is_idle() && r.held() > 0);
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
        let f = close_frame(1000, "é".repeat(100).as_bytes());
        assert!(f.len() <= 127 && std::str::from_utf8(&f[4..]).is_ok());
    }
}
