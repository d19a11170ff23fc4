//! ELF images: the one parser and validator of this crate's ELF files, and
//! the loader of ELF64 images.
//!
//! Two kinds of ELF file boot here: ELF64 x86-64 images ([`load`]) and
//! multiboot ELF32 i386 kernels ([`crate::multiboot`]). Both go through
//! [`parse_header`] and [`loadable_segments`]: the header's class, byte order,
//! machine and program header table, then each PT_LOAD segment, parsed from
//! its ELF32 or ELF64 program header into one [`Segment`] and checked by one
//! set of rules ([`check_in_file`], [`check_placement`]): inside the file,
//! inside RAM (per [`Placement`]), clear of the VMM's boot data, not
//! overlapping each other. A multiboot a.out kludge range is checked by the
//! same rules.
//!
//! linux-loader's ELF loader checks neither the machine nor the class, nor
//! that segments fit in RAM, and it leaves BSS as it finds it; [`load`] does
//! that validation first so the user gets a precise error, then zeroes BSS
//! after loading.

use std::io::Cursor;

use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};
use vmm_memory::layout;

use crate::{Error, GuestRam, LoadOptions, Result, SegmentProblem};

pub(crate) const ELFCLASS32: u8 = 1;
pub(crate) const ELFCLASS64: u8 = 2;
pub(crate) const ELFDATA2LSB: u8 = 1;
pub(crate) const EM_386: u16 = 3;
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Everything a 32-bit kernel is handed must lie below 4 GiB.
const FOUR_GIB: u64 = 1 << 32;

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

/// The ELF classes this crate loads, each for one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// ELF32 for i386 (multiboot kernels).
    Elf32,
    /// ELF64 for x86-64.
    Elf64,
}

impl Class {
    /// The size of the file header.
    pub(crate) const fn header_len(self) -> usize {
        match self {
            Class::Elf32 => 52,
            Class::Elf64 => 64,
        }
    }

    /// The size of one program header.
    pub(crate) const fn phdr_len(self) -> usize {
        match self {
            Class::Elf32 => 32,
            Class::Elf64 => 56,
        }
    }

    /// The size of an address or offset field.
    const fn word_len(self) -> usize {
        match self {
            Class::Elf32 => 4,
            Class::Elf64 => 8,
        }
    }

    /// `e_ident[EI_CLASS]`.
    const fn ident(self) -> u8 {
        match self {
            Class::Elf32 => ELFCLASS32,
            Class::Elf64 => ELFCLASS64,
        }
    }

    /// The name of `e_ident[EI_CLASS]`, and why another class is refused.
    const fn describe(self) -> (&'static str, &'static str) {
        match self {
            Class::Elf32 => (
                "ELFCLASS32",
                "a multiboot kernel without the a.out kludge (header flag 16) must be a 32-bit \
                 ELF",
            ),
            Class::Elf64 => ("ELFCLASS64", "only 64-bit x86-64 ELF images are supported"),
        }
    }

    /// `e_machine`, and how an error names it.
    const fn machine(self) -> (u16, &'static str) {
        match self {
            Class::Elf32 => (EM_386, "i386 (EM_386 = 3)"),
            Class::Elf64 => (EM_X86_64, "x86-64 (EM_X86_64 = 62)"),
        }
    }

    /// Reads an address or offset field (`Elf32_Addr`/`Elf64_Addr`).
    fn word_at(self, bytes: &[u8], offset: usize) -> u64 {
        match self {
            Class::Elf32 => u64::from(u32_at(bytes, offset)),
            Class::Elf64 => u64_at(bytes, offset),
        }
    }
}

/// The parts of an ELF file header this crate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The class (and so the machine) of the file.
    pub class: Class,
    /// `e_entry`.
    pub entry: u64,
    /// `e_phoff`.
    pub phoff: u64,
    /// `e_phnum`.
    pub phnum: u16,
}

