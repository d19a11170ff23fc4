//! Regressions found by the `loader` fuzz target (fuzz/README.md). Each
//! input is also kept under fuzz/regressions/loader/.
//!
//! The bugs are fixed; these tests keep them fixed.
#![allow(clippy::unwrap_used)]

use vm_memory::{Bytes, GuestAddress};
use vmm_loader::{BootProtocol, EntryPoint, LoadOptions, load_bytes};
use vmm_memory::{GuestRam, layout};

/// A minimal ELF64 x86-64 executable with one PT_LOAD segment holding `code`
/// at `paddr` followed by `bss` zero bytes, and an optional PT_NOTE segment.
fn elf(paddr: u64, code: &[u8], bss: u64, entry: u64, notes: &[u8]) -> Vec<u8> {
    let phnum: u16 = if notes.is_empty() { 1 } else { 2 };
    let data_at = 64 + 56 * u64::from(phnum);
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&entry.to_le_bytes());
    image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes());
    image.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, phnum, 64, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    let mut phdr = |kind: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
        image.extend_from_slice(&kind.to_le_bytes());
        image.extend_from_slice(&7u32.to_le_bytes());
        for word in [offset, paddr, paddr, filesz, memsz, 0x1000] {
            image.extend_from_slice(&word.to_le_bytes());
        }
    };
    let code_len = code.len() as u64;
    phdr(1, data_at, paddr, code_len, code_len + bss);
    if !notes.is_empty() {
        phdr(4, data_at + code_len, 0, notes.len() as u64, notes.len() as u64);
    }
    image.extend_from_slice(code);
    image.extend_from_slice(notes);
    image
}

/// An ELF note: name, type, descriptor, each padded to 4 bytes.
fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    note.extend_from_slice(&kind.to_le_bytes());
    for field in [[name, b"\0"].concat(), desc.to_vec()] {
        note.extend_from_slice(&field);
        note.resize(note.len().next_multiple_of(4), 0);
    }
    note
}

fn entry_address(entry: EntryPoint) -> u64 {
    match entry {
        EntryPoint::RealMode { segment, ip } => (u64::from(segment) << 4) + u64::from(ip),
        EntryPoint::ProtectedMode { eip, .. } => u64::from(eip),
        EntryPoint::LongMode { rip, .. } => rip,
    }
}

/// fuzz/regressions/loader/linux-elf-segment-over-mptable: a vmlinux-style
/// ELF whose segment (here its BSS) spans 0x10000-1 MiB is accepted for a
/// Linux boot, and then the loader's own command line at 0x20000 (and the
/// machine's MP table at 0x9fc00) overwrite the kernel.
#[test]
fn linux_elf_segment_is_not_overwritten_by_the_boot_data() {
    let ram = GuestRam::new(8).unwrap();
    let image = elf(0x1_0000, &[0xf4], 0xf_0000 - 1, 0x1_0000, &[]);
    let options = LoadOptions { boot: BootProtocol::Linux64, ..Default::default() };
    let Ok(loaded) = load_bytes(&ram, &image, &options) else {
        return; // Refusing the image is a fix too.
    };
    assert_eq!(loaded.ranges, vec![(0x1_0000, 0xf_0000)]);
    let mut bss = [0xaau8; 16];
    ram.memory().read_slice(&mut bss, GuestAddress(layout::CMDLINE_START)).unwrap();
    assert_eq!(bss, [0u8; 16], "the command line was written over the segment's BSS");
}

/// fuzz/regressions/loader/pvh-note-entry-outside-ram: the PVH entry point
/// comes from the XEN_ELFNOTE_PHYS32_ENTRY note and is never checked
/// against RAM (the ELF's e_entry is).
#[test]
fn pvh_entry_from_the_note_lies_in_ram() {
    let ram = GuestRam::new(8).unwrap();
    let notes = note(b"Xen", 18, &0x7979_7979u32.to_le_bytes());
    let image = elf(0x10_0000, &[0xf4], 0, 0x10_0000, &notes);
    let Ok(loaded) = load_bytes(&ram, &image, &LoadOptions::default()) else {
        return;
    };
    assert_eq!(loaded.protocol, BootProtocol::Pvh);
    let entry = entry_address(loaded.entry);
    assert!(ram.contains_range(entry, 1), "PVH entry {entry:#x} is outside guest RAM");
}

/// fuzz/regressions/loader/bzimage-entry-outside-ram: linux-loader loads a
/// bzImage at its header's code32_start (not at 1 MiB), and the 64-bit
/// entry, load + 0x200, is not checked against RAM: a short kernel placed
/// near the end of RAM gets an entry point past it.
#[test]
fn bzimage_entry_lies_in_ram() {
    let ram = GuestRam::new(8).unwrap();
    let mut image = vec![0u8; 5 * 512 + 0x100];
    image[0x1f1] = 4; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // LOADED_HIGH
    let code32_start = (8u32 << 20) - 0x100;
    image[0x214..0x218].copy_from_slice(&code32_start.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    image[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes()); // pref_address
    image[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    let Ok(loaded) = load_bytes(&ram, &image, &LoadOptions::default()) else {
        return;
    };
    let entry = entry_address(loaded.entry);
    assert!(ram.contains_range(entry, 1), "bzImage entry {entry:#x} is outside guest RAM");
}
