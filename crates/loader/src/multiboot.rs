//! Multiboot v1 kernels (Multiboot Specification 0.6.96), as `qemu -kernel`
//! and GRUB's `multiboot` command start them.
//!
//! The header (section 3.1) is a 32-bit aligned magic in the first 8192
//! bytes with flags and a checksum. Without flag 16 the image is an ELF32
//! i386 file whose PT_LOAD segments go to their physical addresses; with
//! flag 16 (the "a.out kludge") the header's own addresses say which part of
//! the file goes where, so any format (a flat binary, an ELF64) can boot.
//!
//! The kernel starts in 32-bit protected mode, paging off, with EAX =
//! [`BOOTLOADER_MAGIC`] and EBX = the multiboot information (section 3.3) at
//! [`layout::MULTIBOOT_INFO_START`]: memory sizes, command line, modules
//! (the initrd as module 0), the memory map and the boot loader's name.
//! Left out: boot device, a.out symbols and ELF section headers (flags 4
//! and 5), drives, the ROM configuration table, APM and VBE/framebuffer
//! information; a header asking for a video mode (flag 2) is logged and
//! otherwise ignored.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{GuestRam, MemoryKind, layout};

use crate::elf::{self, Class, Placement, Segment, u32_at};
use crate::{
    BootProtocol, EntryPoint, Error, ImageFormat, LoadOption, LoadOptions, LoadedImage, Result,
    in_usable_ram, read_image,
};

/// The magic of a multiboot header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// What a multiboot loader leaves in EAX for the kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie entirely within this many bytes of the image.
const SEARCH_LEN: usize = 8192;
/// magic, flags, checksum.
const HEADER_LEN: usize = 12;
/// ... then header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
const KLUDGE_HEADER_LEN: usize = 32;

/// Header flag 0: modules must be page-aligned (they always are here).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag 1: the kernel needs mem_* and the memory map (always given).
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag 2: the kernel wants a video mode (not supported: no graphics).
const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag 16: the address fields of the header are valid.
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Flags 0-15 are requirements: a loader that cannot meet one must refuse.
const REQUIRED_FLAGS: u32 = 0xffff;

/// Information flags (section 3.3) this loader sets.
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
/// The information structure of 0.6.96 ends after vbe_interface_len.
const INFO_LEN: usize = 88;
const INFO_MEM_LOWER: usize = 4;
const INFO_MEM_UPPER: usize = 8;
const INFO_CMDLINE_PTR: usize = 16;
const INFO_MODS_COUNT: usize = 20;
const INFO_MODS_ADDR: usize = 24;
const INFO_MMAP_LENGTH: usize = 44;
const INFO_MMAP_ADDR: usize = 48;
const INFO_BOOT_LOADER_NAME_PTR: usize = 64;
/// A memory map entry: size (u32, not counting itself), base, length, type.
const MMAP_ENTRY_LEN: usize = 24;
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
const BOOT_LOADER_NAME: &str = "vmm";

/// Lower memory ends at 640 KiB at most.
const LOWER_MEMORY_MAX: u64 = 640 << 10;
const PAGE_SIZE: u64 = 0x1000;

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidMultiboot(message.into())
}

/// Converts an address the kernel is handed into its 32-bit form (every
/// caller has checked it lies below 4 GiB).
fn addr32(address: u64) -> u32 {
    u32::try_from(address).unwrap_or(u32::MAX)
}

/// The address fields of a header with flag 16 (the a.out kludge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AoutKludge {
    /// Where the header itself is to be loaded.
    pub header_addr: u32,
    /// Where the first loaded byte goes.
    pub load_addr: u32,
    /// End of the loaded bytes (0: to the end of the file).
    pub load_end_addr: u32,
    /// End of the BSS (0: none).
    pub bss_end_addr: u32,
    /// The entry point.
    pub entry_addr: u32,
}

/// A multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its offset in the file.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// The address fields, when flag 16 is set.
    pub kludge: Option<AoutKludge>,
}

impl Header {
    /// Looks for the header: `None` when no 32-bit aligned magic lies in the
    /// first 8192 bytes, an error when the first one found is not a valid
    /// header (bad checksum, truncated, unsupported requirements).
    pub(crate) fn find(image: &[u8]) -> Option<Result<Header>> {
        let window = &image[..image.len().min(SEARCH_LEN)];
        let offset = (0..window.len().saturating_sub(HEADER_LEN - 1))
            .step_by(4)
            .find(|&offset| u32_at(window, offset) == HEADER_MAGIC)?;
        Some(Header::parse(window, offset))
    }