/// Parses and checks the file header of an ELF image of `class`: long enough,
/// of that class, little-endian, for its machine, with a program header table
/// inside the file.
pub(crate) fn parse_header(image: &[u8], class: Class) -> Result<Header> {
    let header_len = class.header_len();
    let bits = class.word_len() * 8;
    if image.len() < header_len {
        return Err(invalid(format!(
            "truncated: {} bytes is shorter than the {header_len}-byte ELF{bits} header",
            image.len()
        )));
    }
    if image[4] != class.ident() {
        let (name, why) = class.describe();
        return Err(invalid(format!("ELF class {} is not {name}; {why}", image[4])));
    }
    if image[5] != ELFDATA2LSB {
        return Err(invalid("not little-endian"));
    }
    let machine = u16_at(image, 18);
    let (expected, machine_name) = class.machine();
    if machine != expected {
        return Err(invalid(format!("machine {machine} is not {machine_name}")));
    }
    // e_entry and e_phoff follow e_version; e_phentsize and e_phnum follow
    // e_shoff, e_flags and e_ehsize.
    let word = class.word_len();
    let entry = class.word_at(image, 24);
    let phoff = class.word_at(image, 24 + word);
    let phentsize = u16_at(image, 24 + 3 * word + 6);
    let phnum = u16_at(image, 24 + 3 * word + 8);
    if phnum == 0 {
        return Err(invalid("no program headers"));
    }
    let phdr_len = class.phdr_len();
    if usize::from(phentsize) != phdr_len {
        return Err(invalid(format!("program header size {phentsize} is not {phdr_len}")));
    }
    let table_end =
        u64::from(phnum).checked_mul(phdr_len as u64).and_then(|len| len.checked_add(phoff));
    if table_end.is_none_or(|end| end > image.len() as u64) {
        return Err(invalid(format!(
            "truncated: the program header table ({phnum} entries at offset {phoff:#x}) \
             lies past the end of the file ({} bytes)",
            image.len()
        )));
    }
    Ok(Header { class, entry, phoff, phnum })
}

/// A part of the file that goes to a physical address, with BSS after it:
/// an ELF PT_LOAD segment or a multiboot a.out kludge range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The ELF program header index (`None` for an a.out kludge range).
    pub index: Option<usize>,
    /// Offset of its file part in the file.
    pub offset: u64,
    /// The virtual address it is linked at.
    pub vaddr: u64,
    /// The physical address it is loaded at.
    pub paddr: u64,
    /// Bytes from the file.
    pub filesz: u64,
    /// Bytes in memory: the file part, then zeroed BSS.
    pub memsz: u64,
}

/// The program headers of an image whose header [`parse_header`] accepted,
/// each as its `p_type` and the part of the file it describes.
pub(crate) fn program_headers<'a>(
    image: &'a [u8],
    header: &Header,
) -> impl Iterator<Item = (u32, Segment)> + 'a {
    let Header { class, phoff, phnum, .. } = *header;
    (0..usize::from(phnum)).map(move |index| {
        // In range: parse_header checked the whole table lies in the file.
        let at = phoff as usize + index * class.phdr_len();
        // ELF64 has p_flags after p_type; ELF32 has it after p_memsz. Then
        // p_offset, p_vaddr, p_paddr, p_filesz and p_memsz, one word each.
        let fields = at + if class == Class::Elf64 { 8 } else { 4 };
        let field = |n: usize| class.word_at(image, fields + n * class.word_len());
        let segment = Segment {
            index: Some(index),
            offset: field(0),
            vaddr: field(1),
            paddr: field(2),
            filesz: field(3),
            memsz: field(4),
        };
        (u32_at(image, at), segment)
    })
}

impl Segment {
    /// The error saying why this segment cannot be loaded.
    pub(crate) fn error(&self, reason: SegmentProblem) -> Error {
        match self.index {
            Some(index) => Error::BadSegment { index, addr: self.paddr, size: self.memsz, reason },
            None => Error::BadLoadRange { addr: self.paddr, size: self.memsz, reason },
        }
    }

    /// The end (exclusive) of its memory.
    pub(crate) fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// Where a loader may place segments. Whatever the placement, a segment
/// must stay clear of the VMM's boot data and of the other segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Anywhere in guest RAM (ELF64 images).
    Ram,
    /// Below 4 GiB, in RAM the guest's memory map lists (multiboot kernels,
    /// which learn their memory from that map).
    MappedRamBelow4Gib,
}

/// Checks a segment against the file: its file part is no larger than its
/// memory and lies inside the file.
pub(crate) fn check_in_file(segment: &Segment, image_len: usize) -> Result<()> {
    if segment.filesz > segment.memsz {
        return Err(segment.error(SegmentProblem::FileLargerThanMemory { filesz: segment.filesz }));
    }
    if segment.offset.checked_add(segment.filesz).is_none_or(|end| end > image_len as u64) {
        return Err(segment.error(SegmentProblem::PastEndOfFile {
            filesz: segment.filesz,
            offset: segment.offset,
            file_len: image_len as u64,
        }));
    }
    Ok(())
}

