//! The Intel MultiProcessor table (MP specification 1.4, chapter 4), so a
//! guest without ACPI finds every CPU, the I/O APIC and how the ISA
//! interrupts and the local APIC's LINT pins are wired.
//!
//! The floating pointer goes at the start of the EBDA (the last KiB of base
//! memory, one of the places Linux scans) with the configuration table
//! right after it.

use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{GuestRam, layout};

use crate::{Error, Result};

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6, as the CPU signature of every processor entry.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX FPU and APIC bits.
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// Number of ISA interrupt lines routed to I/O APIC pins of the same number.
const ISA_IRQS: u8 = 16;
/// Pins of the (KVM in-kernel) I/O APIC.
pub const IOAPIC_PINS: u8 = 24;
/// Most CPUs the table can describe: APIC ids are 8 bits and the I/O APIC
/// takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// Builds the MP floating pointer and configuration table for `cpus` CPUs
/// (APIC ids 0..cpus, CPU 0 the bootstrap processor), placed at `address`.
/// The ISA interrupts 0-15 go to the I/O APIC pins of the same number;
/// each of `irqs` above them (I/O APIC pins 16-23, e.g. those of virtio-mmio
/// devices) gets an entry of its own, so the guest can route it.
pub fn build(cpus: u8, address: u64, irqs: &[u32]) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::MpTable(format!("{cpus} CPUs; the MP table takes 1 to {MAX_CPUS}")));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(layout::IOAPIC_DEFAULT_BASE as u32).to_le_bytes());
    let mut extra: Vec<u8> = Vec::new();
    for &irq in irqs {
        match u8::try_from(irq) {
            Ok(irq) if irq < ISA_IRQS => {}
            Ok(irq) if irq < IOAPIC_PINS => extra.push(irq),
            _ => {
                return Err(Error::MpTable(format!(
                    "interrupt {irq} is beyond the I/O APIC's {IOAPIC_PINS} pins"
                )));
            }
        }
    }
    extra.sort_unstable();
    extra.dedup();
    for irq in (0..ISA_IRQS).chain(extra.iter().copied()) {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    // Every local APIC: LINT0 takes the 8259's ExtINT, LINT1 the NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(ISA_IRQS) + extra.len() as u16 + 2;

    let table_address = address + FLOATING_POINTER_LEN as u64;
    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REVISION, 0]);
    table.extend_from_slice(b"RUST-VMM");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0; 6]); // OEM table pointer and size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_DEFAULT_BASE as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_address as u32).to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `cpus` CPUs and the interrupts `irqs` at
/// [`layout::MPTABLE_START`].
pub fn write(ram: &GuestRam, cpus: u8, irqs: &[u32]) -> Result<()> {
    let bytes = build(cpus, layout::MPTABLE_START, irqs)?;
    if !ram.contains_range(layout::MPTABLE_START, bytes.len() as u64) {
        return Err(Error::MpTable("guest RAM ends before the EBDA".into()));
    }
    ram.memory().write_slice(&bytes, GuestAddress(layout::MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESSOR_ENTRY_LEN: usize = 20;
    const OTHER_ENTRY_LEN: usize = 8;

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let bytes = build(2, 0x9_fc00, &[]).unwrap();
        let sum = |b: &[u8]| b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 0x9_fc10);
        let table = &bytes[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        // 2 CPUs, the bus, the I/O APIC, 16 ISA interrupts, 2 local interrupts.
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 22);
    }

    #[test]
    fn cpus_have_consecutive_apic_ids_and_one_bootstrap() {
        let bytes = build(3, 0x9_fc00, &[]).unwrap();
        let cpus = &bytes[16 + HEADER_LEN..];
        for cpu in 0..3 {
            let entry = &cpus[cpu * PROCESSOR_ENTRY_LEN..];
            assert_eq!((entry[0], entry[1]), (ENTRY_PROCESSOR, cpu as u8));
            assert_eq!(entry[3] & CPU_BOOTSTRAP != 0, cpu == 0);
        }
        let ioapic = &cpus[3 * PROCESSOR_ENTRY_LEN + OTHER_ENTRY_LEN..];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 3));
    }

    #[test]
    fn interrupts_above_the_isa_range_get_their_own_entries() {
        let isa_only = build(1, 0x9_fc00, &[4, 5, 15]).unwrap();
        let with_high = build(1, 0x9_fc00, &[5, 17, 16, 17]).unwrap();
        let count = |b: &[u8]| u16::from_le_bytes([b[16 + 34], b[16 + 35]]);
        assert_eq!(count(&isa_only), 1 + 1 + 1 + 16 + 2);
        assert_eq!(count(&with_high), count(&isa_only) + 2);
        assert_eq!(with_high.len(), isa_only.len() + 2 * OTHER_ENTRY_LEN);
        // The two new I/O interrupt entries follow the 16 ISA ones: pins 16, 17.
        let first_io = 16 + HEADER_LEN + PROCESSOR_ENTRY_LEN + 2 * OTHER_ENTRY_LEN;
        let entry = |i: usize| &with_high[first_io + i * OTHER_ENTRY_LEN..][..OTHER_ENTRY_LEN];
        assert_eq!((entry(16)[0], entry(16)[5], entry(16)[7]), (ENTRY_IO_INTERRUPT, 16, 16));
        assert_eq!((entry(17)[5], entry(17)[7]), (17, 17));
        let sum = with_high[16..].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        assert_eq!(sum, 0);
    }

    #[test]
    fn cpu_count_is_checked() {
        assert!(build(0, 0, &[]).is_err());
        assert!(build(255, 0, &[]).is_err());
        assert!(build(254, 0, &[]).is_ok());
        assert!(build(1, 0, &[24]).is_err());
    }
}