    fn parse(window: &[u8], offset: usize) -> Result<Header> {
        let flags = u32_at(window, offset + 4);
        let checksum = u32_at(window, offset + 8);
        let expected = HEADER_MAGIC.wrapping_add(flags).wrapping_neg();
        if checksum != expected {
            return Err(Error::BadMultibootChecksum { offset, checksum, expected });
        }
        let unsupported =
            flags & REQUIRED_FLAGS & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE);
        if unsupported != 0 {
            return Err(invalid(format!(
                "the header (flags {flags:#x}) requires features this loader lacks \
                 (flags {unsupported:#x})"
            )));
        }
        let kludge = if flags & FLAG_AOUT_KLUDGE != 0 {
            if offset + KLUDGE_HEADER_LEN > window.len() {
                return Err(invalid(format!(
                    "the header at offset {offset:#x} sets flag 16 but its address fields end \
                     past the first {} bytes of the image",
                    window.len()
                )));
            }
            let field = |index: usize| u32_at(window, offset + HEADER_LEN + 4 * index);
            Some(AoutKludge {
                header_addr: field(0),
                load_addr: field(1),
                load_end_addr: field(2),
                bss_end_addr: field(3),
                entry_addr: field(4),
            })
        } else {
            None
        };
        Ok(Header { offset, flags, kludge })
    }
}

/// Decides whether an image boots through multiboot.
///
/// With `--boot multiboot` the image must carry a valid header. With
/// `--boot auto` a raw image or an ELF32 with a header is multiboot (a
/// broken header is then an error); an ELF64 is multiboot only when its
/// header uses the a.out kludge and it has no PVH or Linux note, which would
/// make it a Linux kernel. A bzImage never is.
pub(crate) fn select(
    image: &[u8],
    format: ImageFormat,
    boot: BootProtocol,
) -> Result<Option<Header>> {
    let found = Header::find(image);
    match boot {
        BootProtocol::Multiboot => match found {
            Some(header) => header.map(Some),
            None => Err(Error::WrongProtocol {
                protocol: BootProtocol::Multiboot.name(),
                reason: "the image has no multiboot header in its first 8192 bytes",
            }),
        },
        BootProtocol::Auto => {
            let Some(found) = found else { return Ok(None) };
            let elf64 = format == ImageFormat::Elf && image.get(4) == Some(&elf::ELFCLASS64);
            match format {
                ImageFormat::BzImage => Ok(None),
                _ if elf64 => match found {
                    Ok(header) if header.kludge.is_some() && !has_linux_or_xen_note(image) => {
                        Ok(Some(header))
                    }
                    Ok(_) => Ok(None),
                    Err(err) => {
                        log::debug!("ignoring the ELF64 image's multiboot header: {err}");
                        Ok(None)
                    }
                },
                _ => found.map(Some),
            }
        }
        _ => Ok(None),
    }
}

/// Whether an ELF64 image has a PT_NOTE note named "Linux" (every vmlinux)
/// or "Xen" (the PVH entry): such an image boots as Linux, not multiboot.
fn has_linux_or_xen_note(image: &[u8]) -> bool {
    elf::parse_header(image, Class::Elf64)
        .is_ok_and(|header| elf::has_note_named(image, &header, &[b"Linux", b"Xen"]))
}

/// The a.out kludge: the header's fields say which part of the file goes
/// where.
fn kludge_segment(image: &[u8], header: &Header, kludge: &AoutKludge) -> Result<Segment> {
    let header_addr = u64::from(kludge.header_addr);
    let load_addr = u64::from(kludge.load_addr);
    if load_addr > header_addr {
        return Err(invalid(format!(
            "load_addr {load_addr:#x} lies above header_addr {header_addr:#x}"
        )));
    }
    // The file offset of load_addr: the header sits header_addr - load_addr
    // bytes into the loaded range.
    let offset = (header.offset as u64).checked_sub(header_addr - load_addr).ok_or_else(|| {
        invalid(format!(
            "header_addr {header_addr:#x} - load_addr {load_addr:#x} is more than the header's \
             offset in the file ({:#x})",
            header.offset
        ))
    })?;
    let load_end = match kludge.load_end_addr {
        0 => load_addr + (image.len() as u64 - offset),
        end => u64::from(end),
    };
    let bss_end = match kludge.bss_end_addr {
        0 => load_end,
        end => u64::from(end),
    };
    if load_end < load_addr || bss_end < load_end {
        return Err(invalid(format!(
            "load_addr {load_addr:#x}, load_end_addr {load_end:#x} and bss_end_addr \
             {bss_end:#x} are not in ascending order"
        )));
    }
    Ok(Segment {
        index: None,
        offset,
        vaddr: load_addr,
        paddr: load_addr,
        filesz: load_end - load_addr,
        memsz: bss_end - load_addr,
    })
}

/// The segments of a multiboot kernel, checked, and its entry point.
fn checked_segments(
    ram: &GuestRam,
    image: &[u8],
    format: ImageFormat,
    header: &Header,
) -> Result<(Vec<Segment>, u64)> {
    match (&header.kludge, format) {
        (Some(kludge), _) => {
            let segment = kludge_segment(image, header, kludge)?;
            elf::check_in_file(&segment, image.len())?;
            elf::check_placement(ram, &segment, &[], Placement::MappedRamBelow4Gib)?;
            Ok((vec![segment], u64::from(kludge.entry_addr)))
        }
        (None, ImageFormat::Elf) => elf32_segments(ram, image),
        (None, _) => Err(invalid(
            "the image is not ELF, so its header must give the load addresses \
             (the a.out kludge, header flag 16)",
        )),
    }
}

