//! Serial ports: the 16550A UART and the interface to what it is connected
//! to on the host.

pub mod uart16550;

pub use uart16550::Uart16550;

/// The standard PC COM port bases and IRQs.
pub const COM_PORTS: [(u64, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
    Mark,
    Space,
}

/// The line settings the guest programmed: what a host serial port or an
/// RFC 2217 server should be set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineParams {
    /// Bits per second: 115200 / divisor.
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2 (1.5 for 5-bit characters is reported as 2).
    pub stop_bits: u8,
}

/// Modem control outputs (guest to host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModemControl {
    pub dtr: bool,
    pub rts: bool,
}

/// Modem status inputs (host to guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModemStatus {
    pub cts: bool,
    pub dsr: bool,
    pub ri: bool,
    pub dcd: bool,
}

/// The host side of a serial port, called from the vCPU thread that
/// accesses the UART. Implementations must not block: output is queued or
/// dropped (and counted), never waited for.
pub trait SerialBackend: Send {
    /// Bytes the guest transmitted.
    fn write(&mut self, data: &[u8]);
    /// The guest changed baud rate, character size, parity or stop bits.
    fn line_params_changed(&mut self, _params: LineParams) {}
    /// The guest changed DTR or RTS.
    fn modem_control_changed(&mut self, _control: ModemControl) {}
    /// The guest started or stopped sending a break.
    fn break_changed(&mut self, _on: bool) {}
    /// The receive FIFO has room again: input held back can be delivered.
    fn rx_space_available(&mut self) {}
    /// Whether the host side can take more output now. While it cannot,
    /// the UART holds THRE and TEMT clear, as a transmitter still busy
    /// with earlier bytes would, so the guest waits instead of losing
    /// data; the host side then calls `Uart16550::tx_space_available`.
    /// After answering `true` a backend must accept at least a FIFO's
    /// worth (16 bytes) of output. Backends that never push back keep
    /// this default.
    fn tx_ready(&mut self) -> bool {
        true
    }
}

/// A backend that discards output and never has input.
#[derive(Debug, Default)]
pub struct NullBackend;

impl SerialBackend for NullBackend {
    fn write(&mut self, _data: &[u8]) {}
}
