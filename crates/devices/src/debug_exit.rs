//! A debug-exit port, compatible with QEMU's `isa-debug-exit`: a write of
//! value `v` asks the VMM to end with process exit status `(v << 1) | 1`.

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::ExitRequest;

/// The port QEMU's isa-debug-exit uses by default.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// How many ports the device claims (so 1-, 2- and 4-byte writes reach it).
pub const DEBUG_EXIT_PORT_LEN: u16 = 4;

/// The exit status for a written value: `(v << 1) | 1`, as the OS keeps it
/// (its low 8 bits), so always odd.
pub fn exit_status(value: u32) -> i32 {
    i32::from((value.wrapping_shl(1) | 1) as u8)
}

/// The debug-exit device.
#[derive(Debug)]
pub struct DebugExit<R> {
    request: R,
}

impl<R: ExitRequest> DebugExit<R> {
    /// Creates the device; `request` is told of every write.
    pub fn new(request: R) -> Self {
        DebugExit { request }
    }
}

impl<R: ExitRequest> MutDevicePio for DebugExit<R> {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        // A write of any width at the first port carries the value; bytes
        // written elsewhere in the range are ignored, as in QEMU.
        if offset != 0 || data.is_empty() || data.len() > 4 {
            log::debug!("debug-exit: ignored {}-byte write at offset {offset}", data.len());
            return;
        }
        let mut value = [0u8; 4];
        value[..data.len()].copy_from_slice(data);
        self.request.debug_exit(u32::from_le_bytes(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<u32>>>);

    impl ExitRequest for Recorder {
        fn debug_exit(&self, value: u32) {
            self.0.lock().unwrap().push(value);
        }
        fn reset(&self) {}
        fn power_off(&self) {}
    }

    #[test]
    fn status_is_value_shifted_left_plus_one() {
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(5), 11);
        assert_eq!(exit_status(0x7f), 255);
        // The OS keeps only 8 bits: 0x80 -> 0x101 -> 1.
        assert_eq!(exit_status(0x80), 1);
        assert_eq!(exit_status(u32::MAX), 255);
    }

    #[test]
    fn writes_of_one_two_and_four_bytes_carry_the_value() {
        let recorder = Recorder::default();
        let mut device = DebugExit::new(recorder.clone());
        let base = PioAddress(DEBUG_EXIT_PORT);
        device.pio_write(base, 0, &[5]);
        device.pio_write(base, 0, &[0x34, 0x12]);
        device.pio_write(base, 0, &[1, 0, 0, 0x80]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![5, 0x1234, 0x8000_0001]);
    }

    #[test]
    fn writes_at_other_offsets_are_ignored_and_reads_are_all_ones() {
        let recorder = Recorder::default();
        let mut device = DebugExit::new(recorder.clone());
        device.pio_write(PioAddress(DEBUG_EXIT_PORT), 1, &[5]);
        let mut data = [0u8; 2];
        device.pio_read(PioAddress(DEBUG_EXIT_PORT), 0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert!(recorder.0.lock().unwrap().is_empty());
    }
}
