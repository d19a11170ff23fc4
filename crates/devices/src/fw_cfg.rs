//! QEMU's firmware configuration device (fw_cfg), legacy port I/O interface
//! only (QEMU's docs/specs/fw_cfg.rst): a 16-bit little-endian write of a key
//! to the selector port (0x510) selects an item and rewinds it; byte reads
//! from the data port (0x511) return the item's bytes in order, then zeros.
//! No DMA interface and no files: the items are the signature, the
//! interface id, the RAM size and the CPU counts. Unknown keys read as
//! zeros, and writes to the data port are ignored, as in QEMU.
//!
//! ```
//! use vm_device::MutDevicePio;
//! use vm_device::bus::PioAddress;
//! use vmm_devices::fw_cfg::{FW_CFG_PORT, FwCfg, KEY_SIGNATURE};
//!
//! let mut fw_cfg = FwCfg::new(128 << 20, 2);
//! fw_cfg.pio_write(PioAddress(FW_CFG_PORT), 0, &KEY_SIGNATURE.to_le_bytes());
//! let mut signature = [0u8; 4];
//! for byte in &mut signature {
//!     let mut data = [0u8];
//!     fw_cfg.pio_read(PioAddress(FW_CFG_PORT), 1, &mut data);
//!     *byte = data[0];
//! }
//! assert_eq!(&signature, b"QEMU");
//! ```

use std::collections::BTreeMap;

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

/// The selector port; the data port follows it.
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports the device claims: the selector (a 16-bit write) and the data
/// port, as one range so both accesses land in it.
pub const FW_CFG_PORT_LEN: u16 = 2;
/// Offset of the data port in the range.
const DATA_OFFSET: PioAddressOffset = 1;

/// "QEMU".
pub const KEY_SIGNATURE: u16 = 0x00;
/// Interface id: bit 0, the traditional (port I/O) interface; no DMA.
pub const KEY_ID: u16 = 0x01;
/// RAM size in bytes (u64, little-endian).
pub const KEY_RAM_SIZE: u16 = 0x03;
/// Number of CPUs at boot (u16, little-endian).
pub const KEY_NB_CPUS: u16 = 0x05;
/// Most CPUs the machine can have (u16, little-endian): the same here.
pub const KEY_MAX_CPUS: u16 = 0x0f;

const SIGNATURE: &[u8; 4] = b"QEMU";
const ID_TRADITIONAL: u32 = 1;

/// What a snapshot keeps of fw_cfg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FwCfgState {
    /// The selected key.
    pub selected: u16,
    /// The next byte of the selected item to read.
    pub position: u64,
}

/// The fw_cfg device.
#[derive(Debug)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    position: usize,
}

impl FwCfg {
    /// A device describing a machine with `ram_size` bytes of RAM and
    /// `cpus` CPUs.
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        let items = BTreeMap::from([
            (KEY_SIGNATURE, SIGNATURE.to_vec()),
            (KEY_ID, ID_TRADITIONAL.to_le_bytes().to_vec()),
            (KEY_RAM_SIZE, ram_size.to_le_bytes().to_vec()),
            (KEY_NB_CPUS, cpus.to_le_bytes().to_vec()),
            (KEY_MAX_CPUS, cpus.to_le_bytes().to_vec()),
        ]);
        FwCfg { items, selected: KEY_SIGNATURE, position: 0 }
    }

    /// The selected item and the position in it, for a snapshot (the
    /// items come from the machine's configuration).
    pub fn state(&self) -> FwCfgState {
        FwCfgState { selected: self.selected, position: self.position as u64 }
    }

    /// Selects the item and position of `state`.
    pub fn restore(&mut self, state: &FwCfgState) {
        self.selected = state.selected;
        // Past an item's end reads give zeros, whatever the position.
        self.position = usize::try_from(state.position).unwrap_or(usize::MAX);
    }

    /// Selects the item `key` and rewinds it.
    pub fn select(&mut self, key: u16) {
        self.selected = key;
        self.position = 0;
    }

    /// The next byte of the selected item, or 0 past its end (or for an
    /// unknown key).
    pub fn read_byte(&mut self) -> u8 {
        let item = self.items.get(&self.selected).map_or(&[][..], Vec::as_slice);
        match item.get(self.position) {
            Some(&byte) => {
                self.position += 1;
                byte
            }
            None => 0,
        }
    }
}