/// An ELF32 i386 image: its PT_LOAD segments and entry point (translated
/// from virtual to physical through the segment that holds it, as GRUB does
/// for kernels linked at a virtual address).
fn elf32_segments(ram: &GuestRam, image: &[u8]) -> Result<(Vec<Segment>, u64)> {
    let header = elf::parse_header(image, Class::Elf32)?;
    let segments = elf::loadable_segments(ram, image, &header, Placement::MappedRamBelow4Gib)?;
    let mut entry = header.entry;
    for segment in &segments {
        if let Some(offset) = header.entry.checked_sub(segment.vaddr).filter(|o| *o < segment.memsz)
        {
            entry = segment.paddr + offset;
        }
    }
    Ok((segments, entry))
}

/// Places the module at the first page boundary after `image_end` where it
/// fits in one RAM entry of the memory map, below 4 GiB, and loads it.
fn load_module(ram: &GuestRam, path: &Path, image_end: u64) -> Result<(u64, u64)> {
    let from = image_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let to = ram.low_ram_end();
    let metadata =
        std::fs::metadata(path).map_err(|source| Error::Open { path: path.to_owned(), source })?;
    if !metadata.is_file() {
        return Err(Error::NotAFile(path.to_owned()));
    }
    let size = metadata.len();
    let address = ram
        .e820_map()
        .iter()
        .filter(|e| e.kind == MemoryKind::Ram)
        .map(|e| from.max(e.start.div_ceil(PAGE_SIZE) * PAGE_SIZE))
        .find(|&start| start.saturating_add(size) <= to && in_usable_ram(ram, start, size.max(1)));
    let Some(address) = address else {
        return Err(Error::ModuleDoesNotFit { path: path.to_owned(), size, from, to });
    };
    // Read only once it is known to fit (read_image refuses empty files,
    // which are valid modules).
    let bytes = if size == 0 { Vec::new() } else { read_image(path, ram.size_bytes())? };
    if bytes.len() as u64 != size {
        let changed = std::io::Error::other("the file changed size while being read");
        return Err(Error::Read { path: path.to_owned(), source: changed });
    }
    ram.memory().write_slice(&bytes, GuestAddress(address))?;
    log::info!("multiboot module 0: {} ({size} bytes) at {address:#x}", path.display());
    Ok((address, size))
}

/// The strings of the information structure, packed from
/// [`layout::MULTIBOOT_STRINGS_START`].
#[derive(Debug, Default)]
struct Strings(Vec<u8>);

impl Strings {
    /// Adds a NUL-terminated string and returns its guest address.
    fn add(&mut self, text: &str) -> u32 {
        let address = layout::MULTIBOOT_STRINGS_START + self.0.len() as u64;
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
        addr32(address)
    }
}

