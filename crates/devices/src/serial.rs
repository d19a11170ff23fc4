//! The 16550-compatible UART (8250 family) from vm-superio, on the PIO bus.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_superio::Serial;
use vm_superio::serial::SerialEvents;
use vm_superio::serial::SerialState;
use vmm_sys_util::eventfd::EventFd;

use crate::EventFdTrigger;

/// I/O base of the first PC serial port (COM1, ttyS0).
pub const COM1_PORT: u16 = 0x3f8;
/// Number of registers (ports) of an 8250.
pub const SERIAL_PORT_LEN: u16 = 8;
/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Signals an eventfd when the guest has emptied the receive FIFO, so that
/// whoever feeds it knows there is room again.
#[derive(Debug)]
pub struct InputRoom(Option<EventFd>);

impl SerialEvents for InputRoom {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(event) = &self.0
            && let Err(err) = event.write(1)
        {
            log::warn!("serial: cannot signal input room: {err}");
        }
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them
/// (vm-superio's `SerialState`, which has no serde of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPortState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not read yet (at most the 64-byte FIFO).
    pub in_buffer: Vec<u8>,
}

/// A UART whose transmitted bytes go to `W`.
pub struct SerialPort<W: Write> {
    uart: Serial<EventFdTrigger, InputRoom, W>,
}

impl<W: Write> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort").finish_non_exhaustive()
    }
}

impl<W: Write> SerialPort<W> {
    /// Creates a UART that raises `interrupt` and writes its output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: W) -> Self {
        SerialPort { uart: Serial::with_events(interrupt, InputRoom(None), out) }
    }

    /// Like [`SerialPort::new`], and signals `input_room` each time the
    /// guest has read the receive FIFO empty.
    pub fn with_input_room(interrupt: EventFdTrigger, input_room: EventFd, out: W) -> Self {
        SerialPort { uart: Serial::with_events(interrupt, InputRoom(Some(input_room)), out) }
    }

    /// Like [`SerialPort::with_input_room`] (or `new`, without
    /// `input_room`), with the registers and FIFO of `state`; raises the
    /// interrupt if the state has one pending.
    pub fn from_state(
        state: &SerialPortState,
        interrupt: EventFdTrigger,
        input_room: Option<EventFd>,
        out: W,
    ) -> crate::Result<Self> {
        let inner = SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart =
            Serial::from_state(&inner, interrupt, InputRoom(input_room), out).map_err(|err| {
                crate::Error::InvalidState { device: "serial port", reason: format!("{err:?}") }
            })?;
        Ok(SerialPort { uart })
    }

    /// The registers and FIFO, for a snapshot.
    pub fn state(&self) -> SerialPortState {
        let state = self.uart.state();
        SerialPortState {
            baud_divisor: [state.baud_divisor_low, state.baud_divisor_high],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }

    /// The interrupt line, to wire to the guest's interrupt controller.
    pub fn interrupt(&self) -> &EventFdTrigger {
        self.uart.interrupt_evt()
    }

    /// Queues bytes the guest will read; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(input.len());
        match self.uart.enqueue_raw_bytes(&input[..room]) {
            Ok(queued) => queued,
            Err(err) => {
                log::warn!("serial: cannot queue input: {err:?}");
                0
            }
        }
    }

    /// Free room in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes the output writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.uart.writer_mut().flush()
    }

    /// The output writer.
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }
}

impl SerialPort<Vec<u8>> {
    /// Everything the guest transmitted so far.
    pub fn output(&self) -> &[u8] {
        self.uart.writer()
    }
}

/// Register offset of the `index`-th byte of an access, if it is a register.
fn register(offset: PioAddressOffset, index: usize) -> Option<u8> {
    let register = usize::from(offset) + index;
    (register < usize::from(SERIAL_PORT_LEN)).then_some(register as u8)
}

