//! One client's connection: option haggling, then transmission. Generic
//! over the byte stream so the fuzz target and unit tests drive it from
//! memory; the server gives it a socket whose reads and writes time out
//! (see `server.rs`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rehost_disk::BlockError;

use super::protocol::{
    self as p, Descriptor, GoRequest, MetaContextRequest, OptionHeader, Request,
};
use super::server::ServerOptions;
use super::source::{merge, Export};
use super::{MAX_DESCRIPTORS, MAX_OPTION_DATA};

/// A byte stream to a peer. `set_waiting(true)` says the session waits
/// for the next request: the peer may stay silent as long as it likes
/// until its next byte arrives (which ends the waiting).
pub(crate) trait Peer: Read + Write {
    fn set_waiting(&mut self, _waiting: bool) {}
    /// The server has TLS credentials: TLS is required (forced TLS).
    fn tls_offered(&self) -> bool {
        false
    }
    /// NBD_OPT_STARTTLS has succeeded on this connection.
    fn tls_active(&self) -> bool {
        false
    }
    /// Runs the TLS handshake over the connection (after the ACK of
    /// NBD_OPT_STARTTLS has been flushed in plain text).
    fn start_tls(&mut self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no TLS on this connection",
        ))
    }
}

/// An export as the server holds it.
pub(crate) struct ExportEntry {
    pub export: Export,
    /// Serialises read-modify-write of unaligned writes.
    pub rmw: Mutex<()>,
}

/// A connected client as the server knows it.
pub(crate) struct ClientSlot {
    pub export: Option<String>,
    /// Shuts the client's socket down (wakes its thread).
    pub closer: Option<Box<dyn Fn() + Send + Sync>>,
}

/// What the server's threads share.
pub(crate) struct Shared {
    pub exports: RwLock<BTreeMap<String, Arc<ExportEntry>>>,
    pub options: ServerOptions,
    pub stopping: AtomicBool,
    pub clients: Mutex<BTreeMap<u64, ClientSlot>>,
}

impl Shared {
    pub fn new(options: ServerOptions) -> Self {
        Shared {
            exports: RwLock::new(BTreeMap::new()),
            options,
            stopping: AtomicBool::new(false),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    fn lookup(&self, name: &str) -> Option<Arc<ExportEntry>> {
        let exports = self.exports.read().unwrap_or_else(|e| e.into_inner());
        if name.is_empty() && exports.len() == 1 {
            // The default export: the only one there is.
            return exports.values().next().cloned();
        }
        exports.get(name).cloned()
    }

    fn export_names(&self) -> Vec<(String, String)> {
        self.exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| (e.export.name.clone(), e.export.description.clone()))
            .collect()
    }
}

/// Why a session ended (for the log).
#[derive(Debug)]
pub(crate) enum End {
    /// The client said goodbye (NBD_OPT_ABORT, NBD_CMD_DISC) or closed.
    Done,
    /// A protocol violation the connection cannot survive.
    Protocol(String),
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => End::Done,
            _ => End::Io(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Context {
    Allocation,
    Bitmap(String),
}

impl Context {
    fn name(&self) -> String {
        match self {
            Context::Allocation => p::BASE_ALLOCATION.to_owned(),
            Context::Bitmap(b) => format!("{}{b}", p::QEMU_DIRTY_BITMAP_PREFIX),
        }
    }
}

struct Session<'a, P: Peer> {
    peer: &'a mut P,
    shared: &'a Shared,
    id: u64,
    no_zeroes: bool,
    structured: bool,
    /// Contexts chosen by NBD_OPT_SET_META_CONTEXT (id = index + 1) and
    /// the export they were chosen for.
    contexts: Vec<Context>,
    contexts_for: Option<String>,
}

/// Runs a session to its end.
pub(crate) fn run<P: Peer>(peer: &mut P, shared: &Shared, id: u64) -> End {
    let mut s = Session {
        peer,
        shared,
        id,
        no_zeroes: false,
        structured: false,
        contexts: Vec::new(),
        contexts_for: None,
    };
    match s.handshake() {
        Ok(Some(entry)) => match s.transmission(&entry) {
            Ok(()) => End::Done,
            Err(e) => e,
        },
        Ok(None) => End::Done,
        Err(e) => e,
    }
}

/// Runs one session over in-memory input and returns what the server
/// sent: for fuzzing the parsers and for tests. `exports` are served as
/// a live server would.
pub fn serve_bytes(input: &[u8], exports: Vec<Export>, options: ServerOptions) -> Vec<u8> {
    struct MemPeer<'a> {
        input: &'a [u8],
        output: Vec<u8>,
    }
    impl Read for MemPeer<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for MemPeer<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Peer for MemPeer<'_> {}
    let shared = Shared::new(options);
    {
        let mut map = shared.exports.write().unwrap_or_else(|e| e.into_inner());
        for e in exports {
            map.insert(
                e.name.clone(),
                Arc::new(ExportEntry {
                    export: e,
                    rmw: Mutex::new(()),
                }),
            );
        }
    }
    let mut peer = MemPeer {
        input,
        output: Vec::new(),
    };
    let _ = run(&mut peer, &shared, 0);
    peer.output
}

/// The NBD error for a failed block-layer call.
fn errno(e: &BlockError, write: bool) -> u32 {
    match e {
        BlockError::OutOfRange { .. } if write => p::ENOSPC,
        BlockError::OutOfRange { .. } | BlockError::Misaligned { .. } => p::EINVAL,
        BlockError::ReadOnly { .. } => p::EPERM,
        BlockError::Unsupported { .. } => p::ENOTSUP,
        _ => p::EIO,
    }
}

/// An error reply: its NBD error and a message for structured replies.
struct Failure(u32, String);

impl Failure {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Failure(code, msg.into())
    }
    fn block(e: BlockError, write: bool) -> Self {
        Failure(errno(&e, write), e.to_string())
    }
}

