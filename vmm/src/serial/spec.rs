//! Parsing of `--comN SPEC`. Only syntax is checked here; files, devices
//! and sockets are opened when the ports start.

use std::path::PathBuf;

/// Output kept while nobody is connected, unless `buffer=` says otherwise.
pub const DEFAULT_BUFFER: usize = 64 * 1024;
/// The largest `buffer=` accepted.
pub const MAX_BUFFER: usize = 256 * 1024 * 1024;

/// The SPEC forms, for messages and `--help`.
pub const SPEC_HELP: &str = "\
COM port SPECs (--com1 .. --com4):
  stdio                  the terminal rehost runs in (raw mode; Ctrl-A keys below)
  null                   a port with nothing connected
  none                   no port at all
  file:PATH              guest output appended to PATH
  pty                    a new pseudo-terminal; its path is printed on start
  unix:PATH[,server]     a Unix socket: connect to PATH, or listen on it
  tcp:HOST:PORT[,server] a TCP connection to HOST:PORT, or listen on it
  tty:DEVICE             a host serial port; the guest's baud rate, data bits,
                         parity, stop bits, break, DTR and RTS set the port, and
                         its CTS, DSR, DCD and RI reach the guest
  rfc2217:HOST:PORT      a network COM port server (RFC 2217, e.g. ser2net):
                         the same settings and modem lines, over telnet
Ports that can be disconnected (pty, unix, tcp, tty, rfc2217) take
,buffer=SIZE: guest output kept while nobody is connected (default 64K; 0 drops
it; dropped output is counted in the log). Clients reconnect with back-off;
servers take a new client when one leaves. A SPEC that is malformed or cannot be
opened (a device that is not a tty, a socket path that cannot be bound) is one
warning: the guest keeps that port with nothing connected and the machine runs.
A tty:DEVICE that does not exist yet (an adapter not plugged in) is opened when
it appears, and reopened after it is unplugged.";

/// Where a COM port is connected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ComSpec {
    /// No UART at this address.
    #[default]
    None,
    /// A UART with nothing connected: output dropped, no input.
    Null,
    /// The terminal rehost runs in (raw mode, with an escape key).
    Stdio,
    /// Output appended to a file.
    File(PathBuf),
    Pty {
        buffer: usize,
    },
    Unix {
        path: PathBuf,
        server: bool,
        buffer: usize,
    },
    Tcp {
        host: String,
        port: u16,
        server: bool,
        buffer: usize,
    },
    Tty {
        device: PathBuf,
        buffer: usize,
    },
    Rfc2217 {
        host: String,
        port: u16,
        buffer: usize,
    },
}

/// Parses `64K`, `1M`, `4096`, `0`.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let mul = match unit {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1024,
        "M" | "m" | "MiB" => 1024 * 1024,
        "G" | "g" | "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// `HOST:PORT`, HOST possibly an IPv6 address in brackets.
fn host_port(kind: &str, s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{kind}: needs HOST:PORT, e.g. {kind}:127.0.0.1:4555, not {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{kind}: port 0 is not a port"));
    }
    Ok((host.to_owned(), port))
}