impl<W: Write> MutDevicePio for SerialPort<W> {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        // Wider accesses are split into byte accesses, as on the ISA bus.
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = register(offset, index).map_or(0xff, |reg| self.uart.read(reg));
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        for (index, &byte) in data.iter().enumerate() {
            let Some(reg) = register(offset, index) else {
                break;
            };
            if let Err(err) = self.uart.write(reg, byte) {
                log::warn!("serial: write to register {reg} failed: {err:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u16 = 0;
    const LCR: u16 = 3;
    const LSR: u16 = 5;
    const LSR_THRE: u8 = 0x20;

    fn port() -> SerialPort<Vec<u8>> {
        SerialPort::new(EventFdTrigger::new().unwrap(), Vec::new())
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let mut serial = port();
        let base = PioAddress(COM1_PORT);
        for &byte in b"hi\n" {
            let mut lsr = [0u8];
            serial.pio_read(base, LSR, &mut lsr);
            assert_ne!(lsr[0] & LSR_THRE, 0, "transmitter should always be ready");
            serial.pio_write(base, THR, &[byte]);
        }
        assert_eq!(serial.output(), b"hi\n");
    }

    #[test]
    fn divisor_latch_writes_are_not_output() {
        let mut serial = port();
        let base = PioAddress(COM1_PORT);
        serial.pio_write(base, LCR, &[0x80]); // DLAB on
        serial.pio_write(base, THR, &[0x01]); // divisor low byte
        serial.pio_write(base, LCR, &[0x03]); // 8N1, DLAB off
        serial.pio_write(base, THR, b"x");
        assert_eq!(serial.output(), b"x");
    }

    #[test]
    fn input_is_read_from_the_receive_buffer() {
        let mut serial = port();
        assert_eq!(serial.enqueue_input(b"ok"), 2);
        let mut byte = [0u8];
        serial.pio_read(PioAddress(COM1_PORT), THR, &mut byte);
        assert_eq!(byte[0], b'o');
        serial.pio_read(PioAddress(COM1_PORT), THR, &mut byte);
        assert_eq!(byte[0], b'k');
    }

    #[test]
    fn a_restored_port_has_the_registers_and_unread_input_it_had() {
        let mut serial = port();
        let base = PioAddress(COM1_PORT);
        serial.pio_write(base, LCR, &[0x80]);
        serial.pio_write(base, THR, &[0x0c]); // divisor 12: 9600 baud
        serial.pio_write(base, LCR, &[0x03]);
        serial.pio_write(base, 7, &[0x5a]); // scratch
        serial.pio_write(base, 1, &[0x01]); // IER: received data
        serial.enqueue_input(b"ab");
        let state = serial.state();
        assert_eq!((state.baud_divisor[0], state.scratch), (0x0c, 0x5a));
        let json = serde_json::to_string(&state).unwrap();
        let state: SerialPortState = serde_json::from_str(&json).unwrap();
        let interrupt = EventFdTrigger::new().unwrap();
        let mut restored = SerialPort::from_state(&state, interrupt, None, Vec::new()).unwrap();
        assert_eq!(restored.state(), serial.state());
        // Received data is pending: the restored port raised its interrupt.
        assert_eq!(restored.interrupt().event_fd().read().unwrap(), 1);
        let mut byte = [0u8];
        restored.pio_read(base, THR, &mut byte);
        assert_eq!(byte[0], b'a');
        let mut bad = state;
        bad.in_buffer = vec![0; 65];
        let err = SerialPort::from_state(&bad, EventFdTrigger::new().unwrap(), None, Vec::new());
        assert!(err.unwrap_err().to_string().contains("serial port"));
    }

    #[test]
    fn wide_access_past_the_last_register_is_harmless() {
        let mut serial = port();
        let mut data = [0u8; 4];
        serial.pio_read(PioAddress(COM1_PORT), 6, &mut data);
        assert_eq!(&data[2..], &[0xff, 0xff]);
        serial.pio_write(PioAddress(COM1_PORT), 7, &[1, 2, 3, 4]);
        assert!(serial.output().is_empty());
    }
}