impl<P: Peer> Session<'_, P> {
    fn send(&mut self, b: &[u8]) -> Result<(), End> {
        self.peer.write_all(b)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), End> {
        self.peer.flush()?;
        Ok(())
    }

    fn reply_opt(&mut self, option: u32, reply: u32, data: &[u8]) -> Result<(), End> {
        self.send(&p::option_reply(option, reply, data))
    }

    fn reply_opt_err(&mut self, option: u32, reply: u32, msg: &str) -> Result<(), End> {
        self.reply_opt(option, reply, msg.as_bytes())?;
        self.flush()
    }

    /// Greeting and options. `Some` export when transmission begins.
    fn handshake(&mut self) -> Result<Option<Arc<ExportEntry>>, End> {
        let deadline = Instant::now() + self.shared.options.idle_timeout;
        self.send(&p::greeting())?;
        self.flush()?;
        let mut flags = [0u8; 4];
        self.peer.read_exact(&mut flags)?;
        let flags = u32::from_be_bytes(flags);
        if flags & !(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES) != 0 {
            return Err(End::Protocol(format!("unknown client flags {flags:#x}")));
        }
        self.no_zeroes = flags & p::FLAG_C_NO_ZEROES != 0;
        loop {
            if Instant::now() > deadline {
                return Err(End::Protocol(
                    "the handshake did not end within the idle limit".into(),
                ));
            }
            let mut hdr = [0u8; OptionHeader::SIZE];
            self.peer.read_exact(&mut hdr)?;
            let h = OptionHeader::parse(&hdr).map_err(|e| End::Protocol(e.to_string()))?;
            if h.length > MAX_OPTION_DATA {
                if h.option != p::OPT_EXPORT_NAME {
                    self.reply_opt_err(
                        h.option,
                        p::REP_ERR_TOO_BIG,
                        "option data longer than the server accepts",
                    )?;
                }
                return Err(End::Protocol(format!(
                    "option {} with {} bytes of data (at most {MAX_OPTION_DATA})",
                    h.option, h.length
                )));
            }
            let mut data = vec![0u8; h.length as usize];
            self.peer.read_exact(&mut data)?;
            if self.shared.stopping.load(Ordering::SeqCst) {
                if h.option != p::OPT_EXPORT_NAME {
                    self.reply_opt_err(h.option, p::REP_ERR_SHUTDOWN, "server shutting down")?;
                }
                return Ok(None);
            }
            if let Some(entry) = self.option(h.option, &data)? {
                return Ok(Some(entry));
            }
        }
    }

    /// Handles one option; `Some` export when transmission begins,
    /// `Err(End::Done)` on NBD_OPT_ABORT.
    fn option(&mut self, option: u32, data: &[u8]) -> Result<Option<Arc<ExportEntry>>, End> {
        if self.peer.tls_offered() && !self.peer.tls_active() {
            match option {
                p::OPT_STARTTLS | p::OPT_ABORT => {}
                p::OPT_EXPORT_NAME => {
                    // No error reply exists for it: close.
                    return Err(End::Protocol(
                        "NBD_OPT_EXPORT_NAME before TLS on a TLS-only server".into(),
                    ));
                }
                _ => {
                    self.reply_opt_err(
                        option,
                        p::REP_ERR_TLS_REQD,
                        "this server requires TLS: send NBD_OPT_STARTTLS first",
                    )?;
                    return Ok(None);
                }
            }
        }
        match option {
            p::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(data);
                let Some(entry) = self.shared.lookup(&name) else {
                    // The protocol has no error reply here: close.
                    return Err(End::Protocol(format!(
                        "NBD_OPT_EXPORT_NAME: no export {name:?}"
                    )));
                };
                if self.contexts_for.as_deref() != Some(entry.export.name.as_str()) {
                    self.contexts.clear();
                }
                let e = &entry.export;
                self.attach(&e.name);
                let reply = p::export_name_reply(
                    e.source.size(),
                    self.transmission_flags(e),
                    self.no_zeroes,
                );
                self.send(&reply)?;
                self.flush()?;
                Ok(Some(entry))
            }
            p::OPT_ABORT => {
                self.reply_opt(option, p::REP_ACK, &[])?;
                self.flush()?;
                Err(End::Done)
            }
            p::OPT_LIST => {
                if !data.is_empty() {
                    self.reply_opt_err(option, p::REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    return Ok(None);
                }
                for (name, _) in self.shared.export_names() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    self.reply_opt(option, p::REP_SERVER, &d)?;
                }
                self.reply_opt(option, p::REP_ACK, &[])?;
                self.flush()?;
                Ok(None)
            }
            p::OPT_INFO | p::OPT_GO => self.info_go(option, data),
            p::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.reply_opt_err(
                        option,
                        p::REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                } else {
                    self.structured = true;
                    self.reply_opt(option, p::REP_ACK, &[])?;
                    self.flush()?;
                }
                Ok(None)
            }
            p::OPT_LIST_META_CONTEXT | p::OPT_SET_META_CONTEXT => {
                self.meta_context(option, data)?;
                Ok(None)
            }
            p::OPT_STARTTLS => {
                if !self.peer.tls_offered() {
                    self.reply_opt_err(
                        option,
                        p::REP_ERR_UNSUP,
                        "TLS is not configured on this server (rehost disk serve --tls-creds)",
                    )?;
                } else if self.peer.tls_active() {
                    self.reply_opt_err(option, p::REP_ERR_INVALID, "TLS is already on")?;
                } else if !data.is_empty() {
                    self.reply_opt_err(
                        option,
                        p::REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data",
                    )?;
                } else {
                    self.reply_opt(option, p::REP_ACK, &[])?;
                    self.flush()?;
                    self.peer
                        .start_tls()
                        .map_err(|e| End::Protocol(format!("TLS handshake failed: {e}")))?;
                }
                Ok(None)
            }
            _ => {
                self.reply_opt_err(option, p::REP_ERR_UNSUP, "unknown option")?;
                Ok(None)
            }
        }
    }

    /// Records which export this client uses, before the reply that lets
    /// it start (so a safe removal racing with it sees it).
    fn attach(&self, name: &str) {
        let mut c = self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = c.get_mut(&self.id) {
            slot.export = Some(name.to_owned());
        }
    }

    fn transmission_flags(&self, e: &Export) -> u16 {
        // Every connection of an export goes to the same source object,
        // so a write is visible to all at once and a flush on one covers
        // the writes of all: multi-conn is safe to advertise.
        let mut f = p::TFLAG_HAS_FLAGS
            | p::TFLAG_SEND_FLUSH
            | p::TFLAG_SEND_FUA
            | p::TFLAG_SEND_DF
            | p::TFLAG_CAN_MULTI_CONN;
        if e.is_read_only() {
            f |= p::TFLAG_READ_ONLY;
        } else {
            f |= p::TFLAG_SEND_TRIM | p::TFLAG_SEND_WRITE_ZEROES;
        }
        f
    }

    fn info_go(&mut self, option: u32, data: &[u8]) -> Result<Option<Arc<ExportEntry>>, End> {
        let Some(req) = GoRequest::parse(data) else {
            self.reply_opt_err(option, p::REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO data")?;
            return Ok(None);
        };
        let Some(entry) = self.shared.lookup(&req.name) else {
            let msg = format!("no export named {:?}", req.name);
            self.reply_opt_err(option, p::REP_ERR_UNKNOWN, &msg)?;
            return Ok(None);
        };
        let e = &entry.export;
        let info = p::info_export(e.source.size(), self.transmission_flags(e));
        self.reply_opt(option, p::REP_INFO, &info)?;
        for kind in req.infos {
            let info = match kind {
                p::INFO_NAME => p::info_string(p::INFO_NAME, &e.name),
                p::INFO_DESCRIPTION if !e.description.is_empty() => {
                    p::info_string(p::INFO_DESCRIPTION, &e.description)
                }
                p::INFO_BLOCK_SIZE => p::info_block_size(
                    e.source.block_size(),
                    4096.max(e.source.block_size()),
                    self.shared.options.max_payload,
                ),
                _ => continue,
            };
            self.reply_opt(option, p::REP_INFO, &info)?;
        }
        if option == p::OPT_GO {
            self.attach(&e.name);
        }
        self.reply_opt(option, p::REP_ACK, &[])?;
        self.flush()?;
        if option == p::OPT_INFO {
            return Ok(None);
        }
        if self.contexts_for.as_deref() != Some(e.name.as_str()) {
            self.contexts.clear();
        }
        Ok(Some(entry))
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), End> {
        let set = option == p::OPT_SET_META_CONTEXT;
        if set && !self.structured {
            return self.reply_opt_err(
                option,
                p::REP_ERR_INVALID,
                "NBD_OPT_SET_META_CONTEXT needs structured replies first",
            );
        }
        let Some(req) = MetaContextRequest::parse(data) else {
            return self.reply_opt_err(option, p::REP_ERR_INVALID, "malformed meta context data");
        };
        let Some(entry) = self.shared.lookup(&req.export) else {
            let msg = format!("no export named {:?}", req.export);
            return self.reply_opt_err(option, p::REP_ERR_UNKNOWN, &msg);
        };
        let mut available = vec![Context::Allocation];
        available.extend(
            entry
                .export
                .source
                .bitmaps()
                .into_iter()
                .map(Context::Bitmap),
        );
        let mut chosen: Vec<Context> = Vec::new();
        let all = !set && req.queries.is_empty();
        for q in &req.queries {
            for c in &available {
                let name = c.name();
                let matches = name == *q
                    || (!set
                        && (q == "base:" && matches!(c, Context::Allocation)
                            || (q == "qemu:" || q == p::QEMU_DIRTY_BITMAP_PREFIX)
                                && matches!(c, Context::Bitmap(_))));
                if matches && !chosen.contains(c) {
                    chosen.push(c.clone());
                }
            }
        }
        if all {
            chosen = available;
        }
        if set {
            self.contexts = chosen.clone();
            self.contexts_for = Some(entry.export.name.clone());
        }
        for (i, c) in chosen.iter().enumerate() {
            let id = if set { i as u32 + 1 } else { 0 };
            let name = c.name();
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            self.reply_opt(option, p::REP_META_CONTEXT, &d)?;
        }
        self.reply_opt(option, p::REP_ACK, &[])?;
        self.flush()
    }

    fn transmission(&mut self, entry: &ExportEntry) -> Result<(), End> {
        loop {
            self.peer.set_waiting(true);
            let mut hdr = [0u8; Request::SIZE];
            let r = self.peer.read_exact(&mut hdr);
            self.peer.set_waiting(false);
            r?;
            let req = Request::parse(&hdr).map_err(|e| End::Protocol(e.to_string()))?;
            if req.kind == p::CMD_DISC {
                // Not required by the protocol, but a client that leaves
                // without a flush still finds its writes durable.
                if !entry.export.is_read_only() {
                    let _ = entry.export.source.flush();
                }
                return Ok(());
            }
            self.request(entry, &req)?;
            self.flush()?;
        }
    }

    fn request(&mut self, entry: &ExportEntry, req: &Request) -> Result<(), End> {
        let max = self.shared.options.max_payload;
        if req.kind == p::CMD_WRITE {
            if req.length > max {
                self.error_reply(
                    req,
                    Failure::new(p::EINVAL, "write longer than the server accepts"),
                )?;
                self.flush()?;
                return Err(End::Protocol(format!(
                    "NBD_CMD_WRITE of {} bytes (at most {max})",
                    req.length
                )));
            }
            let mut data = vec![0u8; req.length as usize];
            self.peer.read_exact(&mut data)?;
            return match self.write(entry, req, &data) {
                Ok(()) => self.send(&p::simple_reply(0, req.cookie)),
                Err(f) => self.error_reply(req, f),
            };
        }
        let result = match req.kind {
            p::CMD_READ => return self.read(entry, req),
            p::CMD_FLUSH => entry
                .export
                .source
                .flush()
                .map_err(|e| Failure::block(e, true)),
            p::CMD_TRIM | p::CMD_WRITE_ZEROES => self.zero_or_trim(entry, req),
            p::CMD_BLOCK_STATUS => return self.block_status(entry, req),
            _ => Err(Failure::new(
                p::EINVAL,
                format!("unsupported request type {}", req.kind),
            )),
        };
        match result {
            Ok(()) => self.send(&p::simple_reply(0, req.cookie)),
            Err(f) => self.error_reply(req, f),
        }
    }

    /// An error reply: a structured error chunk where the reply must be
    /// structured (READ, BLOCK_STATUS), else a simple reply.
    fn error_reply(&mut self, req: &Request, f: Failure) -> Result<(), End> {
        let structured = self.structured && matches!(req.kind, p::CMD_READ | p::CMD_BLOCK_STATUS);
        if structured {
            let payload = p::error_chunk_payload(f.0, &f.1);
            self.send(&p::chunk_header(
                p::REPLY_FLAG_DONE,
                p::REPLY_TYPE_ERROR,
                req.cookie,
                payload.len() as u32,
            ))?;
            self.send(&payload)
        } else {
            self.send(&p::simple_reply(f.0, req.cookie))
        }
    }

    /// Checks a request's range against the export.
    fn range(entry: &ExportEntry, req: &Request, write: bool) -> Result<Range<u64>, Failure> {
        let size = entry.export.source.size();
        match req.offset.checked_add(u64::from(req.length)) {
            Some(end) if end <= size => Ok(req.offset..end),
            _ => Err(Failure::new(
                if write { p::ENOSPC } else { p::EINVAL },
                format!(
                    "request at offset {} length {} is beyond the export's end at {size}",
                    req.offset, req.length
                ),
            )),
        }
    }

    fn read(&mut self, entry: &ExportEntry, req: &Request) -> Result<(), End> {
        let checked = (|| {
            if req.length > self.shared.options.max_payload {
                let code = if self.structured && req.flags & p::CMD_FLAG_DF != 0 {
                    p::EOVERFLOW
                } else {
                    p::EINVAL
                };
                return Err(Failure::new(code, "read longer than the server accepts"));
            }
            let r = Self::range(entry, req, false)?;
            // Header and data in one buffer: one send for both.
            let hdr = if self.structured { 20 + 8 } else { 16 };
            let mut buf = vec![0u8; hdr + req.length as usize];
            read_unaligned(entry, r.start, &mut buf[hdr..])?;
            Ok(buf)
        })();
        let mut buf = match checked {
            Ok(b) => b,
            Err(f) => return self.error_reply(req, f),
        };
        if self.structured {
            if req.length == 0 {
                return self.send(&p::chunk_header(
                    p::REPLY_FLAG_DONE,
                    p::REPLY_TYPE_NONE,
                    req.cookie,
                    0,
                ));
            }
            buf[..20].copy_from_slice(&p::chunk_header(
                p::REPLY_FLAG_DONE,
                p::REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + req.length,
            ));
            buf[20..28].copy_from_slice(&req.offset.to_be_bytes());
        } else {
            buf[..16].copy_from_slice(&p::simple_reply(0, req.cookie));
        }
        self.send(&buf)
    }

    fn write(&mut self, entry: &ExportEntry, req: &Request, data: &[u8]) -> Result<(), Failure> {
        if entry.export.is_read_only() {
            return Err(Failure::new(p::EPERM, "the export is read-only"));
        }
        let r = Self::range(entry, req, true)?;
        write_unaligned(entry, r.start, data)?;
        if req.flags & p::CMD_FLAG_FUA != 0 {
            entry
                .export
                .source
                .flush()
                .map_err(|e| Failure::block(e, true))?;
        }
        Ok(())
    }

    fn zero_or_trim(&mut self, entry: &ExportEntry, req: &Request) -> Result<(), Failure> {
        if entry.export.is_read_only() {
            return Err(Failure::new(p::EPERM, "the export is read-only"));
        }
        let r = Self::range(entry, req, true)?;
        let src = &entry.export.source;
        let bs = u64::from(src.block_size().max(1));
        if req.kind == p::CMD_TRIM {
            // Advisory: only whole blocks inside the range.
            let start = r.start.div_ceil(bs) * bs;
            let end = r.end / bs * bs;
            if start < end {
                src.trim(start, end - start)
                    .map_err(|e| Failure::block(e, true))?;
            }
        } else {
            if req.flags & p::CMD_FLAG_FAST_ZERO != 0 {
                return Err(Failure::new(p::ENOTSUP, "fast zeroing is not offered"));
            }
            let start = r.start.div_ceil(bs) * bs;
            let end = (r.end / bs * bs).max(start);
            if start >= r.end || end <= start {
                write_unaligned(entry, r.start, &vec![0u8; (r.end - r.start) as usize])?;
            } else {
                if r.start < start {
                    write_unaligned(entry, r.start, &vec![0u8; (start - r.start) as usize])?;
                }
                src.write_zeroes(start, end - start)
                    .map_err(|e| Failure::block(e, true))?;
                if end < r.end {
                    write_unaligned(entry, end, &vec![0u8; (r.end - end) as usize])?;
                }
            }
        }
        if req.flags & p::CMD_FLAG_FUA != 0 {
            src.flush().map_err(|e| Failure::block(e, true))?;
        }
        Ok(())
    }

    fn block_status(&mut self, entry: &ExportEntry, req: &Request) -> Result<(), End> {
        let replies = (|| {
            if !self.structured || self.contexts.is_empty() {
                return Err(Failure::new(
                    p::EINVAL,
                    "NBD_CMD_BLOCK_STATUS needs structured replies and a metadata context",
                ));
            }
            if req.length == 0 {
                return Err(Failure::new(p::EINVAL, "block status of zero bytes"));
            }
            let r = Self::range(entry, req, false)?;
            let one = req.flags & p::CMD_FLAG_REQ_ONE != 0;
            let src = &entry.export.source;
            let mut out = Vec::new();
            for (i, c) in self.contexts.iter().enumerate() {
                let (marked, inside, outside) = match c {
                    Context::Allocation => (
                        src.allocated(r.clone())
                            .map_err(|e| Failure::block(e, false))?,
                        0,
                        p::STATE_HOLE | p::STATE_ZERO,
                    ),
                    Context::Bitmap(name) => (
                        src.dirty(name, r.clone())
                            .map_err(|e| Failure::block(e, false))?,
                        p::STATE_DIRTY,
                        0,
                    ),
                };
                let d = descriptors(r.clone(), &marked, inside, outside, one);
                out.push(p::block_status_payload(i as u32 + 1, &d));
            }
            Ok(out)
        })();
        let replies = match replies {
            Ok(r) => r,
            Err(f) => return self.error_reply(req, f),
        };
        let n = replies.len();
        for (i, payload) in replies.into_iter().enumerate() {
            let flags = if i + 1 == n { p::REPLY_FLAG_DONE } else { 0 };
            self.send(&p::chunk_header(
                flags,
                p::REPLY_TYPE_BLOCK_STATUS,
                req.cookie,
                payload.len() as u32,
            ))?;
            self.send(&payload)?;
        }
        Ok(())
    }
}

