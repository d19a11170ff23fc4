//! ELF64 x86-64 images, validated here and loaded by linux-loader.
//!
//! linux-loader's ELF loader checks neither the machine nor the class, nor
//! that segments fit in RAM, and it leaves BSS as it finds it; this module
//! does that validation first so the user gets a precise error, then zeroes
//! BSS after loading.

use std::io::Cursor;

use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::{Error, GuestRam, LoadOptions, Result};

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidElf(message.into())
}

/// The parts of an ELF64 file header this loader needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub entry: u64,
    pub phoff: u64,
    pub phnum: u16,
}

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub index: usize,
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

pub(crate) fn parse_header(image: &[u8]) -> Result<Header> {
    if image.len() < EHDR_SIZE {
        return Err(invalid(format!(
            "truncated: {} bytes is shorter than the 64-byte ELF64 header",
            image.len()
        )));
    }
    if image[4] != ELFCLASS64 {
        return Err(invalid(format!(
            "ELF class {} is not ELFCLASS64; only 64-bit x86-64 ELF images are supported",
            image[4]
        )));
    }
    if image[5] != ELFDATA2LSB {
        return Err(invalid("not little-endian"));
    }
    let machine = u16_at(image, 18);
    if machine != EM_X86_64 {
        return Err(invalid(format!("machine {machine} is not x86-64 (EM_X86_64 = 62)")));
    }
    let phentsize = u16_at(image, 54);
    let phnum = u16_at(image, 56);
    if phnum == 0 {
        return Err(invalid("no program headers"));
    }
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(invalid(format!("program header size {phentsize} is not {PHDR_SIZE}")));
    }
    let phoff = u64_at(image, 32);
    let table_end =
        u64::from(phnum).checked_mul(PHDR_SIZE as u64).and_then(|len| len.checked_add(phoff));
    if table_end.is_none_or(|end| end > image.len() as u64) {
        return Err(invalid(format!(
            "truncated: the program header table ({phnum} entries at offset {phoff:#x}) \
             lies past the end of the file ({} bytes)",
            image.len()
        )));
    }
    Ok(Header { entry: u64_at(image, 24), phoff, phnum })
}

