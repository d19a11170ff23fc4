//! PCI configuration mechanism #1 (ports 0xcf8-0xcff) with a host bridge
//! at 00:00.0 and nothing else: what an ACPI guest needs to find working
//! (empty) PCI configuration space instead of logging that it has none.
//! ACPICA needs a kernel with PCI support even where a machine has no PCI
//! devices, and Linux's x86 PCI code then insists on a configuration
//! mechanism whose bus 0 has a host bridge (arch/x86/pci/direct.c,
//! `pci_sanity_check`).

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

/// The configuration address register's port; the data window follows.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Address register and data window: 8 ports.
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// The host bridge's vendor and device id: Red Hat's generic PCIe host
/// bridge, as QEMU presents it.
pub const HOST_BRIDGE_ID: (u16, u16) = (0x1b36, 0x0008);
const ENABLE: u32 = 1 << 31;
/// Class 06 (bridge), subclass 00 (host), programming interface 00.
const CLASS_HOST_BRIDGE: u32 = 0x0600_0000;

/// The configuration-space ports.
#[derive(Debug, Default)]
pub struct PciHost {
    address: u32,
}

impl PciHost {
    /// The ports with the address register cleared.
    pub fn new() -> Self {
        PciHost::default()
    }

    /// The address register, for a snapshot.
    pub fn state(&self) -> u32 {
        self.address
    }

    /// Sets the address register to a snapshot's value.
    pub fn restore(&mut self, address: u32) {
        self.address = address;
    }

    /// The 32-bit register of the addressed function at `register` (a
    /// multiple of 4), or all-ones where there is no function.
    fn config_register(&self, register: u32) -> u32 {
        let bus_device_function = (self.address >> 8) & 0xffff;
        if self.address & ENABLE == 0 || bus_device_function != 0 {
            return u32::MAX;
        }
        match register {
            0x00 => u32::from(HOST_BRIDGE_ID.1) << 16 | u32::from(HOST_BRIDGE_ID.0),
            0x08 => CLASS_HOST_BRIDGE,
            _ => 0,
        }
    }
}

impl MutDevicePio for PciHost {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let (word, shift) = match offset {
            0..=3 => (self.address, offset),
            _ => {
                let byte = u32::from(offset - 4) + (self.address & 0xfc);
                (self.config_register(byte & !3), (byte & 3) as u16)
            }
        };
        let bytes = word.to_le_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = bytes.get(usize::from(shift) + i).copied().unwrap_or(0xff);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        // Only the address register holds anything: the host bridge's
        // registers are read-only, and there is nothing else.
        if offset > 3 {
            return;
        }
        let mut bytes = self.address.to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(usize::from(offset) + i) {
                *slot = byte;
            }
        }
        self.address = u32::from_le_bytes(bytes) & !3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: PioAddress = PioAddress(PCI_CONFIG_PORT);

    fn read32(pci: &mut PciHost, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        pci.pio_read(BASE, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn select(pci: &mut PciHost, device: u32, register: u32) {
        pci.pio_write(BASE, 0, &(ENABLE | device << 11 | register).to_le_bytes());
    }

    #[test]
    fn linux_type_1_probe_sees_its_address_back() {
        let mut pci = PciHost::new();
        pci.pio_write(BASE, 3, &[0x01]); // outb(0x01, 0xcfb)
        pci.pio_write(BASE, 0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read32(&mut pci, 0), 0x8000_0000);
    }

    #[test]
    fn bus_0_has_a_host_bridge_at_device_0_and_nothing_else() {
        let mut pci = PciHost::new();
        select(&mut pci, 0, 0);
        assert_eq!(read32(&mut pci, 4), 0x0008_1b36);
        select(&mut pci, 0, 8);
        assert_eq!(read32(&mut pci, 4), CLASS_HOST_BRIDGE);
        // The class as a 16-bit read at offset 0x0a, as pci_sanity_check does.
        let mut class = [0u8; 2];
        pci.pio_read(BASE, 4 + 2, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
        select(&mut pci, 0, 0x10);
        assert_eq!(read32(&mut pci, 4), 0, "no BARs");
        for device in 1..32 {
            select(&mut pci, device, 0);
            assert_eq!(read32(&mut pci, 4), u32::MAX, "device {device}");
        }
        // Disabled: nothing answers.
        pci.pio_write(BASE, 0, &0u32.to_le_bytes());
        assert_eq!(read32(&mut pci, 4), u32::MAX);
    }

    #[test]
    fn writes_to_configuration_space_change_nothing() {
        let mut pci = PciHost::new();
        select(&mut pci, 0, 0);
        pci.pio_write(BASE, 4, &[0; 4]);
        assert_eq!(read32(&mut pci, 4), 0x0008_1b36);
    }
}
