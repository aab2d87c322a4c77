//! Client sockets: the short-read-remembering `Sock` the engine's WebSockets run on, and
//! what every mode shares about sockets (source binding, error names).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A client socket that remembers a short read. On Linux an edge-triggered epoll reports
/// every new arrival, so a read that did not fill its buffer means the socket is empty for
/// now: the next read answers WouldBlock without a syscall, until the next readiness event.
/// That halves the reads of a receiver that gets one frame per event. A short read says
/// nothing about a FIN that came with the data, though: once an event reports the read side
/// closed, every read goes to the socket, so the end of the stream is seen.
pub struct Sock {
    pub tcp: mio::net::TcpStream,
    pub drained: bool,
    pub read_closed: bool,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained && !self.read_closed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = self.tcp.read(buf);
        match &r {
            Ok(n) if *n < buf.len() => self.drained = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
            _ => {}
        }
        r
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

pub fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

pub fn first_word(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("error")
        .to_ascii_lowercase()
}

pub fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
        Some(libc::EMFILE | libc::ENFILE) => "out_of_fds".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        _ => first_word(&format!("{:?}", e.kind())),
    }
}

/// Lets the kernel pick the source port at connect time, per destination, instead of at bind
/// (where every bound port is reserved for all destinations).
pub fn set_bind_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer valid for its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Starts a non-blocking connect to `target`. On loopback with `sources` > 1 it binds the next
/// 127.0.0.x source in turn (`rr` counts the turns), so more clients fit than one source
/// address has ports.
pub fn connect_from(target: SocketAddr, sources: u8, rr: &mut u32) -> io::Result<mio::net::TcpStream> {
    let sock = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let IpAddr::V4(v4) = target.ip()
        && v4.is_loopback()
        && sources > 1
    {
        let k = *rr % sources as u32;
        *rr = rr.wrapping_add(1);
        set_bind_no_port(&sock);
        sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)), 0)))?;
    }
    match sock.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(std::net::TcpStream::from(sock)))
}