/// Checks where a segment goes: inside RAM as `placement` says, clear of the
/// VMM's boot data ([`layout::BOOT_DATA_RANGES`]), not overlapping any of
/// `placed`.
pub(crate) fn check_placement(
    ram: &GuestRam,
    segment: &Segment,
    placed: &[Segment],
    placement: Placement,
) -> Result<()> {
    let (start, len) = (segment.paddr, segment.memsz);
    match placement {
        Placement::Ram => {
            if !ram.contains_range(start, len) {
                return Err(
                    segment.error(SegmentProblem::DoesNotFitInRam { ram: ram.size_bytes() })
                );
            }
        }
        Placement::MappedRamBelow4Gib => {
            if start.checked_add(len).is_none_or(|end| end > FOUR_GIB) {
                return Err(segment.error(SegmentProblem::Above4Gib));
            }
            if !ram.contains_range(start, len) {
                return Err(segment.error(SegmentProblem::OutsideRam { ram: ram.size_bytes() }));
            }
            if !crate::in_usable_ram(ram, start, len) {
                return Err(segment.error(SegmentProblem::ReservedInMemoryMap {
                    start: layout::EBDA_START,
                    end: layout::HIGH_MEMORY_START,
                }));
            }
        }
    }
    // In range: the segment lies in RAM, so its end does not overflow.
    let end = segment.end();
    if let Some(&(from, to, what)) =
        layout::BOOT_DATA_RANGES.iter().find(|(from, to, _)| start < *to && *from < end)
    {
        return Err(segment.error(SegmentProblem::OverlapsBootData { what, start: from, end: to }));
    }
    if let Some(other) = placed.iter().find(|other| start < other.end() && other.paddr < end) {
        return Err(segment.error(match other.index {
            Some(index) => SegmentProblem::OverlapsSegment(index),
            None => SegmentProblem::OverlapsRange,
        }));
    }
    Ok(())
}

/// Reads and checks the PT_LOAD segments, in program header order: each
/// inside the file ([`check_in_file`]) and, unless it is empty (which loads
/// nothing and is left out), placed as `placement` says
/// ([`check_placement`]). At least one must have contents.
pub(crate) fn loadable_segments(
    ram: &GuestRam,
    image: &[u8],
    header: &Header,
    placement: Placement,
) -> Result<Vec<Segment>> {
    let mut segments: Vec<Segment> = Vec::new();
    for (kind, segment) in program_headers(image, header) {
        if kind != PT_LOAD {
            continue;
        }
        check_in_file(&segment, image.len())?;
        if segment.memsz == 0 {
            continue;
        }
        check_placement(ram, &segment, &segments, placement)?;
        segments.push(segment);
    }
    if segments.is_empty() {
        return Err(invalid("no loadable (PT_LOAD) segment with contents"));
    }
    Ok(segments)
}

/// Writes zeroes over a segment's BSS (its memory past its file part).
pub(crate) fn zero_bss(ram: &GuestRam, segment: &Segment) -> Result<()> {
    static ZEROES: [u8; 0x1_0000] = [0; 0x1_0000];
    let mut address = segment.paddr + segment.filesz;
    let end = segment.end();
    while address < end {
        let len = (end - address).min(ZEROES.len() as u64);
        ram.memory().write_slice(&ZEROES[..len as usize], GuestAddress(address))?;
        address += len;
    }
    Ok(())
}

