//! Enough of the i8042 PS/2 controller for an operating system to reset the
//! machine through it (Linux's `reboot=k`), and to find no keyboard there.
//!
//! Port 0x60 is the data port, 0x64 the status (read) and command (write)
//! port. Commands that answer queue one byte in the output buffer.

use std::collections::VecDeque;

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::ExitRequest;

/// The data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status/command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KEYBOARD: u8 = 0xab;
const CMD_DISABLE_KEYBOARD: u8 = 0xad;
const CMD_ENABLE_KEYBOARD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Output port bit 0: the CPU reset line (active low).
const OUTPUT_PORT_RESET_LINE: u8 = 0x01;
/// Output port as firmware leaves it: reset line high, A20 enabled.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
/// Answers kept for the guest at most (Linux's i8042_flush() drains 16).
const OUTPUT_BUFFER_MAX: usize = 16;
/// Controller configuration as firmware leaves it: system flag set.
const CONFIG_DEFAULT: u8 = 0x04;

/// What the next byte written to the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    Config,
    OutputPort,
}

/// The controller's registers, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// The controller configuration byte.
    pub config: u8,
    /// The output port.
    pub output_port: u8,
    /// Answers not read yet (at most 16 are kept).
    pub output: Vec<u8>,
    /// What the next data-port write is for: 0 nothing, 1 the configuration
    /// byte, 2 the output port.
    pub pending: u8,
    /// The last write was a command (status bit 3).
    pub last_was_command: bool,
}

/// The i8042 controller, with no keyboard or mouse behind it.
#[derive(Debug)]
pub struct I8042<R> {
    request: R,
    config: u8,
    output_port: u8,
    output: VecDeque<u8>,
    pending: Pending,
    last_was_command: bool,
}

impl<R: ExitRequest> I8042<R> {
    /// A controller that calls `request.reset()` when the guest resets the CPU.
    pub fn new(request: R) -> Self {
        I8042 {
            request,
            config: CONFIG_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            output: VecDeque::new(),
            pending: Pending::Nothing,
            last_was_command: false,
        }
    }