/// The descriptors of `range`: parts inside `marked` get `inside`, the
/// rest `outside`; adjacent equal parts merged; at most one with
/// `one`, at most [`MAX_DESCRIPTORS`] otherwise. Always at least one.
pub(crate) fn descriptors(
    range: Range<u64>,
    marked: &[Range<u64>],
    inside: u32,
    outside: u32,
    one: bool,
) -> Vec<Descriptor> {
    let marked = merge(marked.to_vec());
    let mut out: Vec<Descriptor> = Vec::new();
    let push = |len: u64, flags: u32, out: &mut Vec<Descriptor>| {
        if len == 0 {
            return;
        }
        match out.last_mut() {
            Some(d) if d.flags == flags => d.length += len as u32,
            _ => out.push(Descriptor {
                length: len as u32,
                flags,
            }),
        }
    };
    let mut at = range.start;
    for m in &marked {
        let s = m.start.clamp(range.start, range.end);
        let e = m.end.clamp(range.start, range.end);
        if s >= e {
            continue;
        }
        push(s - at, outside, &mut out);
        push(e - s, inside, &mut out);
        at = e;
    }
    push(range.end - at, outside, &mut out);
    let cap = if one { 1 } else { MAX_DESCRIPTORS };
    out.truncate(cap);
    out
}

