//! Register and memory set-up for real-mode and long-mode entry.
//!
//! The values follow the Intel SDM, Vol. 3A, 9.8 ("Initializing IA-32e
//! mode"): a GDT with a 64-bit code segment, 4-level paging with CR4.PAE,
//! EFER.LME/LMA and CR0.PE/PG.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_memory::layout;

use crate::Result;

/// RFLAGS with only the reserved bit 1 set: interrupts off.
pub const RFLAGS_RESERVED: u64 = 0x2;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Selector of the 64-bit code segment in the boot GDT.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Selector of the flat data segment in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS in the boot GDT.
pub const TSS_SELECTOR: u16 = 0x18;
/// Selector of the flat 32-bit code segment in the boot GDT.
pub const CODE32_SELECTOR: u16 = 0x20;

/// Builds a GDT descriptor from flags (bits 8-15 access, 20-23 flags), base
/// and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, 64-bit code, flat data, TSS, flat 32-bit code.
pub const BOOT_GDT: [u64; layout::BOOT_GDT_ENTRIES as usize] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

/// Decodes a GDT descriptor into the form KVM_SET_SREGS takes (the limit
/// in bytes, scaled by the granularity bit).
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let field = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let raw_limit = ((((entry >> 48) & 0xf) << 16) | (entry & 0xffff)) as u32;
    let granularity = field(55, 1);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if granularity == 1 { (raw_limit << 12) | 0xfff } else { raw_limit },
        selector,
        type_: field(40, 0xf),
        present: field(47, 1),
        dpl: field(45, 0x3),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g: granularity,
        avl: field(52, 1),
        unusable: u8::from(field(47, 1) == 0),
        padding: 0,
    }
}

/// Sets `sregs` up for 16-bit real mode with every segment at `segment`.
pub fn real_mode_sregs(sregs: &mut kvm_sregs, segment: u16) {
    for seg in
        [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss]
    {
        seg.selector = segment;
        seg.base = u64::from(segment) << 4;
    }
    sregs.cr0 &= !(CR0_PE | CR0_PG);
    sregs.efer &= !(EFER_LME | EFER_LMA);
}

/// General registers for real-mode entry at `ip`: interrupts off, the stack
/// at the top of the segment.
pub fn real_mode_regs(ip: u16) -> kvm_regs {
    kvm_regs { rip: u64::from(ip), rflags: RFLAGS_RESERVED, rsp: 0xfff0, ..Default::default() }
}

/// Loads the boot GDT, an empty IDT, flat segments with `code` as CS, and
/// the TSS.
fn flat_segments(sregs: &mut kvm_sregs, code: kvm_segment) {
    let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
}

/// Sets `sregs` up for 32-bit protected mode with paging off and flat 4 GiB
/// segments (the PVH and multiboot entry state).
pub fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    flat_segments(sregs, segment_from_gdt(BOOT_GDT[4], CODE32_SELECTOR));
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers for 32-bit entry at `eip` with `ebx` and `eax` set
/// (PVH: start info and 0; multiboot: information and 0x2BADB002).
pub fn protected_mode_regs(eip: u32, ebx: u32, eax: u32) -> kvm_regs {
    kvm_regs {
        rip: u64::from(eip),
        rbx: u64::from(ebx),
        rax: u64::from(eax),
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Sets `sregs` up for 64-bit long mode with the boot GDT, an empty IDT and
/// the identity page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    flat_segments(sregs, segment_from_gdt(BOOT_GDT[1], CODE64_SELECTOR));
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers for long-mode entry at `rip`: interrupts off, the boot
/// stack, `rsi` as given (the Linux 64-bit protocol passes the zero page there).
pub fn long_mode_regs(rip: u64, rsi: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rsi,
        rflags: RFLAGS_RESERVED,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        ..Default::default()
    }
}

/// Writes the boot GDT and an empty IDT.
pub fn write_descriptor_tables(mem: &GuestMemoryMmap) -> Result<()> {
    for (index, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + 8 * index as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))?;
    Ok(())
}

/// Writes the boot GDT, an empty IDT and page tables that identity-map the
/// first [`layout::IDENTITY_MAPPED_GIB`] GiB with 2 MiB pages.
pub fn write_long_mode_tables(mem: &GuestMemoryMmap) -> Result<()> {
    write_descriptor_tables(mem)?;
    mem.write_obj(layout::PDPTE_START | PAGE_PRESENT_WRITABLE, GuestAddress(layout::PML4_START))?;
    for gib in 0..layout::IDENTITY_MAPPED_GIB {
        let pd = layout::PDE_START + gib * 0x1000;
        mem.write_obj(pd | PAGE_PRESENT_WRITABLE, GuestAddress(layout::PDPTE_START + gib * 8))?;
        let mut entries = [0u8; 4096];
        for (index, chunk) in entries.chunks_exact_mut(8).enumerate() {
            let address = ((gib << 9) + index as u64) << 21;
            chunk.copy_from_slice(&(address | PAGE_PRESENT_WRITABLE | PAGE_SIZE_2M).to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], CODE64_SELECTOR);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!((code.l, code.db, code.s, code.present, code.g), (1, 0, 1, 1, 1));
        assert_eq!(code.type_, 0xb);
        let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 0x3));
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn real_mode_runs_code_where_it_was_loaded() {
        let mut sregs = kvm_sregs { cr0: CR0_PE, ..Default::default() };
        real_mode_sregs(&mut sregs, 0x100);
        assert_eq!((sregs.cs.selector, sregs.cs.base), (0x100, 0x1000));
        assert_eq!(sregs.ds.base, 0x1000);
        assert_eq!(sregs.cr0 & CR0_PE, 0);
        let regs = real_mode_regs(0x10);
        assert_eq!((regs.rip, regs.rflags), (0x10, 0x2));
    }

    #[test]
    fn long_mode_enables_paging_and_64_bit_code() {
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs);
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.selector), (1, CODE64_SELECTOR));
        assert_eq!(sregs.gdt.limit, 39);
        let regs = long_mode_regs(0x10_0000, 0x7000);
        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x10_0000, 0x7000, 0x2));
    }

    #[test]
    fn protected_mode_has_flat_32_bit_code_and_no_paging() {
        let mut sregs = kvm_sregs { cr0: CR0_PG, efer: EFER_LME, ..Default::default() };
        protected_mode_sregs(&mut sregs);
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.selector, sregs.cs.db, sregs.cs.l), (CODE32_SELECTOR, 1, 0));
        assert_eq!((sregs.cs.base, sregs.cs.limit, sregs.cs.g), (0, 0xffff_ffff, 1));
        assert_eq!(sregs.ds.selector, DATA_SELECTOR);
        let regs = protected_mode_regs(0x100_0000, 0x6000, 0x2bad_b002);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
        assert_eq!(regs.rax, 0x2bad_b002);
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_long_mode_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPTE_START | 3);
        // Walk a few addresses through the tables.
        for address in [0u64, 0x20_0000, 0x4000_0000, 0xd000_0000, 0xffe0_0000] {
            let pdpte: u64 = mem
                .read_obj(GuestAddress(layout::PDPTE_START + ((address >> 30) & 511) * 8))
                .unwrap();
            let pde: u64 =
                mem.read_obj(GuestAddress((pdpte & !0xfff) + ((address >> 21) & 511) * 8)).unwrap();
            assert_eq!(pde & 0x83, 0x83, "not a present 2 MiB page at {address:#x}");
            assert_eq!(pde & !0xfff & !PAGE_SIZE_2M, address);
        }
        let gdt: u64 = mem.read_obj(GuestAddress(layout::BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt, BOOT_GDT[1]);
    }
}
