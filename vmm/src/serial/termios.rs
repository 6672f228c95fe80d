//! Host terminals for `tty:` and `pty`: raw mode, the guest's line
//! settings through termios, DTR/RTS and break through ioctls, and the
//! port's modem status lines. All calls are non-blocking.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use rehost_devices::serial::{LineParams, ModemControl, ModemStatus, Parity};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a host serial port for `tty:`: read-write, non-blocking, never
/// as our controlling terminal. Fails for anything that is not a tty.
pub fn open_tty(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd.as_raw_fd()) } != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a terminal (tty: needs a serial port such as /dev/ttyS0 or /dev/ttyUSB0)",
        ));
    }
    Ok(fd)
}

/// Opens a host serial port for `tty:` and puts it in raw mode with
/// errors marked (see `make_raw`).
pub fn open_serial_port(path: &Path) -> io::Result<OwnedFd> {
    let fd = open_tty(path)?;
    make_raw(fd.as_raw_fd(), true)?;
    Ok(fd)
}

/// A new pseudo-terminal: returns the master (non-blocking) and the
/// slave's path. The slave is put in raw mode so that what the guest
/// sends arrives unchanged and nothing is echoed back.
pub fn open_pty() -> io::Result<(OwnedFd, String)> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let fd = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let m = master.as_raw_fd();
    // SAFETY: plain calls on our own descriptor.
    check(unsafe { libc::grantpt(m) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(m) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes at most `name.len()` bytes into `name`.
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    set_nonblocking(m)?;
    // On a pty master, termios calls act on the slave.
    make_raw(m, false)?;
    Ok((master, path))
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we hold.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

fn get(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to fill.
    check(unsafe { libc::tcgetattr(fd, &mut t) })?;
    Ok(t)
}

fn set(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: applying a termios built from the current one.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) })?;
    Ok(())
}

/// Raw mode, receiver on, modem control lines ignored for reading
/// (CLOCAL: the guest watches DCD itself). With `mark_errors` (a real
/// port), a break reads as `FF 00 00`, a parity or framing error as
/// `FF 00 x` and a data byte FF as `FF FF` (PARMRK), so that
/// `ParmrkDecoder` can tell them apart.
pub fn make_raw(fd: RawFd, mark_errors: bool) -> io::Result<()> {
    let mut t = get(fd)?;
    // SAFETY: cfmakeraw edits the struct in place.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cflag |= libc::CREAD | libc::CLOCAL;
    t.c_cflag &= !libc::CRTSCTS;
    if mark_errors {
        t.c_iflag &= !(libc::IGNBRK | libc::BRKINT | libc::IGNPAR);
        t.c_iflag |= libc::PARMRK;
    }
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    set(fd, &t)
}

/// The termios speed constant for a standard rate.
fn speed_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        50 => libc::B50,
        75 => libc::B75,
        110 => libc::B110,
        134 => libc::B134,
        150 => libc::B150,
        200 => libc::B200,
        300 => libc::B300,
        600 => libc::B600,
        1200 => libc::B1200,
        1800 => libc::B1800,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        _ => return None,
    })
}

/// Sets baud rate, character size, parity and stop bits. Standard rates
/// go through the classic interface (what `stty` shows); others, such as
/// 115200/7, through termios2's BOTHER.
pub fn apply_line_params(fd: RawFd, p: &LineParams) -> io::Result<()> {
    let mut t = get(fd)?;
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::PARODD | libc::CMSPAR | libc::CSTOPB);
    t.c_cflag |= match p.data_bits {
        5 => libc::CS5,
        6 => libc::CS6,
        7 => libc::CS7,
        _ => libc::CS8,
    };
    t.c_cflag |= match p.parity {
        Parity::None => 0,
        Parity::Odd => libc::PARENB | libc::PARODD,
        Parity::Even => libc::PARENB,
        Parity::Mark => libc::PARENB | libc::CMSPAR | libc::PARODD,
        Parity::Space => libc::PARENB | libc::CMSPAR,
    };
    if p.parity != Parity::None {
        t.c_iflag |= libc::INPCK;
    } else {
        t.c_iflag &= !libc::INPCK;
    }
    if p.stop_bits >= 2 {
        t.c_cflag |= libc::CSTOPB;
    }
    match speed_constant(p.baud) {
        Some(speed) => {
            // SAFETY: setting the speed fields of a valid termios.
            check(unsafe { libc::cfsetspeed(&mut t, speed) })?;
            set(fd, &t)
        }
        None => {
            set(fd, &t)?;
            set_custom_speed(fd, p.baud)
        }
    }
}

fn set_custom_speed(fd: RawFd, baud: u32) -> io::Result<()> {
    // SAFETY: termios2 is plain data; TCGETS2 fills it or fails.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one termios2 into `t`.
    check(unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) })?;
    t.c_cflag &= !libc::CBAUD;
    t.c_cflag |= libc::BOTHER;
    t.c_ispeed = baud;
    t.c_ospeed = baud;
    // SAFETY: TCSETS2 reads one termios2 from `t`.
    check(unsafe { libc::ioctl(fd, libc::TCSETS2, &t) })?;
    Ok(())
}

/// The output speed in bits per second, as the kernel holds it.
pub fn output_speed(fd: RawFd) -> io::Result<u32> {
    // SAFETY: termios2 is plain data; TCGETS2 fills it or fails.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one termios2 into `t`.
    check(unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) })?;
    Ok(t.c_ospeed)
}

