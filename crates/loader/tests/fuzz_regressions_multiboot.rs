//! Regressions found by the `loader` fuzz target in the multiboot loader
//! (fuzz/README.md). Each input is also kept under fuzz/regressions/loader/.
//!
//! The bug is fixed; this test keeps it fixed.
#![allow(clippy::unwrap_used)]

use vmm_loader::{LoadOptions, load_bytes};
use vmm_memory::GuestRam;

/// fuzz/regressions/loader/multiboot-elf32-entry-below-vaddr: translating
/// an ELF32 multiboot kernel's entry point from virtual to physical
/// (crates/loader/src/multiboot.rs, `elf32_segments`) tests
/// `entry.wrapping_sub(vaddr) < memsz` but then computes `entry - vaddr`,
/// which overflows when the entry lies below the segment's p_vaddr and the
/// segment is large enough for the wrapped difference to pass: a debug build
/// panics ("attempt to subtract with overflow") on such an image instead of
/// refusing it.
#[test]
fn multiboot_elf32_entry_below_the_segment_is_refused_not_a_panic() {
    let entry: u32 = 0x10_0060;
    let vaddr: u32 = 0x1000_0000; // above the entry
    let memsz: u32 = 0xf100_0000; // entry - vaddr (mod 2^32) = 0xf010_0060 < memsz
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    image.extend_from_slice(&1u32.to_le_bytes());
    for word in [entry, 52, 0, 0] {
        image.extend_from_slice(&word.to_le_bytes()); // e_entry, e_phoff, e_shoff, e_flags
    }
    for half in [52u16, 32, 1, 40, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    // One PT_LOAD: the whole file at 1 MiB, with a huge BSS.
    for word in [1u32, 0, vaddr, 0x10_0000, 96, memsz, 7, 0x1000] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    // The multiboot header (flags 0: no a.out kludge): magic, flags, checksum.
    let magic: u32 = 0x1bad_b002;
    for word in [magic, 0, magic.wrapping_neg()] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    assert_eq!(image.len(), 96);
    let ram = GuestRam::new(8).unwrap();
    // The segment does not fit in 8 MiB: an error, not a panic.
    assert!(load_bytes(&ram, &image, &LoadOptions::default()).is_err());
}
