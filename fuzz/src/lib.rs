//! Shared pieces of the fuzz targets: a reader that decodes fuzz input, the
//! recorder behind `vmm_devices::ExitRequest`, and reference models of the
//! UART and the i8042 that the targets compare the real devices against.
//!
//! The models describe the behaviour the guest sees through the devices'
//! public API (register by register), written independently of their code:
//! any divergence is either a device bug or a model bug, and the target
//! reports it with both values.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// Reads typed values from fuzz input; past its end every value is zero, so
/// short inputs still decode to something.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzz input.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` next bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A request a device made to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `ExitRequest::debug_exit(value)`.
    DebugExit(u32),
    /// `ExitRequest::reset()`.
    Reset,
    /// `ExitRequest::power_off()`.
    PowerOff,
}

/// Records every `ExitRequest` call, in order (the VMM's own implementation
/// ends the run; here nothing happens).
#[derive(Clone, Debug, Default)]
pub struct Requests(Arc<Mutex<Vec<Request>>>);

impl Requests {
    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, request: Request) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(request);
    }
}

impl vmm_devices::ExitRequest for Requests {
    fn debug_exit(&self, value: u32) {
        self.push(Request::DebugExit(value));
    }

    fn reset(&self) {
        self.push(Request::Reset);
    }

    fn power_off(&self) {
        self.push(Request::PowerOff);
    }
}

/// The UART's receive FIFO size (16550: 64 bytes in vm-superio).
pub const FIFO_SIZE: usize = 64;

const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO_BITS: u8 = 0xc0;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
const LSR_IDLE: u8 = 0x40;

/// A reference model of the 8250/16550 UART as the guest sees it through
/// `vmm_devices::serial::SerialPort` (registers 0-7, byte by byte).
#[derive(Debug)]
pub struct SerialModel {
    dll: u8,
    dlm: u8,
    ier: u8,
    iir: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    /// The receive FIFO.
    pub fifo: VecDeque<u8>,
    /// Every byte transmitted to the host, in order.
    pub output: Vec<u8>,
    /// How many times the interrupt line was raised (eventfd writes).
    pub interrupts: u64,
}

impl Default for SerialModel {
    fn default() -> Self {
        SerialModel {
            dll: 0x0c,
            dlm: 0,
            ier: 0,
            iir: IIR_NONE,
            lcr: 0x03,
            mcr: 0x08,
            scr: 0,
            fifo: VecDeque::new(),
            output: Vec::new(),
            interrupts: 0,
        }
    }
}

impl SerialModel {
    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// True in loopback mode (MCR bit 4): transmitted bytes come back as input.
    pub fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn raise(&mut self, enable: u8, bit: u8) {
        if self.ier & enable != 0 && self.iir & bit == 0 {
            self.iir = (self.iir & !IIR_NONE) | bit;
            self.interrupts += 1;
        }
    }

    /// The guest writes `value` to register `reg` (0-7).
    pub fn write(&mut self, reg: u8, value: u8) {
        match reg {
            0 if self.dlab() => self.dll = value,
            1 if self.dlab() => self.dlm = value,
            0 if self.loopback() => {
                if self.fifo.len() < FIFO_SIZE {
                    self.fifo.push_back(value);
                    self.raise(IER_RDA, IIR_RDA);
                }
            }
            0 => {
                self.output.push(value);
                self.raise(IER_THRE, IIR_THRE);
            }
            1 => {
                self.ier = value & 0x0f;
                if !self.fifo.is_empty() {
                    self.raise(IER_RDA, IIR_RDA);
                }
                self.raise(IER_THRE, IIR_THRE);
            }
            3 => self.lcr = value,
            4 => self.mcr = value,
            7 => self.scr = value,
            _ => {}
        }
    }

    /// The guest reads register `reg` (0-7): the value it must get.
    pub fn read(&mut self, reg: u8) -> u8 {
        match reg {
            0 if self.dlab() => self.dll,
            1 if self.dlab() => self.dlm,
            0 => {
                self.iir &= !IIR_RDA;
                if self.iir == 0 {
                    self.iir = IIR_NONE;
                }
                self.fifo.pop_front().unwrap_or(0)
            }
            1 => self.ier,
            2 => std::mem::replace(&mut self.iir, IIR_NONE) | IIR_FIFO_BITS,
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let ready = if self.fifo.is_empty() { 0 } else { LSR_DATA_READY };
                LSR_THR_EMPTY | LSR_IDLE | ready
            }
            6 => {
                if self.loopback() {
                    // DSR = DTR, CTS = RTS, RI = OUT1, DCD = OUT2.
                    let mut msr = 0;
                    for (mcr_bit, msr_bit) in
                        [(0x01, 0x20), (0x02, 0x10), (0x04, 0x40), (0x08, 0x80)]
                    {
                        if self.mcr & mcr_bit != 0 {
                            msr |= msr_bit;
                        }
                    }
                    msr
                } else {
                    0xb0 // DCD, DSR, CTS
                }
            }
            _ => self.scr,
        }
    }

    /// Host input offered to the receive FIFO: how many bytes it takes.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        if self.loopback() || input.is_empty() {
            return 0;
        }
        let taken = input.len().min(FIFO_SIZE - self.fifo.len());
        self.fifo.extend(&input[..taken]);
        if taken > 0 {
            self.raise(IER_RDA, IIR_RDA);
        }
        taken
    }

    /// A `pio_write` of `data` at register offset `offset`: byte `i` goes to
    /// register `offset + i`, and nothing past the last register.
    pub fn pio_write(&mut self, offset: u16, data: &[u8]) {
        for (index, &byte) in data.iter().enumerate() {
            match register(offset, index) {
                Some(reg) => self.write(reg, byte),
                None => break,
            }
        }
    }

    /// A `pio_read` of `len` bytes at register offset `offset`: what the
    /// guest must get (0xff past the last register).
    pub fn pio_read(&mut self, offset: u16, len: usize) -> Vec<u8> {
        (0..len).map(|index| register(offset, index).map_or(0xff, |reg| self.read(reg))).collect()
    }
}