/// Reads any range, widening it to the source's block size.
fn read_unaligned(entry: &ExportEntry, offset: u64, buf: &mut [u8]) -> Result<(), Failure> {
    let src = &entry.export.source;
    let bs = u64::from(src.block_size().max(1));
    let len = buf.len() as u64;
    if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
        return src
            .read_at(offset, buf)
            .map_err(|e| Failure::block(e, false));
    }
    let start = offset / bs * bs;
    let end = ((offset + len).div_ceil(bs) * bs).min(src.size());
    let mut tmp = vec![0u8; end.saturating_sub(start) as usize];
    src.read_at(start, &mut tmp)
        .map_err(|e| Failure::block(e, false))?;
    if tmp.len() < (offset - start + len) as usize {
        return Err(Failure::new(p::EINVAL, "read beyond the export's end"));
    }
    let from = (offset - start) as usize;
    buf.copy_from_slice(&tmp[from..from + buf.len()]);
    Ok(())
}

/// Writes any range: unaligned edges are read, patched and written back
/// under the export's lock.
fn write_unaligned(entry: &ExportEntry, offset: u64, data: &[u8]) -> Result<(), Failure> {
    let src = &entry.export.source;
    let bs = u64::from(src.block_size().max(1));
    let len = data.len() as u64;
    if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
        return src
            .write_at(offset, data)
            .map_err(|e| Failure::block(e, true));
    }
    let _g = entry.rmw.lock().unwrap_or_else(|e| e.into_inner());
    let start = offset / bs * bs;
    let end = ((offset + len).div_ceil(bs) * bs).min(src.size());
    let mut tmp = vec![0u8; end.saturating_sub(start) as usize];
    src.read_at(start, &mut tmp)
        .map_err(|e| Failure::block(e, true))?;
    if tmp.len() < (offset - start + len) as usize {
        return Err(Failure::new(p::ENOSPC, "write beyond the export's end"));
    }
    let from = (offset - start) as usize;
    tmp[from..from + data.len()].copy_from_slice(data);
    src.write_at(start, &tmp)
        .map_err(|e| Failure::block(e, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::protocol::ChunkHeader;
    use crate::nbd::{ExportSource, MemorySource};
    use proptest::prelude::*;

    proptest! {
        /// Descriptors tile the range exactly and flag each byte as the
        /// marked ranges say.
        #[test]
        fn descriptors_match_a_byte_model(
            start in 0u64..64,
            len in 1u64..256,
            marks in proptest::collection::vec((0u64..400, 0u64..40), 0..8),
            one: bool,
        ) {
            let range = start..start + len;
            let marked: Vec<Range<u64>> = marks.iter().map(|&(s, l)| s..s + l).collect();
            let d = descriptors(range.clone(), &marked, 1, 2, one);
            prop_assert!(!d.is_empty());
            if one {
                prop_assert_eq!(d.len(), 1);
            } else {
                prop_assert_eq!(d.iter().map(|x| u64::from(x.length)).sum::<u64>(), len);
            }
            let mut at = start;
            for x in &d {
                prop_assert!(x.length > 0);
                for b in at..at + u64::from(x.length) {
                    let inside = marked.iter().any(|m| m.contains(&b));
                    prop_assert_eq!(x.flags, if inside { 1 } else { 2 });
                }
                at += u64::from(x.length);
            }
            for w in d.windows(2) {
                prop_assert_ne!(w[0].flags, w[1].flags, "adjacent equal descriptors merged");
            }
        }
    }

    fn opt(out: &mut Vec<u8>, option: u32, data: &[u8]) {
        out.extend_from_slice(&p::option_request(option, data));
    }

    /// Skips the option replies of one option; returns their types.
    fn skip_replies(b: &mut &[u8]) -> Vec<u32> {
        let mut types = Vec::new();
        loop {
            let kind = u32::from_be_bytes(b[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            *b = &b[20 + len..];
            types.push(kind);
            if kind == p::REP_ACK || kind & (1 << 31) != 0 {
                return types;
            }
        }
    }

    #[test]
    fn block_status_with_req_one_and_both_contexts() {
        let src = Arc::new(MemorySource::new(vec![0; 1 << 20]));
        src.add_bitmap("b");
        src.write_at(256 << 10, &[1; 512]).unwrap();
        let mut input = 3u32.to_be_bytes().to_vec();
        opt(&mut input, p::OPT_STRUCTURED_REPLY, &[]);
        let list = MetaContextRequest {
            export: "d".into(),
            queries: vec![],
        };
        opt(&mut input, p::OPT_LIST_META_CONTEXT, &list.to_bytes());
        let set = MetaContextRequest {
            export: "d".into(),
            queries: vec![
                "qemu:dirty-bitmap:b".into(),
                "base:allocation".into(),
                "nope:x".into(),
            ],
        };
        opt(&mut input, p::OPT_SET_META_CONTEXT, &set.to_bytes());
        let go = GoRequest {
            name: "d".into(),
            infos: vec![],
        };
        opt(&mut input, p::OPT_GO, &go.to_bytes());
        for flags in [0, p::CMD_FLAG_REQ_ONE] {
            let r = Request {
                flags,
                kind: p::CMD_BLOCK_STATUS,
                cookie: 9,
                offset: 0,
                length: 1 << 20,
            };
            input.extend_from_slice(&r.to_bytes());
        }
        let out = serve_bytes(
            &input,
            vec![Export::new("d", src)],
            ServerOptions::default(),
        );
        let mut b = &out[18..];
        assert_eq!(skip_replies(&mut b), vec![p::REP_ACK]);
        // LIST with no query: both contexts.
        assert_eq!(
            skip_replies(&mut b),
            vec![p::REP_META_CONTEXT, p::REP_META_CONTEXT, p::REP_ACK]
        );
        assert_eq!(
            skip_replies(&mut b),
            vec![p::REP_META_CONTEXT, p::REP_META_CONTEXT, p::REP_ACK]
        );
        assert_eq!(*skip_replies(&mut b).last().unwrap(), p::REP_ACK);
        let mut chunks = Vec::new();
        while !b.is_empty() {
            let h = ChunkHeader::parse(b).unwrap();
            let payload = &b[20..20 + h.length as usize];
            chunks.push((h, p::parse_block_status_payload(payload).unwrap()));
            b = &b[20 + h.length as usize..];
        }
        assert_eq!(chunks.len(), 4);
        let d = |length, flags| Descriptor { length, flags };
        // Context 1 is the bitmap, 2 the allocation (all data here).
        assert_eq!(chunks[0].1 .0, 1);
        assert_eq!(
            chunks[0].1 .1,
            vec![d(256 << 10, 0), d(64 << 10, 1), d(704 << 10, 0)]
        );
        assert_eq!(chunks[0].0.flags, 0);
        assert_eq!(chunks[1].1, (2, vec![d(1 << 20, 0)]));
        assert_eq!(chunks[1].0.flags, p::REPLY_FLAG_DONE);
        // REQ_ONE: one descriptor per context.
        assert_eq!(chunks[2].1, (1, vec![d(256 << 10, 0)]));
        assert_eq!(chunks[3].1, (2, vec![d(1 << 20, 0)]));
    }
}