/// Reads and checks the PT_LOAD segments: inside the file, inside RAM, above
/// the boot structures, not overlapping each other.
pub(crate) fn loadable_segments(
    ram: &GuestRam,
    image: &[u8],
    header: &Header,
) -> Result<Vec<Segment>> {
    let mut segments: Vec<Segment> = Vec::new();
    for index in 0..usize::from(header.phnum) {
        // In range: parse_header checked the whole table lies in the file.
        let at = header.phoff as usize + index * PHDR_SIZE;
        if u32_at(image, at) != PT_LOAD {
            continue;
        }
        let segment = Segment {
            index,
            offset: u64_at(image, at + 8),
            paddr: u64_at(image, at + 24),
            filesz: u64_at(image, at + 32),
            memsz: u64_at(image, at + 40),
        };
        let bad = |reason: String| Error::BadSegment {
            index,
            addr: segment.paddr,
            size: segment.memsz,
            reason,
        };
        if segment.filesz > segment.memsz {
            return Err(bad(format!(
                "has a file size ({:#x}) larger than its memory size",
                segment.filesz
            )));
        }
        if segment.offset.checked_add(segment.filesz).is_none_or(|end| end > image.len() as u64) {
            return Err(bad(format!(
                "reads {:#x} bytes at file offset {:#x}, past the end of the file ({} bytes)",
                segment.filesz,
                segment.offset,
                image.len()
            )));
        }
        if segment.memsz == 0 {
            continue;
        }
        if !ram.contains_range(segment.paddr, segment.memsz) {
            return Err(bad(format!("does not fit in guest RAM ({} bytes)", ram.size_bytes())));
        }
        if let Some(overlap) = crate::boot_data_overlap(segment.paddr, segment.memsz) {
            return Err(bad(overlap));
        }
        if let Some(other) = segments.iter().find(|other| {
            segment.paddr < other.paddr + other.memsz && other.paddr < segment.paddr + segment.memsz
        }) {
            return Err(bad(format!("overlaps segment {}", other.index)));
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        return Err(invalid("no loadable (PT_LOAD) segment with contents"));
    }
    Ok(segments)
}

/// An ELF image loaded into guest memory.
#[derive(Debug)]
pub(crate) struct ElfImage {
    /// The entry point (the image's or the override).
    pub entry: u64,
    /// The PVH 32-bit entry point, if the image has a XEN_ELFNOTE_PHYS32_ENTRY note.
    pub pvh_entry: Option<u64>,
    /// Whether the image carries a note named "Linux" (every vmlinux does).
    pub linux_note: bool,
    /// Loaded ranges, as (start, length).
    pub ranges: Vec<(u64, u64)>,
}

impl ElfImage {
    /// The end (exclusive) of the highest loaded segment.
    pub fn end(&self) -> u64 {
        self.ranges.iter().map(|(start, len)| start + len).max().unwrap_or(0)
    }
}

/// Whether any PT_NOTE segment holds a note with one of the names `wanted`.
pub(crate) fn has_note_named(image: &[u8], header: &Header, wanted: &[&[u8]]) -> bool {
    const PT_NOTE: u32 = 4;
    let align4 = |n: usize| n.div_ceil(4) * 4;
    (0..usize::from(header.phnum)).any(|index| {
        let at = header.phoff as usize + index * PHDR_SIZE;
        if u32_at(image, at) != PT_NOTE {
            return false;
        }
        let (Ok(offset), Ok(size)) =
            (usize::try_from(u64_at(image, at + 8)), usize::try_from(u64_at(image, at + 32)))
        else {
            return false;
        };
        let Some(notes) = offset.checked_add(size).and_then(|end| image.get(offset..end)) else {
            return false;
        };
        let mut pos = 0;
        while pos + 12 <= notes.len() {
            let namesz = u32_at(notes, pos) as usize;
            let descsz = u32_at(notes, pos + 4) as usize;
            let name = notes.get(pos + 12..pos + 12 + namesz);
            if name.is_some_and(|name| wanted.contains(&name.strip_suffix(b"\0").unwrap_or(name))) {
                return true;
            }
            pos += 12 + align4(namesz) + align4(descsz);
        }
        false
    })
}

pub(crate) fn load(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<ElfImage> {
    let header = parse_header(image)?;
    let segments = loadable_segments(ram, image, &header)?;
    let entry = options.entry.unwrap_or(header.entry);
    if !ram.contains_range(entry, 1) {
        return Err(Error::BadEntry { entry, reason: "it is outside guest RAM" });
    }
    let result = Elf::load(ram.memory(), None, &mut Cursor::new(image), None)?;
    for segment in &segments {
        // linux-loader copies p_filesz bytes; the rest of p_memsz is BSS.
        let bss_len = usize::try_from(segment.memsz - segment.filesz)
            .map_err(|_| invalid("BSS larger than the host address space"))?;
        if bss_len > 0 {
            let zeroes = vec![0u8; bss_len];
            ram.memory().write_slice(&zeroes, GuestAddress(segment.paddr + segment.filesz))?;
        }
        log::debug!(
            "ELF segment {}: {:#x} bytes at {:#x} ({:#x} from file)",
            segment.index,
            segment.memsz,
            segment.paddr,
            segment.filesz
        );
    }
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => Some(address.0),
        _ => None,
    };
    Ok(ElfImage {
        entry,
        pvh_entry,
        linux_note: has_note_named(image, &header, &[b"Linux"]),
        ranges: segments.iter().map(|s| (s.paddr, s.memsz)).collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 x86-64 image with one PT_LOAD segment holding
    /// `code` at `paddr`, with `bss` extra zero bytes.
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let mut image = vec![0u8; EHDR_SIZE + PHDR_SIZE];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = ELFCLASS64;
        image[5] = ELFDATA2LSB;
        image[6] = 1;
        image[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        image[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        image[20..24].copy_from_slice(&1u32.to_le_bytes());
        image[24..32].copy_from_slice(&paddr.to_le_bytes());
        image[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        image[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        image[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        image[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = EHDR_SIZE;
        let offset = (EHDR_SIZE + PHDR_SIZE) as u64;
        image[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        image[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes());
        image[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        image[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        image[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        image.extend_from_slice(code);
        image
    }

    fn set_u64(image: &mut [u8], at: usize, value: u64) {
        image[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn loads_segment_zeroes_bss_and_enters_long_mode() {
        let ram = GuestRam::new(2).unwrap();
        ram.memory().write_slice(&[0xaa; 16], GuestAddress(0x10_0002)).unwrap();
        let image = tiny_elf(0x10_0000, &[0xf4, 0xeb], 16);
        let loaded = load(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.entry, 0x10_0000);
        assert_eq!(loaded.ranges, vec![(0x10_0000, 18)]);
        assert_eq!(loaded.end(), 0x10_0012);
        assert_eq!(loaded.pvh_entry, None);
        assert!(!loaded.linux_note);
        let mut got = [0u8; 18];
        ram.memory().read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&got[..2], &[0xf4, 0xeb]);
        assert!(got[2..].iter().all(|&b| b == 0), "BSS not zeroed: {got:x?}");
    }

    #[test]
    fn entry_override_must_be_in_ram() {
        let ram = GuestRam::new(2).unwrap();
        let image = tiny_elf(0x10_0000, &[0xf4], 0);
        let options = LoadOptions { entry: Some(0x10_0000_0000), ..Default::default() };
        assert!(matches!(load(&ram, &image, &options), Err(Error::BadEntry { .. })));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let image = tiny_elf(0x10_0000, &[0xf4], 0);
        let err = load(&ram, &image[..40], &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = load(&ram, &image[..EHDR_SIZE + 10], &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("program header table"), "{err}");
    }

    #[test]
    fn non_x86_64_machine_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let mut image = tiny_elf(0x10_0000, &[0xf4], 0);
        image[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        let err = load(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not x86-64"), "{err}");
    }

    #[test]
    fn elf32_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let mut image = tiny_elf(0x10_0000, &[0xf4], 0);
        image[4] = 1;
        let err = load(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("ELFCLASS64"), "{err}");
    }

    #[test]
    fn segment_outside_ram_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let image = tiny_elf(0x40_0000, &[0xf4], 0);
        let err = load(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("does not fit in guest RAM"), "{err}");
    }

    #[test]
    fn segment_with_overflowing_address_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let mut image = tiny_elf(0x10_0000, &[0xf4], 0);
        set_u64(&mut image, EHDR_SIZE + 24, u64::MAX - 1);
        set_u64(&mut image, EHDR_SIZE + 40, 16);
        assert!(matches!(
            load(&ram, &image, &LoadOptions::default()),
            Err(Error::BadSegment { .. })
        ));
    }

    #[test]
    fn segment_past_end_of_file_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let mut image = tiny_elf(0x10_0000, &[0xf4], 0);
        set_u64(&mut image, EHDR_SIZE + 32, 0x1000);
        set_u64(&mut image, EHDR_SIZE + 40, 0x1000);
        let err = load(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("past the end of the file"), "{err}");
    }

    #[test]
    fn segment_over_the_boot_area_is_rejected() {
        let ram = GuestRam::new(2).unwrap();
        let image = tiny_elf(0x9000, &[0xf4], 0);
        let err = load(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("overlaps the VMM's boot structures"), "{err}");
    }
}