    /// The registers, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            config: self.config,
            output_port: self.output_port,
            output: self.output.iter().copied().collect(),
            pending: match self.pending {
                Pending::Nothing => 0,
                Pending::Config => 1,
                Pending::OutputPort => 2,
            },
            last_was_command: self.last_was_command,
        }
    }

    /// Takes the registers of `state`.
    pub fn restore(&mut self, state: &I8042State) -> crate::Result<()> {
        let invalid = |reason: String| crate::Error::InvalidState { device: "i8042", reason };
        if state.output.len() > OUTPUT_BUFFER_MAX {
            return Err(invalid(format!("{} answers queued", state.output.len())));
        }
        self.pending = match state.pending {
            0 => Pending::Nothing,
            1 => Pending::Config,
            2 => Pending::OutputPort,
            other => return Err(invalid(format!("pending write {other}"))),
        };
        self.config = state.config;
        self.output_port = state.output_port;
        self.output = state.output.iter().copied().collect();
        self.last_was_command = state.last_was_command;
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    /// Queues an answer for the guest. A guest that never reads them gets
    /// the first few only: the VMM's memory stays bounded.
    fn answer(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_BUFFER_MAX {
            self.output.push_back(byte);
        }
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        self.pending = Pending::Nothing;
        match command {
            CMD_READ_CONFIG => self.answer(self.config),
            CMD_WRITE_CONFIG => self.pending = Pending::Config,
            CMD_SELF_TEST => self.answer(SELF_TEST_OK),
            CMD_TEST_KEYBOARD | CMD_TEST_AUX => self.answer(PORT_TEST_OK),
            CMD_READ_OUTPUT_PORT => self.answer(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.pending = Pending::OutputPort,
            CMD_PULSE_RESET => self.request.reset(),
            CMD_DISABLE_AUX | CMD_ENABLE_AUX | CMD_DISABLE_KEYBOARD | CMD_ENABLE_KEYBOARD => {}
            other => log::debug!("i8042: ignored command {other:#04x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Config => self.config = value,
            Pending::OutputPort => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET_LINE == 0 {
                    self.request.reset();
                }
            }
            // A byte for a keyboard that is not there: nothing answers.
            Pending::Nothing => log::debug!("i8042: ignored data {value:#04x}"),
        }
    }
}

impl<R: ExitRequest> MutDevicePio for I8042<R> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let value = match base.0 + offset {
            I8042_COMMAND_PORT => self.status(),
            I8042_DATA_PORT => self.output.pop_front().unwrap_or(0),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match base.0 + offset {
            I8042_COMMAND_PORT => self.command(value),
            I8042_DATA_PORT => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default, Clone)]
    struct Resets(Arc<AtomicUsize>);

    impl ExitRequest for Resets {
        fn debug_exit(&self, _: u32) {}
        fn reset(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn power_off(&self) {}
    }

    fn write(dev: &mut I8042<Resets>, port: u16, value: u8) {
        dev.pio_write(PioAddress(port), 0, &[value]);
    }

    fn read(dev: &mut I8042<Resets>, port: u16) -> u8 {
        let mut data = [0u8];
        dev.pio_read(PioAddress(port), 0, &mut data);
        data[0]
    }

    #[test]
    fn a_restored_controller_answers_as_the_saved_one_would() {
        let mut dev = I8042::new(Resets::default());
        write(&mut dev, I8042_COMMAND_PORT, CMD_SELF_TEST);
        write(&mut dev, I8042_COMMAND_PORT, CMD_WRITE_CONFIG);
        let state = dev.state();
        assert_eq!((state.output.clone(), state.pending), (vec![SELF_TEST_OK], 1));
        let mut restored = I8042::new(Resets::default());
        restored.restore(&state).unwrap();
        assert_eq!(restored.state(), state);
        write(&mut restored, I8042_DATA_PORT, 0x45);
        assert_eq!(read(&mut restored, I8042_DATA_PORT), SELF_TEST_OK);
        assert_eq!(restored.config, 0x45);
        let bad = I8042State { pending: 3, ..state.clone() };
        assert!(restored.restore(&bad).unwrap_err().to_string().contains("pending write 3"));
        let bad = I8042State { output: vec![0; 17], ..state };
        assert!(restored.restore(&bad).is_err());
    }

    #[test]
    fn pulse_reset_command_resets() {
        let resets = Resets::default();
        let mut dev = I8042::new(resets.clone());
        assert_eq!(read(&mut dev, I8042_COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        write(&mut dev, I8042_COMMAND_PORT, CMD_PULSE_RESET);
        assert_eq!(resets.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn clearing_the_reset_line_through_the_output_port_resets() {
        let resets = Resets::default();
        let mut dev = I8042::new(resets.clone());
        write(&mut dev, I8042_COMMAND_PORT, CMD_WRITE_OUTPUT_PORT);
        write(&mut dev, I8042_DATA_PORT, 0x03);
        assert_eq!(resets.0.load(Ordering::SeqCst), 0);
        write(&mut dev, I8042_COMMAND_PORT, CMD_WRITE_OUTPUT_PORT);
        write(&mut dev, I8042_DATA_PORT, 0x02);
        assert_eq!(resets.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn self_test_and_config_answer_through_the_data_port() {
        let mut dev = I8042::new(Resets::default());
        write(&mut dev, I8042_COMMAND_PORT, CMD_SELF_TEST);
        assert_ne!(read(&mut dev, I8042_COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, I8042_DATA_PORT), SELF_TEST_OK);
        write(&mut dev, I8042_COMMAND_PORT, CMD_WRITE_CONFIG);
        write(&mut dev, I8042_DATA_PORT, 0x45);
        write(&mut dev, I8042_COMMAND_PORT, CMD_READ_CONFIG);
        assert_eq!(read(&mut dev, I8042_DATA_PORT), 0x45);
        assert_eq!(read(&mut dev, I8042_COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, I8042_DATA_PORT), 0);
    }
}