impl std::str::FromStr for ComSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or("");
        let mut server = false;
        let mut buffer = None;
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "server" => server = true,
                Some(("buffer", v)) => {
                    let n = parse_size(v).ok_or_else(|| {
                        format!("buffer={v}: not a size (e.g. buffer=64K, buffer=1M, buffer=0)")
                    })?;
                    if n > MAX_BUFFER {
                        return Err(format!("buffer={v}: at most 256M"));
                    }
                    buffer = Some(n);
                }
                _ => {
                    return Err(format!(
                        "{opt:?} is not a COM port option (options: server, buffer=SIZE)"
                    ))
                }
            }
        }
        let (kind, arg) = match head.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (head, None),
        };
        let needs_arg = |example: &str| format!("{kind}: needs {example}");
        let buf = buffer.unwrap_or(DEFAULT_BUFFER);
        let spec = match (kind, arg) {
            ("stdio", None) => ComSpec::Stdio,
            ("null", None) => ComSpec::Null,
            ("none", None) => ComSpec::None,
            ("pty", None) => ComSpec::Pty { buffer: buf },
            ("file", Some(p)) if !p.is_empty() => ComSpec::File(p.into()),
            ("file", _) => return Err(needs_arg("a path, e.g. file:/tmp/com1.log")),
            ("unix", Some(p)) if !p.is_empty() => ComSpec::Unix {
                path: p.into(),
                server,
                buffer: buf,
            },
            ("unix", _) => return Err(needs_arg("a socket path, e.g. unix:/tmp/com1.sock")),
            ("tcp", Some(a)) => {
                let (host, port) = host_port(kind, a)?;
                ComSpec::Tcp {
                    host,
                    port,
                    server,
                    buffer: buf,
                }
            }
            ("tcp", None) => return Err(needs_arg("HOST:PORT, e.g. tcp:127.0.0.1:4555")),
            ("tty", Some(d)) if !d.is_empty() => ComSpec::Tty {
                device: d.into(),
                buffer: buf,
            },
            ("tty", _) => return Err(needs_arg("a device, e.g. tty:/dev/ttyUSB0")),
            ("rfc2217", Some(a)) => {
                let (host, port) = host_port(kind, a)?;
                ComSpec::Rfc2217 {
                    host,
                    port,
                    buffer: buf,
                }
            }
            ("rfc2217", None) => return Err(needs_arg("HOST:PORT, e.g. rfc2217:127.0.0.1:2000")),
            ("stdio" | "null" | "none" | "pty", Some(_)) => {
                return Err(format!("{kind} takes no argument after ':'"))
            }
            _ => {
                return Err(format!(
                    "{head:?} is not a COM port backend; use stdio, null, none, file:PATH, pty, \
                 unix:PATH, tcp:HOST:PORT, tty:DEVICE or rfc2217:HOST:PORT"
                ))
            }
        };
        let takes_buffer = matches!(
            spec,
            ComSpec::Pty { .. }
                | ComSpec::Unix { .. }
                | ComSpec::Tcp { .. }
                | ComSpec::Tty { .. }
                | ComSpec::Rfc2217 { .. }
        );
        if buffer.is_some() && !takes_buffer {
            return Err(format!(
                "{kind}: buffer= applies only to pty, unix, tcp, tty and rfc2217"
            ));
        }
        let takes_server = matches!(spec, ComSpec::Unix { .. } | ComSpec::Tcp { .. });
        if server && !takes_server {
            return Err(format!("{kind}: server applies only to unix and tcp"));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        s.parse::<ComSpec>().unwrap_err()
    }

    #[test]
    fn parses_every_backend() {
        assert_eq!("stdio".parse(), Ok(ComSpec::Stdio));
        assert_eq!("null".parse(), Ok(ComSpec::Null));
        assert_eq!("none".parse(), Ok(ComSpec::None));
        assert_eq!(
            "file:/tmp/x.log".parse(),
            Ok(ComSpec::File("/tmp/x.log".into()))
        );
        assert_eq!("pty".parse(), Ok(ComSpec::Pty { buffer: 65536 }));
        assert_eq!(
            "unix:/tmp/s,server,buffer=0".parse(),
            Ok(ComSpec::Unix {
                path: "/tmp/s".into(),
                server: true,
                buffer: 0
            })
        );
        assert_eq!(
            "tcp:127.0.0.1:4555".parse(),
            Ok(ComSpec::Tcp {
                host: "127.0.0.1".into(),
                port: 4555,
                server: false,
                buffer: 65536
            })
        );
        assert_eq!(
            "tcp:[::1]:23,buffer=1M,server".parse(),
            Ok(ComSpec::Tcp {
                host: "::1".into(),
                port: 23,
                server: true,
                buffer: 1 << 20
            })
        );
        assert_eq!(
            "tty:/dev/ttyUSB0,buffer=4K".parse(),
            Ok(ComSpec::Tty {
                device: "/dev/ttyUSB0".into(),
                buffer: 4096
            })
        );
        assert_eq!(
            "rfc2217:localhost:2000".parse(),
            Ok(ComSpec::Rfc2217 {
                host: "localhost".into(),
                port: 2000,
                buffer: 65536
            })
        );
    }

    #[test]
    fn explains_mistakes() {
        assert!(err("file:").contains("needs a path"));
        assert!(err("tcp").contains("needs HOST:PORT"));
        assert!(err("carrier-pigeon").contains("not a COM port backend"));
        assert!(err("tcp:localhost").contains("HOST:PORT"));
        assert!(err("tcp::4555").contains("HOST:PORT"));
        assert!(err("tcp:h:99999").contains("HOST:PORT"));
        assert!(err("tcp:h:0").contains("port 0"));
        assert!(err("rfc2217:h:x").contains("HOST:PORT"));
        assert!(err("tty:").contains("needs a device"));
        assert!(err("pty:/dev/x").contains("takes no argument"));
        assert!(err("tcp:h:1,buffer=lots").contains("not a size"));
        assert!(err("tcp:h:1,buffer=1G").contains("at most"));
        assert!(err("tcp:h:1,frobnicate").contains("not a COM port option"));
        assert!(err("file:/x,buffer=1K").contains("applies only"));
        assert!(err("pty,server").contains("server applies only"));
        assert!(err("rfc2217:h:1,server").contains("server applies only"));
    }
}
