//! Sockets for `tcp:` and `unix:` ports, all non-blocking: a client
//! connect that completes on the event loop, listeners that accept there.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Where a client port connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = check(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_storage` holding `target`, and its length.
fn sockaddr(target: &Target) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match target {
        Target::Tcp(SocketAddr::V4(a)) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        Target::Tcp(SocketAddr::V6(a)) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
        Target::Unix(path) => {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: sockaddr_un is plain data; all-zero is valid.
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_os_str().as_bytes();
            if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a socket path must be shorter than {} bytes and contain no NUL",
                        sun.sun_path.len()
                    ),
                ));
            }
            for (d, &s) in sun.sun_path.iter_mut().zip(bytes) {
                *d = s as libc::c_char;
            }
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_un.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sun) };
            std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1
        }
    };
    Ok((ss, len as libc::socklen_t))
}

/// A connect in progress or done.
pub enum Connecting {
    Done(OwnedFd),
    /// Wait for the socket to become writable, then call `finish_connect`.
    InProgress(OwnedFd),
}

/// Starts connecting to `target` without blocking.
pub fn connect(target: &Target) -> io::Result<Connecting> {
    let (ss, len) = sockaddr(target)?;
    let domain = libc::c_int::from(ss.ss_family);
    let fd = new_socket(domain)?;
    // SAFETY: `ss` holds a valid address of `len` bytes for this family.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        return Ok(Connecting::Done(fd));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINPROGRESS) | Some(libc::EINTR) => Ok(Connecting::InProgress(fd)),
        _ => Err(e),
    }
}

/// The outcome of a connect that was in progress.
pub fn finish_connect(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one int into `err`.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// Sends small writes at once: the loop already batches guest output.
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: TCP_NODELAY reads one int; failure (not TCP) is harmless.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A listening socket for a `,server` port.
pub enum Listener {
    Tcp(std::net::TcpListener),
    /// Removes its socket file when dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(target: &Target) -> io::Result<Self> {
        let l = match target {
            Target::Tcp(a) => Listener::Tcp(std::net::TcpListener::bind(a)?),
            Target::Unix(p) => Listener::Unix(bind_unix(p)?, p.clone()),
        };
        match &l {
            Listener::Tcp(t) => t.set_nonblocking(true)?,
            Listener::Unix(u, _) => u.set_nonblocking(true)?,
        }
        Ok(l)
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(t) => t.as_raw_fd(),
            Listener::Unix(u, _) => u.as_raw_fd(),
        }
    }

    /// The next client, if one is waiting: its socket (non-blocking) and
    /// a name for the log.
    pub fn accept(&self) -> io::Result<Option<(OwnedFd, String)>> {
        let r = match self {
            Listener::Tcp(t) => t.accept().map(|(s, a)| {
                set_nodelay(s.as_raw_fd());
                (s.set_nonblocking(true), OwnedFd::from(s), a.to_string())
            }),
            Listener::Unix(u, p) => u.accept().map(|(s, _)| {
                (
                    s.set_nonblocking(true),
                    OwnedFd::from(s),
                    format!("a client on {}", p.display()),
                )
            }),
        };
        match r {
            Ok((Ok(()), fd, who)) => Ok(Some((fd, who))),
            Ok((Err(e), _, _)) => Err(e),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds a Unix socket, replacing a stale socket file nobody listens on
/// (left by an earlier run), never any other file.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let stale = is_socket
                && matches!(
                    std::os::unix::net::UnixStream::connect(path),
                    Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused
                );
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn wait_writable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 5000) };
    }

    fn connected(target: &Target) -> OwnedFd {
        match connect(target).unwrap() {
            Connecting::Done(fd) => fd,
            Connecting::InProgress(fd) => {
                wait_writable(fd.as_raw_fd());
                finish_connect(fd.as_raw_fd()).unwrap();
                fd
            }
        }
    }

    #[test]
    fn tcp_and_unix_clients_and_servers() {
        let l = Listener::bind(&Target::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = match &l {
            Listener::Tcp(t) => t.local_addr().unwrap(),
            _ => unreachable!(),
        };
        assert!(l.accept().unwrap().is_none(), "nobody yet, no blocking");
        let c = connected(&Target::Tcp(addr));
        let mut c = std::fs::File::from(c);
        c.write_all(b"hi").unwrap();
        let (s, who) = loop {
            if let Some(x) = l.accept().unwrap() {
                break x;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(who.starts_with("127.0.0.1:"), "{who}");
        let mut s = std::fs::File::from(s);
        let mut buf = [0u8; 2];
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("com.sock");
        let target = Target::Unix(path.clone());
        // Nobody listening: refused at once.
        assert!(connect(&target).is_err());
        let l = Listener::bind(&target).unwrap();
        let _c = connected(&target);
        assert!(l.accept().unwrap().is_some());
        // A stale socket file (listener gone without cleanup) is replaced;
        // a live one and a regular file are not.
        assert!(Listener::bind(&target).is_err(), "in use");
        drop(l);
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l2 = Listener::bind(&target).unwrap();
        drop(l2);
        assert!(!path.exists(), "removed on drop");
        std::fs::write(&path, b"data").unwrap();
        assert!(Listener::bind(&target).is_err());
        let long = Target::Unix(dir.path().join("x".repeat(200)));
        let e = connect(&long).err().expect("too long");
        assert!(e.to_string().contains("shorter"), "{e}");
    }
}