/// Drives DTR and RTS.
pub fn set_modem_control(fd: RawFd, c: ModemControl) -> io::Result<()> {
    for (on, bit) in [(c.dtr, libc::TIOCM_DTR), (c.rts, libc::TIOCM_RTS)] {
        let req = if on { libc::TIOCMBIS } else { libc::TIOCMBIC };
        // SAFETY: TIOCMBIS/TIOCMBIC read one int.
        check(unsafe { libc::ioctl(fd, req, &bit) })?;
    }
    Ok(())
}

/// Starts or stops sending a break (TIOCSBRK/TIOCCBRK return at once,
/// unlike tcsendbreak).
pub fn set_break(fd: RawFd, on: bool) -> io::Result<()> {
    let req = if on { libc::TIOCSBRK } else { libc::TIOCCBRK };
    // SAFETY: TIOCSBRK/TIOCCBRK take no argument.
    check(unsafe { libc::ioctl(fd, req) })?;
    Ok(())
}

/// CTS, DSR, RI and DCD as the port sees them.
pub fn modem_status(fd: RawFd) -> io::Result<ModemStatus> {
    let mut bits: libc::c_int = 0;
    // SAFETY: TIOCMGET writes one int.
    check(unsafe { libc::ioctl(fd, libc::TIOCMGET, &mut bits) })?;
    Ok(ModemStatus {
        cts: bits & libc::TIOCM_CTS != 0,
        dsr: bits & libc::TIOCM_DSR != 0,
        ri: bits & libc::TIOCM_RI != 0,
        dcd: bits & libc::TIOCM_CD != 0,
    })
}

/// Bytes written but not yet sent by the port.
pub fn output_pending(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int.
    check(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What a byte read from a PARMRK port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxByte {
    Data(u8),
    Break,
    /// A byte received with a parity or framing error.
    Error(u8),
}

/// Undoes PARMRK marking: `FF FF` is FF, `FF 00 00` a break, `FF 00 x` a
/// byte with a parity or framing error. Input may be cut anywhere.
#[derive(Debug, Default, Clone)]
pub struct ParmrkDecoder {
    state: u8,
}

impl ParmrkDecoder {
    pub fn feed(&mut self, input: &[u8], out: &mut impl FnMut(RxByte)) {
        for &b in input {
            match (self.state, b) {
                (0, 0xff) => self.state = 1,
                (0, _) => out(RxByte::Data(b)),
                (1, 0xff) => {
                    self.state = 0;
                    out(RxByte::Data(0xff));
                }
                (1, 0) => self.state = 2,
                // Not a valid mark: pass both bytes through.
                (1, _) => {
                    self.state = 0;
                    out(RxByte::Data(0xff));
                    out(RxByte::Data(b));
                }
                (_, 0) => {
                    self.state = 0;
                    out(RxByte::Break);
                }
                (_, _) => {
                    self.state = 0;
                    out(RxByte::Error(b));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parmrk_marks_are_decoded_across_reads() {
        let wire = [
            b'a', 0xff, 0xff, 0xff, 0, 0, b'b', 0xff, 0, b'x', 0xff, b'c',
        ];
        let expected = vec![
            RxByte::Data(b'a'),
            RxByte::Data(0xff),
            RxByte::Break,
            RxByte::Data(b'b'),
            RxByte::Error(b'x'),
            RxByte::Data(0xff),
            RxByte::Data(b'c'),
        ];
        for cut in 0..wire.len() {
            let mut d = ParmrkDecoder::default();
            let mut got = Vec::new();
            d.feed(&wire[..cut], &mut |b| got.push(b));
            d.feed(&wire[cut..], &mut |b| got.push(b));
            assert_eq!(got, expected, "cut at {cut}");
        }
    }

    fn stty(path: &str) -> String {
        let out = std::process::Command::new("stty")
            .args(["-a", "-F", path])
            .output()
            .expect("stty");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_pty_takes_the_guests_line_settings() {
        let (master, path) = open_pty().expect("a pty");
        // Keep the slave open so its settings stay while stty looks.
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let m = master.as_raw_fd();
        apply_line_params(
            m,
            &LineParams {
                baud: 9600,
                data_bits: 7,
                parity: Parity::Even,
                stop_bits: 2,
            },
        )
        .unwrap();
        let s = stty(&path);
        assert!(s.contains("speed 9600 baud"), "{s}");
        // Linux ptys force CS8 without parity; stop bits stay.
        assert!(
            s.contains(" cs8") && s.contains("-parenb ") && s.contains(" cstopb"),
            "{s}"
        );
        assert!(s.contains("-echo "), "raw: {s}");
        apply_line_params(
            m,
            &LineParams {
                baud: 115_200,
                data_bits: 8,
                parity: Parity::None,
                stop_bits: 1,
            },
        )
        .unwrap();
        let s = stty(&path);
        assert!(s.contains("speed 115200 baud") && s.contains(" cs8"), "{s}");
        // 115200/7 is no standard rate: set exactly through BOTHER.
        apply_line_params(
            m,
            &LineParams {
                baud: 16457,
                data_bits: 8,
                parity: Parity::None,
                stop_bits: 1,
            },
        )
        .unwrap();
        // (stty cannot show a BOTHER rate; the kernel has it.)
        assert_eq!(output_speed(m).unwrap(), 16457);
        drop(slave);
        // A regular file is refused as a tty.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = open_tty(f.path()).unwrap_err();
        assert!(e.to_string().contains("not a terminal"), "{e}");
    }
}