fn register(offset: u16, index: usize) -> Option<u8> {
    let reg = usize::from(offset) + index;
    (reg < 8).then_some(reg as u8)
}

/// The i8042's data port.
pub const I8042_DATA: u16 = 0x60;
/// The i8042's status/command port.
pub const I8042_COMMAND: u16 = 0x64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    Config,
    OutputPort,
}

/// A reference model of the i8042 controller without devices, from its
/// documentation (and the PS/2 controller's): status, the output buffer,
/// the configuration byte, the output port and the CPU reset.
#[derive(Debug)]
pub struct I8042Model {
    config: u8,
    output_port: u8,
    output: VecDeque<u8>,
    pending: Pending,
    last_was_command: bool,
    /// How many resets the guest asked for.
    pub resets: usize,
}

impl Default for I8042Model {
    fn default() -> Self {
        I8042Model {
            config: 0x04,
            output_port: 0x03,
            output: VecDeque::new(),
            pending: Pending::Nothing,
            last_was_command: false,
            resets: 0,
        }
    }
}

impl I8042Model {
    /// A one-byte read of `port`: what the guest must get.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            I8042_COMMAND => {
                let mut status = 0x04; // system flag
                if !self.output.is_empty() {
                    status |= 0x01;
                }
                if self.last_was_command {
                    status |= 0x08;
                }
                status
            }
            I8042_DATA => self.output.pop_front().unwrap_or(0),
            _ => 0xff,
        }
    }

    /// A one-byte write of `value` to `port`.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            I8042_COMMAND => {
                self.last_was_command = true;
                self.pending = Pending::Nothing;
                match value {
                    0x20 => self.answer(self.config),
                    0x60 => self.pending = Pending::Config,
                    0xaa => self.answer(0x55),
                    0xa9 | 0xab => self.answer(0x00),
                    0xd0 => self.answer(self.output_port),
                    0xd1 => self.pending = Pending::OutputPort,
                    0xfe => self.resets += 1,
                    _ => {}
                }
            }
            I8042_DATA => {
                self.last_was_command = false;
                match std::mem::replace(&mut self.pending, Pending::Nothing) {
                    Pending::Config => self.config = value,
                    Pending::OutputPort => {
                        self.output_port = value;
                        if value & 0x01 == 0 {
                            self.resets += 1;
                        }
                    }
                    Pending::Nothing => {}
                }
            }
            _ => {}
        }
    }

    /// Queues an answer for the guest; past [`I8042_OUTPUT_MAX`] unread
    /// answers, later ones are dropped (the VMM's memory stays bounded).
    fn answer(&mut self, byte: u8) {
        if self.output.len() < I8042_OUTPUT_MAX {
            self.output.push_back(byte);
        }
    }

    /// Bytes waiting in the output buffer.
    pub fn queued(&self) -> usize {
        self.output.len()
    }
}

/// Unread i8042 answers kept at most (a real controller holds one byte;
/// Linux's i8042_flush() drains at most 16).
pub const I8042_OUTPUT_MAX: usize = 16;

/// fw_cfg's selector port; the data port follows it.
pub const FW_CFG_PORT: u16 = 0x510;

/// A reference model of QEMU's fw_cfg, legacy port interface, from
/// QEMU's docs/specs/fw_cfg.rst: a 16-bit write to the selector selects an
/// item and rewinds it; byte reads at the data port return its bytes, then
/// zeros; unknown items read as zeros; the selector reads as zero.
#[derive(Debug)]
pub struct FwCfgModel {
    ram_size: u64,
    cpus: u16,
    selected: u16,
    position: usize,
}

impl FwCfgModel {
    /// The device of a machine with `ram_size` bytes of RAM and `cpus` CPUs.
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        FwCfgModel { ram_size, cpus, selected: 0, position: 0 }
    }

    fn item(&self) -> Vec<u8> {
        match self.selected {
            0x00 => b"QEMU".to_vec(),
            0x01 => 1u32.to_le_bytes().to_vec(),
            0x03 => self.ram_size.to_le_bytes().to_vec(),
            0x05 | 0x0f => self.cpus.to_le_bytes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// A write of `data` at `offset` (0: selector, 1: data).
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        if let (0, &[low, high]) = (offset, data) {
            self.selected = u16::from_le_bytes([low, high]);
            self.position = 0;
        }
    }

    /// A read of `len` bytes at `offset`: what the guest must get.
    pub fn read(&mut self, offset: u16, len: usize) -> Vec<u8> {
        (0..len)
            .map(|index| {
                if usize::from(offset) + index != 1 {
                    return 0;
                }
                let byte = self.item().get(self.position).copied();
                self.position += usize::from(byte.is_some());
                byte.unwrap_or(0)
            })
            .collect()
    }
}

/// True when `issue` is listed in `VMM_FUZZ_KNOWN` (comma-separated): the
/// invariant that found that known, reported bug is then not checked, so a
/// long run can look for other bugs before the fix lands.
pub fn known(issue: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("VMM_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|known| known == issue)
}

/// True when `VMM_FUZZ_VERBOSE` is set: targets then say what each input
/// did (to see what a seed or a crash input exercises).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("VMM_FUZZ_VERBOSE").is_some())
}