/// The information structure and what it points to, as
/// (guest address, bytes) to write.
pub(crate) fn build_info(
    ram: &GuestRam,
    cmdline: &str,
    module: Option<(u64, u64, &str)>,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut info = vec![0u8; INFO_LEN];
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_BOOT_LOADER_NAME;
    let map = ram.e820_map();
    let ram_entry_at = |start: u64| {
        map.iter().find(|e| e.kind == MemoryKind::Ram && e.start == start).map_or(0, |e| e.size)
    };
    let mem_lower = ram_entry_at(0).min(LOWER_MEMORY_MAX) >> 10;
    let mem_upper = (ram_entry_at(layout::HIGH_MEMORY_START) >> 10).min(u64::from(u32::MAX));
    put_u32(&mut info, INFO_MEM_LOWER, addr32(mem_lower));
    put_u32(&mut info, INFO_MEM_UPPER, addr32(mem_upper));

    let mut strings = Strings::default();
    put_u32(&mut info, INFO_BOOT_LOADER_NAME_PTR, strings.add(BOOT_LOADER_NAME));
    let mut modules = Vec::new();
    if let Some((start, size, name)) = module {
        flags |= INFO_MODS;
        let name = strings.add(name);
        for value in [addr32(start), addr32(start + size), name, 0] {
            modules.extend_from_slice(&value.to_le_bytes());
        }
        put_u32(&mut info, INFO_MODS_COUNT, 1);
        put_u32(&mut info, INFO_MODS_ADDR, addr32(layout::MULTIBOOT_MODS_START));
    }
    put_u32(&mut info, INFO_CMDLINE_PTR, strings.add(cmdline));
    let room = layout::MULTIBOOT_AREA_END - layout::MULTIBOOT_STRINGS_START;
    if strings.0.len() as u64 > room {
        return Err(Error::MultibootInfoTooLarge { needed: strings.0.len() as u64, room });
    }

    let mut mmap = Vec::with_capacity(map.len() * MMAP_ENTRY_LEN);
    for entry in &map {
        mmap.extend_from_slice(&MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
        mmap.extend_from_slice(&entry.start.to_le_bytes());
        mmap.extend_from_slice(&entry.size.to_le_bytes());
        mmap.extend_from_slice(&entry.kind.e820_type().to_le_bytes());
    }
    if mmap.len() as u64 > layout::MULTIBOOT_MODS_START - layout::MULTIBOOT_MMAP_START {
        return Err(Error::BootParams(format!(
            "the memory map has {} entries, too many for the multiboot information area",
            map.len()
        )));
    }
    put_u32(&mut info, INFO_MMAP_LENGTH, addr32(mmap.len() as u64));
    put_u32(&mut info, INFO_MMAP_ADDR, addr32(layout::MULTIBOOT_MMAP_START));
    put_u32(&mut info, 0, flags);
    Ok(vec![
        (layout::MULTIBOOT_INFO_START, info),
        (layout::MULTIBOOT_MMAP_START, mmap),
        (layout::MULTIBOOT_MODS_START, modules),
        (layout::MULTIBOOT_STRINGS_START, strings.0),
    ])
}

/// Loads a multiboot kernel (its header found by [`select`]), its module,
/// and the multiboot information.
pub(crate) fn load(
    ram: &GuestRam,
    image: &[u8],
    format: ImageFormat,
    header: &Header,
    options: &LoadOptions,
) -> Result<LoadedImage> {
    if options.load_addr.is_some() {
        return Err(Error::OptionNotForFormat {
            option: LoadOption::LoadAddr,
            format: "multiboot",
        });
    }
    if header.flags & FLAG_VIDEO_MODE != 0 {
        log::warn!("the multiboot kernel asks for a video mode (header flag 2): ignored, no VBE");
    }
    let (segments, entry) = checked_segments(ram, image, format, header)?;
    let entry = options.entry.unwrap_or(entry);
    let eip = u32::try_from(entry)
        .ok()
        .filter(|_| ram.contains_range(entry, 1))
        .ok_or(Error::BadEntry { entry, reason: "it is outside guest RAM below 4 GiB" })?;

    for segment in &segments {
        elf::write_segment(ram, image, segment)?;
        log::debug!(
            "multiboot: {:#x} bytes at {:#x} ({:#x} from file offset {:#x})",
            segment.memsz,
            segment.paddr,
            segment.filesz,
            segment.offset
        );
    }
    let mut ranges: Vec<(u64, u64)> = segments.iter().map(|s| (s.paddr, s.memsz)).collect();
    let image_end = segments.iter().map(Segment::end).max().unwrap_or(0);
    let mut module = None;
    if let Some(path) = options.initrd.as_deref() {
        let (start, size) = load_module(ram, path, image_end)?;
        ranges.push((start, size));
        // The module's string is its file name as given.
        module = Some((start, size, path.to_string_lossy()));
    }
    let module = module.as_ref().map(|(start, size, name)| (*start, *size, name.as_ref()));
    let cmdline = options.cmdline.as_deref().unwrap_or("");
    for (address, bytes) in build_info(ram, cmdline, module)? {
        ram.memory().write_slice(&bytes, GuestAddress(address))?;
    }
    log::info!(
        "multiboot kernel: entry {eip:#x}, information at {:#x}",
        layout::MULTIBOOT_INFO_START
    );
    Ok(LoadedImage {
        format,
        protocol: BootProtocol::Multiboot,
        entry: EntryPoint::ProtectedMode {
            eip,
            ebx: addr32(layout::MULTIBOOT_INFO_START),
            eax: BOOTLOADER_MAGIC,
        },
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{ELFCLASS32, ELFDATA2LSB, EM_386, PT_LOAD};
    use crate::load_bytes;

    const ELF_HEADER32_LEN: usize = Class::Elf32.header_len();
    const ELF_PHDR32_LEN: usize = Class::Elf32.phdr_len();

    /// A multiboot header with `flags` and a right checksum, followed by the
    /// a.out kludge fields when given.
    fn header(flags: u32, kludge: Option<[u32; 5]>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [HEADER_MAGIC, flags, HEADER_MAGIC.wrapping_add(flags).wrapping_neg()] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        for value in kludge.into_iter().flatten() {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// A minimal ELF32 i386 image with one PT_LOAD segment holding `code`
    /// (at file offset 84, so 4-byte aligned) at `paddr` (virtual `vaddr`),
    /// with `bss` extra zero bytes and the entry at virtual `entry`.
    fn tiny_elf32(paddr: u32, vaddr: u32, entry: u32, code: &[u8], bss: u32) -> Vec<u8> {
        let mut image = vec![0u8; ELF_HEADER32_LEN + ELF_PHDR32_LEN];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = ELFCLASS32;
        image[5] = ELFDATA2LSB;
        image[6] = 1;
        let mut put16 =
            |at: usize, value: u16| image[at..at + 2].copy_from_slice(&value.to_le_bytes());
        put16(16, 2); // ET_EXEC
        put16(18, EM_386);
        put16(40, ELF_HEADER32_LEN as u16);
        put16(42, ELF_PHDR32_LEN as u16);
        put16(44, 1);
        put_u32(&mut image, 20, 1);
        put_u32(&mut image, 24, entry);
        put_u32(&mut image, 28, ELF_HEADER32_LEN as u32);
        let ph = ELF_HEADER32_LEN;
        let len = code.len() as u32;
        for (at, value) in [
            (0, PT_LOAD),
            (4, (ELF_HEADER32_LEN + ELF_PHDR32_LEN) as u32),
            (8, vaddr),
            (12, paddr),
            (16, len),
            (20, len + bss),
            (24, 7),
        ] {
            put_u32(&mut image, ph + at, value);
        }
        image.extend_from_slice(code);
        image
    }

    /// A multiboot ELF32 kernel at 1 MiB: header, then `hlt`.
    fn kernel(bss: u32) -> Vec<u8> {
        let mut code = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, None);
        code.push(0xf4);
        tiny_elf32(0x10_0000, 0x10_0000, 0x10_000c, &code, bss)
    }

    fn read(ram: &GuestRam, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        ram.memory().read_slice(&mut bytes, GuestAddress(address)).unwrap();
        bytes
    }

    fn read_u32(ram: &GuestRam, address: u64) -> u32 {
        ram.memory().read_obj(GuestAddress(address)).unwrap()
    }

    fn read_string(ram: &GuestRam, address: u32) -> String {
        let bytes = read(ram, u64::from(address), 256);
        let end = bytes.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(bytes[..end].to_vec()).unwrap()
    }

    fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("vmm-multiboot-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn header_is_found_4_byte_aligned_within_8192_bytes() {
        let mut image = vec![0u8; 0x2000];
        image[0x1ff0..0x1ffc].copy_from_slice(&header(0, None));
        let found = Header::find(&image).unwrap().unwrap();
        assert_eq!(found, Header { offset: 0x1ff0, flags: 0, kludge: None });
        // Not 4-byte aligned: not a header.
        let mut image = vec![0u8; 0x100];
        image[0x22..0x2e].copy_from_slice(&header(0, None));
        assert!(Header::find(&image).is_none());
        // Past the first 8192 bytes: not a header.
        let mut image = vec![0u8; 0x3000];
        image[0x2000..0x200c].copy_from_slice(&header(0, None));
        assert!(Header::find(&image).is_none());
        // Cut short: the magic alone is not a header.
        assert!(Header::find(&header(0, None)[..8]).is_none());
    }

    #[test]
    fn a_bad_checksum_is_an_error_naming_it() {
        let mut image = header(FLAG_MEMORY_INFO, None);
        image[8] ^= 1;
        let err = Header::find(&image).unwrap().unwrap_err();
        assert!(matches!(err, Error::BadMultibootChecksum { offset: 0, .. }), "{err}");
        assert!(
            err.to_string().starts_with("bad multiboot header checksum at offset 0x0"),
            "{err}"
        );
        let ram = GuestRam::new(2).unwrap();
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("bad multiboot header checksum"), "{err}");
    }

    #[test]
    fn unsupported_requirements_are_refused_and_video_mode_is_ignored() {
        let err = Header::find(&header(1 << 3, None)).unwrap().unwrap_err();
        assert!(err.to_string().contains("requires features this loader lacks (flags 0x8)"));
        let found = Header::find(&header(FLAG_VIDEO_MODE | 1 << 20, None)).unwrap().unwrap();
        assert_eq!(found.flags, FLAG_VIDEO_MODE | 1 << 20);
    }

    #[test]
    fn kludge_fields_must_be_in_the_image() {
        let image = header(FLAG_AOUT_KLUDGE, None);
        let err = Header::find(&image).unwrap().unwrap_err();
        assert!(err.to_string().contains("address fields end past"), "{err}");
    }

    #[test]
    fn elf32_kernel_loads_and_starts_with_the_multiboot_registers() {
        let ram = GuestRam::new(4).unwrap();
        ram.memory().write_slice(&[0xaa; 32], GuestAddress(0x10_000d)).unwrap();
        let loaded = load_bytes(&ram, &kernel(16), &LoadOptions::default()).unwrap();
        assert_eq!(loaded.format, ImageFormat::Elf);
        assert_eq!(loaded.protocol, BootProtocol::Multiboot);
        assert_eq!(
            loaded.entry,
            EntryPoint::ProtectedMode { eip: 0x10_000c, ebx: 0x8000, eax: 0x2bad_b002 }
        );
        assert_eq!(loaded.ranges, vec![(0x10_0000, 13 + 16)]);
        let memory = read(&ram, 0x10_0000, 13 + 16 + 1);
        assert_eq!(&memory[..4], &HEADER_MAGIC.to_le_bytes());
        assert_eq!(memory[12], 0xf4);
        assert!(memory[13..29].iter().all(|&b| b == 0), "BSS not zeroed: {memory:x?}");
        assert_eq!(memory[29], 0xaa);
        assert!(BootProtocol::Multiboot.wants_pc_machine());
        assert!(!BootProtocol::Multiboot.is_linux());
    }

    #[test]
    fn elf32_entry_is_translated_from_virtual_to_physical() {
        let mut code = header(0, None);
        code.push(0xf4);
        let image = tiny_elf32(0x10_0000, 0xc010_0000, 0xc010_000c, &code, 0);
        let ram = GuestRam::new(4).unwrap();
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert!(matches!(loaded.entry, EntryPoint::ProtectedMode { eip: 0x10_000c, .. }));
    }

    #[test]
    fn info_structure_has_memory_cmdline_module_mmap_and_loader_name() {
        let ram = GuestRam::new(128).unwrap();
        let module = temp_file("module", b"module text\n");
        let options = LoadOptions {
            cmdline: Some("hello multiboot".into()),
            initrd: Some(module.clone()),
            ..Default::default()
        };
        let loaded = load_bytes(&ram, &kernel(0x1000), &options).unwrap();
        std::fs::remove_file(&module).unwrap();
        let info = layout::MULTIBOOT_INFO_START;
        let field = |offset: usize| read_u32(&ram, info + offset as u64);
        assert_eq!(field(0), 0x24d, "flags: memory, cmdline, mods, mmap, boot loader name");
        assert_eq!(field(INFO_MEM_LOWER), 639);
        assert_eq!(field(INFO_MEM_UPPER), 127 * 1024);
        assert_eq!(read_string(&ram, field(INFO_CMDLINE_PTR)), "hello multiboot");
        assert_eq!(read_string(&ram, field(INFO_BOOT_LOADER_NAME_PTR)), "vmm");
        assert_eq!(field(12), 0, "no boot device");
        // Module 0: page-aligned after the kernel's end (0x10_100d).
        assert_eq!((field(INFO_MODS_COUNT), field(INFO_MODS_ADDR)), (1, 0x8180));
        let module_entry = |index: u64| read_u32(&ram, 0x8180 + 4 * index);
        assert_eq!((module_entry(0), module_entry(1)), (0x10_2000, 0x10_200c));
        assert_eq!(read_string(&ram, module_entry(2)), module.to_string_lossy());
        assert_eq!(module_entry(3), 0);
        assert_eq!(read(&ram, 0x10_2000, 12), b"module text\n");
        assert_eq!(loaded.ranges[1], (0x10_2000, 12));
        // The memory map: size 20, then base, length, type, per e820 entry.
        let map = ram.e820_map();
        assert_eq!(field(INFO_MMAP_LENGTH) as usize, map.len() * 24);
        assert_eq!(field(INFO_MMAP_ADDR), 0x8080);
        for (index, entry) in map.iter().enumerate() {
            let at = 0x8080 + 24 * index as u64;
            assert_eq!(read_u32(&ram, at), 20);
            let base: u64 = ram.memory().read_obj(GuestAddress(at + 4)).unwrap();
            let length: u64 = ram.memory().read_obj(GuestAddress(at + 12)).unwrap();
            assert_eq!((base, length), (entry.start, entry.size));
            assert_eq!(read_u32(&ram, at + 20), entry.kind.e820_type());
        }
    }

    #[test]
    fn without_cmdline_or_module_the_cmdline_is_empty_and_mods_flag_clear() {
        let ram = GuestRam::new(1).unwrap();
        let writes = build_info(&ram, "", None).unwrap();
        let info = &writes[0].1;
        assert_eq!(u32_at(info, 0), 0x245);
        assert_eq!((u32_at(info, INFO_MEM_LOWER), u32_at(info, INFO_MEM_UPPER)), (640, 0));
        assert_eq!((u32_at(info, INFO_MODS_COUNT), u32_at(info, INFO_MODS_ADDR)), (0, 0));
        assert_eq!(writes[3].1, b"vmm\0\0");
    }

    #[test]
    fn strings_that_overflow_the_information_area_are_refused() {
        let ram = GuestRam::new(2).unwrap();
        let err = build_info(&ram, &"x".repeat(4000), None).unwrap_err();
        assert!(matches!(err, Error::MultibootInfoTooLarge { needed: 4005, room: 3584 }), "{err}");
    }

    #[test]
    fn aout_kludge_loads_a_flat_binary_at_the_header_addresses() {
        // 16 bytes of padding, the header at file offset 16 (header_addr
        // 0x20_0010), code after it; load_end 0 (to the end of the file),
        // BSS of 0x100.
        let mut image = vec![0x90u8; 16];
        let fields = [0x20_0010, 0x20_0000, 0, 0x20_0200, 0x20_0030];
        image.extend_from_slice(&header(FLAG_AOUT_KLUDGE, Some(fields)));
        image.extend_from_slice(&[0xf4; 0x20]);
        let ram = GuestRam::new(4).unwrap();
        ram.memory().write_slice(&[0xaa; 0x200], GuestAddress(0x20_0000)).unwrap();
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.format, ImageFormat::Raw);
        assert_eq!(loaded.protocol, BootProtocol::Multiboot);
        assert!(matches!(loaded.entry, EntryPoint::ProtectedMode { eip: 0x20_0030, .. }));
        assert_eq!(loaded.ranges, vec![(0x20_0000, 0x200)]);
        let memory = read(&ram, 0x20_0000, 0x200);
        assert_eq!(&memory[..image.len()], &image[..]);
        assert!(memory[image.len()..].iter().all(|&b| b == 0), "BSS not zeroed");
    }

    #[test]
    fn aout_kludge_with_explicit_load_end_reads_only_that_much() {
        let mut image =
            header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0x10_0024, 0, 0x10_0020]));
        image.extend_from_slice(&[0xf4; 0x100]);
        let ram = GuestRam::new(4).unwrap();
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.ranges, vec![(0x10_0000, 0x24)]);
    }

    #[test]
    fn aout_kludge_inconsistent_addresses_are_refused() {
        let ram = GuestRam::new(4).unwrap();
        // load_addr above header_addr.
        let image = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_1000, 0, 0, 0x10_1000]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("lies above header_addr"), "{err}");
        // The header would have to lie before the start of the file.
        let image = header(FLAG_AOUT_KLUDGE, Some([0x10_1000, 0x10_0000, 0, 0, 0x10_1000]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("more than the header's offset"), "{err}");
        // load_end_addr past the end of the file.
        let image = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0x10_1000, 0, 0x10_0000]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("past the end of the file"), "{err}");
        // bss_end_addr below load_end_addr.
        let image = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0x10_0020, 0x10_0010, 0]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not in ascending order"), "{err}");
    }

    #[test]
    fn load_addresses_outside_ram_are_refused() {
        let ram = GuestRam::new(1).unwrap();
        let err = load_bytes(&ram, &kernel(0), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::BadSegment { index: 0, addr: 0x10_0000, .. }), "{err}");
        assert!(err.to_string().ends_with("lies outside guest RAM (1048576 bytes)"), "{err}");
        let ram = GuestRam::new(4).unwrap();
        let image = header(FLAG_AOUT_KLUDGE, Some([0x4000_0000, 0x4000_0000, 0, 0, 0x4000_0000]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the multiboot a.out kludge range (0x20 bytes at physical 0x40000000) lies outside"
            ),
            "{err}"
        );
        // In RAM as the VMM maps it, but in the BIOS area of the memory map.
        let image = header(FLAG_AOUT_KLUDGE, Some([0xf_0000, 0xf_0000, 0, 0, 0xf_0000]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("overlaps the EBDA and BIOS area"), "{err}");
        // Past 4 GiB.
        let image = header(FLAG_AOUT_KLUDGE, Some([0xffff_fff0, 0xffff_fff0, 0, 0, 0]));
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("ends above 4 GiB"), "{err}");
    }

    #[test]
    fn load_over_the_boot_structures_is_refused() {
        let mut code = header(0, None);
        code.push(0xf4);
        let image = tiny_elf32(0x9000, 0x9000, 0x900c, &code, 0);
        let ram = GuestRam::new(4).unwrap();
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("overlaps the VMM's boot structures"), "{err}");
    }

    #[test]
    fn a_module_that_does_not_fit_is_refused() {
        let ram = GuestRam::new(2).unwrap();
        let module = temp_file("big-module", &vec![0u8; 0x10_0000]);
        let options = LoadOptions { initrd: Some(module.clone()), ..Default::default() };
        let err = load_bytes(&ram, &kernel(0), &options).unwrap_err();
        std::fs::remove_file(&module).unwrap();
        assert!(
            matches!(
                err,
                Error::ModuleDoesNotFit { size: 0x10_0000, from: 0x10_1000, to: 0x20_0000, .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("does not fit in guest RAM"), "{err}");
    }

    #[test]
    fn a_module_that_does_not_fit_below_the_ebda_goes_above_1_mib() {
        let mut image = header(FLAG_AOUT_KLUDGE, Some([0x1_0000, 0x1_0000, 0, 0, 0x1_0000]));
        image.push(0xf4);
        let module = temp_file("mid-module", &vec![0x5au8; 0x9_0000]);
        let options = LoadOptions { initrd: Some(module.clone()), ..Default::default() };
        let ram = GuestRam::new(4).unwrap();
        let loaded = load_bytes(&ram, &image, &options).unwrap();
        std::fs::remove_file(&module).unwrap();
        assert_eq!(loaded.ranges, vec![(0x1_0000, 33), (0x10_0000, 0x9_0000)]);
        assert_eq!(read(&ram, 0x10_0000, 4), [0x5a; 4]);
    }

    #[test]
    fn elf32_problems_are_named() {
        let ram = GuestRam::new(4).unwrap();
        let mut image = kernel(0);
        image[18] = 62;
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("machine 62 is not i386"), "{err}");
        let mut image = kernel(0);
        put_u32(&mut image, 28, 0x1000);
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("program header table"), "{err}");
        let mut image = kernel(0);
        put_u32(&mut image, ELF_HEADER32_LEN + 16, 0x1000);
        put_u32(&mut image, ELF_HEADER32_LEN + 20, 0x1000);
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("past the end of the file"), "{err}");
        // The checks of ELF64 images apply to ELF32 too: no program headers,
        // an empty segment with file contents.
        let mut image = kernel(0);
        image[44..46].copy_from_slice(&0u16.to_le_bytes());
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "invalid ELF image: no program headers");
        let mut image = kernel(0);
        put_u32(&mut image, ELF_HEADER32_LEN + 20, 0);
        let err = load_bytes(&ram, &image, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("larger than its memory size"), "{err}");
    }

    #[test]
    fn a_raw_image_needs_the_kludge_and_load_addr_is_refused() {
        let ram = GuestRam::new(4).unwrap();
        let err = load_bytes(&ram, &header(0, None), &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("a.out kludge"), "{err}");
        let options = LoadOptions { load_addr: Some(0x1000), ..Default::default() };
        let err = load_bytes(&ram, &kernel(0), &options).unwrap_err();
        assert_eq!(err.to_string(), "a load address does not apply to multiboot images");
    }

    #[test]
    fn boot_multiboot_needs_a_header_and_other_protocols_ignore_it() {
        let ram = GuestRam::new(4).unwrap();
        let options = LoadOptions { boot: BootProtocol::Multiboot, ..Default::default() };
        let err = load_bytes(&ram, &[0xf4; 64], &options).unwrap_err();
        assert!(err.to_string().contains("no multiboot header"), "{err}");
        // --boot bare runs a raw image with a header in real mode.
        let mut image = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0, 0, 0x10_0000]));
        image.push(0xf4);
        let options = LoadOptions { boot: BootProtocol::Bare, ..Default::default() };
        let loaded = load_bytes(&ram, &image, &options).unwrap();
        assert_eq!(loaded.protocol, BootProtocol::Bare);
    }

    #[test]
    fn elf64_is_multiboot_only_with_the_kludge() {
        let ram = GuestRam::new(4).unwrap();
        // The ELF64's segment (file offset 120) holds the header at 0x10_0000.
        let mut code = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0, 0, 0x10_0020]));
        code.extend_from_slice(&[0xf4; 4]);
        let image = crate::elf::tests::tiny_elf(0x10_0000, &code, 0);
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!((loaded.format, loaded.protocol), (ImageFormat::Elf, BootProtocol::Multiboot));
        assert_eq!(loaded.ranges, vec![(0x10_0000, code.len() as u64)]);
        // Without the kludge it stays a bare 64-bit ELF, and --boot multiboot
        // says why it cannot be multiboot.
        let mut code = header(0, None);
        code.push(0xf4);
        let image = crate::elf::tests::tiny_elf(0x10_0000, &code, 0);
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.protocol, BootProtocol::Bare);
        let options = LoadOptions { boot: BootProtocol::Multiboot, ..Default::default() };
        let err = load_bytes(&ram, &image, &options).unwrap_err();
        assert!(err.to_string().contains("is not ELFCLASS32"), "{err}");
    }

    #[test]
    fn elf64_with_a_linux_note_stays_linux_despite_a_multiboot_header() {
        let mut code = header(FLAG_AOUT_KLUDGE, Some([0x10_0000, 0x10_0000, 0, 0, 0x10_0020]));
        code.extend_from_slice(&[0xf4; 4]);
        let mut image = crate::elf::tests::tiny_elf(0x10_0000, &code, 0);
        // Append a note named "Linux" and a new program header table: the
        // PT_LOAD of tiny_elf, then a PT_NOTE over the note.
        let note_offset = image.len() as u64;
        for value in [6u32, 0, 1] {
            image.extend_from_slice(&value.to_le_bytes());
        }
        image.extend_from_slice(b"Linux\0\0\0");
        let table = image.len() as u64;
        let load = image[64..120].to_vec();
        image.extend_from_slice(&load);
        let mut note = [0u8; 56];
        note[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        note[8..16].copy_from_slice(&note_offset.to_le_bytes());
        note[32..40].copy_from_slice(&20u64.to_le_bytes());
        image.extend_from_slice(&note);
        image[32..40].copy_from_slice(&table.to_le_bytes());
        image[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ram = GuestRam::new(4).unwrap();
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.protocol, BootProtocol::Linux64);
    }
}
