//! Regressions found by the `serial_i8042` fuzz target (fuzz/README.md).
//! Each input is also kept under fuzz/regressions/serial_i8042/.
//!
//! The bugs are fixed; these tests keep them fixed.
#![allow(clippy::unwrap_used)]

use vm_device::MutDevicePio;
use vm_device::bus::PioAddress;
use vmm_devices::ExitRequest;
use vmm_devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};

struct NoRequests;

impl ExitRequest for NoRequests {
    fn debug_exit(&self, _: u32) {}
    fn reset(&self) {}
    fn power_off(&self) {}
}

/// fuzz/regressions/serial_i8042/i8042-output-unbounded: every command that
/// answers (self-test 0xaa, port tests 0xa9/0xab, reads 0x20/0xd0) queues
/// one more byte that the guest need never read, so a guest looping on
/// `out 0x64, 0xaa` grows the VMM's memory without limit. A real
/// controller has a one-byte output buffer (Linux's i8042_flush() drains
/// at most 16 bytes).
#[test]
fn i8042_output_buffer_is_bounded() {
    let mut i8042 = I8042::new(NoRequests);
    for _ in 0..1000 {
        i8042.pio_write(PioAddress(I8042_COMMAND_PORT), 0, &[0xaa]);
    }
    let mut queued = 0;
    loop {
        let mut status = [0u8];
        i8042.pio_read(PioAddress(I8042_COMMAND_PORT), 0, &mut status);
        if status[0] & 0x01 == 0 {
            break;
        }
        let mut data = [0u8];
        i8042.pio_read(PioAddress(I8042_DATA_PORT), 0, &mut data);
        queued += 1;
        assert!(queued <= 16, "the i8042 kept more than 16 answers for the guest");
    }
}
