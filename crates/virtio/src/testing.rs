//! A minimal virtio driver for tests and fuzzing: guest memory, register
//! access through the MMIO transport, feature negotiation, and split queues
//! laid out in guest memory the way a driver lays them out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_device::MutDeviceMmio;
use vm_device::bus::MmioAddress;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::mmio::CONFIG_SPACE;
use crate::{Interrupt, Memory, MmioTransport, VirtioDevice};

/// Guest memory of `size` bytes at address 0.
pub fn memory(size: usize) -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// An interrupt that counts how often it was raised.
#[derive(Clone, Debug, Default)]
pub struct CountingInterrupt(pub Arc<AtomicUsize>);

impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

const BASE: MmioAddress = MmioAddress(0xd000_0000);

pub fn read_reg<D: VirtioDevice>(transport: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.mmio_read(BASE, offset, &mut data);
    u32::from_le_bytes(data)
}

pub fn write_reg<D: VirtioDevice>(transport: &mut MmioTransport<D>, offset: u64, value: u32) {
    transport.mmio_write(BASE, offset, &value.to_le_bytes());
}

pub fn read_config<D: VirtioDevice>(
    transport: &mut MmioTransport<D>,
    offset: u64,
    len: usize,
) -> Vec<u8> {
    let mut data = vec![0u8; len];
    transport.mmio_read(BASE, CONFIG_SPACE + offset, &mut data);
    data
}

/// Acknowledges the device and offers `features`; returns whether the
/// device took them (FEATURES_OK stayed set).
pub fn negotiate<D: VirtioDevice>(transport: &mut MmioTransport<D>, features: u64) -> bool {
    write_reg(transport, 0x70, 0);
    write_reg(transport, 0x70, 1);
    write_reg(transport, 0x70, 1 | 2);
    write_reg(transport, 0x24, 0);
    write_reg(transport, 0x20, features as u32);
    write_reg(transport, 0x24, 1);
    write_reg(transport, 0x20, (features >> 32) as u32);
    write_reg(transport, 0x70, 1 | 2 | 8);
    read_reg(transport, 0x70) & 8 != 0
}

/// Sets DRIVER_OK.
pub fn driver_ok<D: VirtioDevice>(transport: &mut MmioTransport<D>) {
    write_reg(transport, 0x70, 1 | 2 | 8 | 4);
}

/// A split queue in guest memory, as a driver sets it up.
#[derive(Clone, Debug)]
pub struct TestQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    /// A queue of `size` entries whose rings start at `base` (16-byte
    /// aligned), one after another.
    pub fn new(size: u16, base: u64) -> TestQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        TestQueue { size, desc, avail, used, next_desc: 0, avail_idx: 0, used_seen: 0 }
    }

    /// Programs queue `index` of the transport with this layout and sets
    /// it ready.
    pub fn install<D: VirtioDevice>(&self, transport: &mut MmioTransport<D>, index: u32) {
        write_reg(transport, 0x30, index);
        write_reg(transport, 0x38, u32::from(self.size));
        write_reg(transport, 0x80, self.desc as u32);
        write_reg(transport, 0x84, (self.desc >> 32) as u32);
        write_reg(transport, 0x90, self.avail as u32);
        write_reg(transport, 0x94, (self.avail >> 32) as u32);
        write_reg(transport, 0xa0, self.used as u32);
        write_reg(transport, 0xa4, (self.used >> 32) as u32);
        write_reg(transport, 0x44, 1);
    }

    /// Writes a chain of `(address, length, device-writable)` buffers and
    /// makes it available; returns its head index.
    pub fn add_chain(&mut self, mem: &Memory, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == buffers.len();
            let flags: u16 = if last { 0 } else { 1 } | if writable { 2 } else { 0 };
            let next = (index + 1) % self.size;
            self.write_desc(mem, index, addr, len, flags, next);
        }
        self.next_desc = (head + buffers.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Writes one raw descriptor.
    pub fn write_desc(&self, mem: &Memory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, mem: &Memory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &Memory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The used entries (id, length) added since the last call.
    pub fn take_used(&mut self, mem: &Memory) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut entries = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = GuestAddress(self.used + 4 + 8 * slot);
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            entries.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        entries
    }
}
