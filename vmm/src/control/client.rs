//! `rehost qmp`: the human client of the control socket. It connects,
//! negotiates, runs one command and prints the reply, or follows events.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::cli::exit;

/// Exit code of `rehost qmp` when the command returned an error.
pub const COMMAND_FAILED: u8 = 1;

#[derive(Debug, Args, Clone)]
#[command(after_help = "\
Examples:
  rehost qmp vm.sock query-status
  rehost qmp vm.sock blockdev-change-medium '{\"id\": \"ide1-cd0\", \"filename\": \"repair.iso\"}'
  rehost qmp vm.sock system_powerdown
  rehost qmp vm.sock --events

The reply is printed as JSON (indented on a terminal). Exit status: 0 when the
command succeeded, 1 when it returned an error (printed on stdout as QMP's
{\"error\": ...}) or the socket could not be used, 2 for a bad command line.")]
pub struct QmpArgs {
    /// The VM's control socket (`rehost run --qmp PATH`).
    #[arg(value_name = "PATH")]
    pub socket: PathBuf,
    /// The command, e.g. query-status, stop, cont, system_powerdown, quit,
    /// query-block, eject, blockdev-change-medium, query-chardev.
    #[arg(value_name = "COMMAND", required_unless_present = "events")]
    pub command: Option<String>,
    /// The command's arguments as one JSON object.
    #[arg(value_name = "ARGS-AS-JSON")]
    pub arguments: Option<String>,
    /// Print every event as it arrives, until the VM exits or Ctrl-C.
    #[arg(long, conflicts_with_all = ["command", "arguments"])]
    pub events: bool,
    /// Give up when the VM does not answer within this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
}

fn print(v: &Value) {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Conn {
    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("{}: reading from the VM", self.path.display()))?;
        if n == 0 {
            bail!("{}: the VM closed the connection", self.path.display());
        }
        serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: the VM sent something that is not JSON",
                self.path.display()
            )
        })
    }

    /// The next reply (events before it are printed with `--events` only).
    fn reply(&mut self, show_events: bool) -> anyhow::Result<Value> {
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                if show_events {
                    print(&v);
                }
                continue;
            }
            return Ok(v);
        }
    }

    fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(v)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("{}: writing to the VM", self.path.display()))
    }
}

pub fn execute(args: QmpArgs) -> anyhow::Result<u8> {
    let arguments: Option<Value> = match &args.arguments {
        Some(text) => {
            let v: Value = serde_json::from_str(text)
                .with_context(|| format!("ARGS-AS-JSON {text:?} is not JSON"))?;
            if !v.is_object() {
                bail!("ARGS-AS-JSON {text:?} must be a JSON object");
            }
            Some(v)
        }
        None => None,
    };
    let stream = UnixStream::connect(&args.socket)
        .with_context(|| format!("{}: cannot connect to the VM", args.socket.display()))?;
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    stream.set_read_timeout(if args.events { None } else { timeout })?;
    let mut conn = Conn {
        reader: BufReader::new(stream.try_clone()?),
        writer: stream,
        path: args.socket.clone(),
    };
    let greeting = conn.read()?;
    if greeting.get("QMP").is_none() {
        bail!("{}: not a QMP socket (no greeting)", args.socket.display());
    }
    conn.send(&json!({ "execute": "qmp_capabilities" }))?;
    let r = conn.reply(false)?;
    if r.get("error").is_some() {
        print(&r);
        return Ok(COMMAND_FAILED);
    }
    if args.events {
        loop {
            match conn.read() {
                Ok(v) => print(&v),
                // The VM exited: that ends the stream.
                Err(_) => return Ok(exit::POWER_OFF),
            }
        }
    }
    let Some(command) = args.command else {
        bail!("no COMMAND given");
    };
    let mut req = json!({ "execute": command });
    if let Some(a) = arguments {
        req["arguments"] = a;
    }
    conn.send(&req)?;
    let r = conn.reply(false)?;
    if let Some(ret) = r.get("return") {
        print(ret);
        Ok(0)
    } else {
        print(&r);
        Ok(COMMAND_FAILED)
    }
}
