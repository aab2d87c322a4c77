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
    /// CLOCK_REALTIME ns at which the newest byte of the last read reached the socket (the
    /// kernel's receive timestamp, SO_TIMESTAMPNS); 0 when none came with it.
    pub rx_ns: u64,
}

impl Sock {
    pub fn new(tcp: mio::net::TcpStream) -> Sock {
        Sock { tcp, drained: false, read_closed: false, rx_ns: 0 }
    }
}

/// Asks the kernel to stamp every segment as it reaches `tcp`'s receive queue.
pub fn enable_rx_timestamps(tcp: &mio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer valid for its size.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One recvmsg: the bytes, and the receive timestamp (CLOCK_REALTIME ns) if one came.
fn recv_stamped(tcp: &mio::net::TcpStream, buf: &mut [u8]) -> io::Result<(usize, u64)> {
    use std::os::fd::AsRawFd;
    // Room for one SCM_TIMESTAMPNS (a timespec) with its header, u64-aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at a valid iovec and control buffer.
    let n = unsafe { libc::recvmsg(tcp.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = 0;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained && !self.read_closed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = recv_stamped(&self.tcp, buf).map(|(n, stamp)| {
            // Bytes without a stamp (sent before stamping was on) must not inherit an older
            // read's stamp, which could be earlier than they are: 0 falls back to the read.
            if n > 0 {
                self.rx_ns = stamp;
            }
            n
        });
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