impl MutDevicePio for FwCfg {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        // Each byte read at the data port advances; the selector reads as 0.
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = if offset + index as PioAddressOffset == DATA_OFFSET {
                self.read_byte()
            } else {
                0
            };
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0, &[low, high]) => self.select(u16::from_le_bytes([low, high])),
            _ => log::debug!("fw_cfg: ignored {}-byte write at offset {offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(device: &mut FwCfg, key: u16) {
        device.pio_write(PioAddress(FW_CFG_PORT), 0, &key.to_le_bytes());
    }

    fn read(device: &mut FwCfg, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let mut data = [0xaa];
                device.pio_read(PioAddress(FW_CFG_PORT), DATA_OFFSET, &mut data);
                data[0]
            })
            .collect()
    }

    #[test]
    fn signature_and_id_say_qemu_with_the_traditional_interface() {
        let mut device = FwCfg::new(1 << 30, 1);
        select(&mut device, KEY_SIGNATURE);
        assert_eq!(read(&mut device, 4), b"QEMU");
        select(&mut device, KEY_ID);
        assert_eq!(read(&mut device, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn ram_size_and_cpu_counts_are_little_endian() {
        let mut device = FwCfg::new(0x1_2345_6789, 3);
        select(&mut device, KEY_RAM_SIZE);
        assert_eq!(read(&mut device, 8), 0x1_2345_6789u64.to_le_bytes());
        select(&mut device, KEY_NB_CPUS);
        assert_eq!(read(&mut device, 2), [3, 0]);
        select(&mut device, KEY_MAX_CPUS);
        assert_eq!(read(&mut device, 2), [3, 0]);
    }

    #[test]
    fn reads_past_the_end_and_unknown_keys_give_zeros() {
        let mut device = FwCfg::new(1 << 20, 2);
        select(&mut device, KEY_NB_CPUS);
        assert_eq!(read(&mut device, 5), [2, 0, 0, 0, 0]);
        for key in [0x11, 0x19, 0x8003, 0xffff] {
            select(&mut device, key);
            assert_eq!(read(&mut device, 8), [0; 8], "key {key:#x}");
        }
    }

    #[test]
    fn selecting_rewinds_the_item() {
        let mut device = FwCfg::new(1 << 20, 1);
        select(&mut device, KEY_SIGNATURE);
        assert_eq!(read(&mut device, 2), b"QE");
        select(&mut device, KEY_SIGNATURE);
        assert_eq!(read(&mut device, 4), b"QEMU");
    }

    #[test]
    fn only_a_16_bit_selector_write_selects_and_data_writes_are_ignored() {
        let mut device = FwCfg::new(1 << 20, 1);
        select(&mut device, KEY_SIGNATURE);
        assert_eq!(read(&mut device, 1), b"Q");
        device.pio_write(PioAddress(FW_CFG_PORT), 0, &[KEY_NB_CPUS as u8]);
        device.pio_write(PioAddress(FW_CFG_PORT), DATA_OFFSET, &[0x55]);
        assert_eq!(read(&mut device, 3), b"EMU");
    }

    #[test]
    fn a_read_across_both_ports_reads_zero_then_one_data_byte() {
        let mut device = FwCfg::new(1 << 20, 1);
        select(&mut device, KEY_SIGNATURE);
        let mut data = [0xaa; 2];
        device.pio_read(PioAddress(FW_CFG_PORT), 0, &mut data);
        assert_eq!(data, [0, b'Q']);
        assert_eq!(read(&mut device, 1), b"E");
    }
}
