//! The power-management registers of a hardware-reduced ACPI machine (ACPI
//! 6.5, sections 4.8.3.7 and 4.8.3.6): the sleep control and status
//! registers, through which the guest enters S5 (`poweroff`), and the
//! reset register. The FADT points the guest at the three ports.

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::ExitRequest;

/// How many ports the device claims: sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u16 = 3;
/// SLP_EN: the sleep control register's "enter the sleep state" bit.
pub const SLEEP_ENABLE: u8 = 1 << 5;
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;

/// The sleep and reset registers.
#[derive(Debug)]
pub struct AcpiPm<R> {
    request: R,
    s5_sleep_type: u8,
    reset_value: u8,
}

impl<R: ExitRequest> AcpiPm<R> {
    /// Creates the registers: a sleep control write of SLP_EN with sleep
    /// type `s5_sleep_type` powers off, a write of `reset_value` to the
    /// reset register resets.
    pub fn new(request: R, s5_sleep_type: u8, reset_value: u8) -> Self {
        AcpiPm { request, s5_sleep_type, reset_value }
    }
}

impl<R: ExitRequest> MutDevicePio for AcpiPm<R> {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Sleep status: never woken (WAK_STS clear); the others read zero.
        data.fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let &[value] = data else {
            log::debug!("ACPI PM: ignored {}-byte write at offset {offset}", data.len());
            return;
        };
        match offset {
            0 if value & SLEEP_ENABLE != 0 => {
                let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if sleep_type == self.s5_sleep_type {
                    self.request.power_off();
                } else {
                    log::debug!("ACPI PM: sleep type {sleep_type} is not supported; ignored");
                }
            }
            2 if value == self.reset_value => self.request.reset(),
            _ => log::debug!("ACPI PM: ignored write of {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<&'static str>>>);

    impl ExitRequest for Recorder {
        fn debug_exit(&self, _: u32) {
            self.0.lock().unwrap().push("debug");
        }
        fn reset(&self) {
            self.0.lock().unwrap().push("reset");
        }
        fn power_off(&self) {
            self.0.lock().unwrap().push("power off");
        }
    }

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let recorder = Recorder::default();
        let mut pm = AcpiPm::new(recorder.clone(), 5, 0xfe);
        let base = PioAddress(0x600);
        // What Linux writes for S5: (SLP_TYP << 2) | SLP_EN.
        pm.pio_write(base, 0, &[(5 << 2) | SLEEP_ENABLE]);
        pm.pio_write(base, 2, &[0xfe]);
        assert_eq!(*recorder.0.lock().unwrap(), ["power off", "reset"]);
    }

    #[test]
    fn other_writes_do_nothing() {
        let recorder = Recorder::default();
        let mut pm = AcpiPm::new(recorder.clone(), 5, 0xfe);
        let base = PioAddress(0x600);
        pm.pio_write(base, 0, &[5 << 2]); // no SLP_EN
        pm.pio_write(base, 0, &[(3 << 2) | SLEEP_ENABLE]); // S3
        pm.pio_write(base, 0, &[(5 << 2) | SLEEP_ENABLE, 0]); // 2 bytes
        pm.pio_write(base, 1, &[0xff]);
        pm.pio_write(base, 2, &[1]);
        assert!(recorder.0.lock().unwrap().is_empty());
        let mut status = [0xffu8];
        pm.pio_read(base, 1, &mut status);
        assert_eq!(status, [0]);
    }
}