/// Writes a checked segment into guest memory: its file part, then zeroed
/// BSS.
pub(crate) fn write_segment(ram: &GuestRam, image: &[u8], segment: &Segment) -> Result<()> {
    // In range: check_in_file compared the end with the file.
    let start = segment.offset as usize;
    let contents = &image[start..start + segment.filesz as usize];
    ram.memory().write_slice(contents, GuestAddress(segment.paddr))?;
    zero_bss(ram, segment)
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
    let align4 = |n: usize| n.div_ceil(4) * 4;
    program_headers(image, header).any(|(kind, segment)| {
        if kind != PT_NOTE {
            return false;
        }
        let (Ok(offset), Ok(size)) =
            (usize::try_from(segment.offset), usize::try_from(segment.filesz))
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

/// Validates an ELF64 x86-64 image, has linux-loader load it and zeroes its
/// BSS.
pub(crate) fn load(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<ElfImage> {
    let header = parse_header(image, Class::Elf64)?;
    let segments = loadable_segments(ram, image, &header, Placement::Ram)?;
    let entry = options.entry.unwrap_or(header.entry);
    if !ram.contains_range(entry, 1) {
        return Err(Error::BadEntry { entry, reason: "it is outside guest RAM" });
    }
    let result = Elf::load(ram.memory(), None, &mut Cursor::new(image), None)?;
    for segment in &segments {
        // linux-loader copies p_filesz bytes; the rest of p_memsz is BSS.
        zero_bss(ram, segment)?;
        log::debug!(
            "ELF segment {}: {:#x} bytes at {:#x} ({:#x} from file)",
            segment.index.unwrap_or_default(),
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

    const EHDR_SIZE: usize = Class::Elf64.header_len();
    const PHDR_SIZE: usize = Class::Elf64.phdr_len();

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
    fn a_bss_larger_than_the_zero_buffer_is_zeroed_to_its_end() {
        let ram = GuestRam::new(2).unwrap();
        let bss = 0x2_0123;
        ram.memory().write_slice(&vec![0xaa; bss + 1], GuestAddress(0x10_0001)).unwrap();
        let image = tiny_elf(0x10_0000, &[0xf4], bss as u64);
        load(&ram, &image, &LoadOptions::default()).unwrap();
        let mut got = vec![0u8; bss + 1];
        ram.memory().read_slice(&mut got, GuestAddress(0x10_0001)).unwrap();
        assert!(got[..bss].iter().all(|&b| b == 0), "BSS not zeroed");
        assert_eq!(got[bss], 0xaa, "zeroed past the BSS");
    }

    #[test]
    fn elf32_and_elf64_program_headers_parse_into_the_same_fields() {
        let image = tiny_elf(0x10_0000, &[0xf4], 0x10);
        let header = parse_header(&image, Class::Elf64).unwrap();
        assert_eq!(header, Header { class: Class::Elf64, entry: 0x10_0000, phoff: 64, phnum: 1 });
        let expected = Segment {
            index: Some(0),
            offset: 120,
            vaddr: 0x10_0000,
            paddr: 0x10_0000,
            filesz: 1,
            memsz: 0x11,
        };
        assert_eq!(program_headers(&image, &header).collect::<Vec<_>>(), vec![(PT_LOAD, expected)]);

        let mut image = vec![0u8; 52 + 32];
        image[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        image[18..20].copy_from_slice(&EM_386.to_le_bytes());
        for (at, value) in [(24, 0xc010_0000u32), (28, 52)] {
            image[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        image[42..44].copy_from_slice(&32u16.to_le_bytes());
        image[44..46].copy_from_slice(&1u16.to_le_bytes());
        for (at, value) in [(0, PT_LOAD), (4, 84), (8, 0xc010_0000), (12, 0x10_0000), (16, 1)] {
            image[52 + at..52 + at + 4].copy_from_slice(&value.to_le_bytes());
        }
        image[52 + 20..52 + 24].copy_from_slice(&0x11u32.to_le_bytes());
        image.push(0xf4);
        let header = parse_header(&image, Class::Elf32).unwrap();
        assert_eq!(header, Header { class: Class::Elf32, entry: 0xc010_0000, phoff: 52, phnum: 1 });
        let expected = Segment { offset: 84, vaddr: 0xc010_0000, ..expected };
        assert_eq!(program_headers(&image, &header).collect::<Vec<_>>(), vec![(PT_LOAD, expected)]);
        // The one parser refuses the other class with the reason of each.
        let err = parse_header(&image, Class::Elf64).unwrap_err();
        assert!(err.to_string().contains("only 64-bit x86-64"), "{err}");
        let err = parse_header(&tiny_elf(0x10_0000, &[0xf4], 0), Class::Elf32).unwrap_err();
        assert!(err.to_string().contains("must be a 32-bit ELF"), "{err}");
    }

    #[test]
    fn placements_differ_only_in_where_ram_is() {
        let ram = GuestRam::new(2).unwrap();
        let problem =
            |segment: &Segment, placement| match check_placement(&ram, segment, &[], placement)
                .unwrap_err()
            {
                Error::BadSegment { index: 1, reason, .. } => reason,
                other => panic!("{other}"),
            };
        let segment =
            Segment { index: Some(1), offset: 0, vaddr: 0, paddr: 0x40_0000, filesz: 0, memsz: 16 };
        assert_eq!(
            problem(&segment, Placement::Ram),
            SegmentProblem::DoesNotFitInRam { ram: 2 << 20 }
        );
        assert_eq!(
            problem(&segment, Placement::MappedRamBelow4Gib),
            SegmentProblem::OutsideRam { ram: 2 << 20 }
        );
        let across_4gib = Segment { paddr: 0xffff_fff0, memsz: 0x20, ..segment };
        assert!(matches!(
            problem(&across_4gib, Placement::Ram),
            SegmentProblem::DoesNotFitInRam { .. }
        ));
        assert_eq!(problem(&across_4gib, Placement::MappedRamBelow4Gib), SegmentProblem::Above4Gib);
        let range = Segment { index: None, paddr: 0x10_0000, ..segment };
        let later = Segment { paddr: 0x10_0008, ..segment };
        for placement in [Placement::Ram, Placement::MappedRamBelow4Gib] {
            let err = check_placement(&ram, &later, &[range], placement).unwrap_err();
            assert_eq!(
                err.to_string(),
                "ELF segment 1 (0x10 bytes at physical 0x100008) overlaps another segment"
            );
        }
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
