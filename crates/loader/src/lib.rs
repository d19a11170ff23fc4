#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod acpi;
mod elf;
mod format;
mod linux;
pub mod mptable;
pub mod multiboot;
mod raw;
mod unpack;

use std::path::{Path, PathBuf};

pub use format::ImageFormat;
pub use linux::{DEFAULT_CMDLINE, VMLINUX_CMDLINE_MAX};
use vmm_memory::{GuestRam, MemoryKind, layout};

/// Errors from reading, validating or loading an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be opened or inspected.
    #[error("cannot open image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a directory or another non-file.
    #[error("image {0} is not a regular file")]
    NotAFile(PathBuf),
    /// Reading the image failed.
    #[error("cannot read image {path}: {source}")]
    Read {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image has no bytes.
    #[error("image {0} is empty")]
    Empty(PathBuf),
    /// The image file alone is larger than all of guest RAM.
    #[error("image {path} ({size} bytes) is larger than guest RAM ({ram} bytes)")]
    LargerThanRam {
        /// The image path.
        path: PathBuf,
        /// File size.
        size: u64,
        /// RAM size.
        ram: u64,
    },
    /// A load option does not apply to the image's format.
    #[error("{} does not apply to {format} images", .option.with_article())]
    OptionNotForFormat {
        /// The option.
        option: LoadOption,
        /// The image format.
        format: &'static str,
    },
    /// A raw image's load address cannot be used.
    #[error("load address {addr:#x} is unusable: {reason}")]
    BadLoadAddress {
        /// The load address.
        addr: u64,
        /// Why not.
        reason: &'static str,
    },
    /// A raw image does not fit in RAM at its load address.
    #[error("raw image ({size} bytes at {addr:#x}) does not fit in guest RAM ({ram} bytes)")]
    RawDoesNotFit {
        /// Load address.
        addr: u64,
        /// Image size.
        size: u64,
        /// RAM size.
        ram: u64,
    },
    /// The entry point is not usable.
    #[error("entry point {entry:#x} is unusable: {reason}")]
    BadEntry {
        /// The entry point.
        entry: u64,
        /// Why not.
        reason: &'static str,
    },
    /// The ELF file is malformed or not for this machine.
    #[error("invalid ELF image: {0}")]
    InvalidElf(String),
    /// An ELF segment cannot be placed.
    #[error("ELF segment {index} ({size:#x} bytes at physical {addr:#x}) {reason}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// Physical address.
        addr: u64,
        /// Memory size.
        size: u64,
        /// Why it cannot be loaded.
        reason: SegmentProblem,
    },
    /// The bzImage cannot be booted.
    #[error("invalid bzImage: {0}")]
    InvalidBzImage(String),
    /// The kernel needs more RAM than the guest has.
    #[error("the kernel needs guest RAM up to {needed:#x}, but low RAM ends at {ram:#x}")]
    KernelDoesNotFit {
        /// End of the RAM the kernel needs.
        needed: u64,
        /// End of low RAM.
        ram: u64,
    },
    /// The command line is too long for the kernel.
    #[error("the command line is {len} bytes long, but the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The command line is malformed.
    #[error("invalid kernel command line: {0}")]
    InvalidCmdline(String),
    /// The initrd does not fit between the kernel and the top of RAM.
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM between {from:#x} and {to:#x}")]
    InitrdDoesNotFit {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Lowest usable address (end of the kernel).
        from: u64,
        /// Highest usable address.
        to: u64,
    },
    /// The requested boot protocol does not suit the image.
    #[error("cannot boot this image through {protocol}: {reason}")]
    WrongProtocol {
        /// The protocol asked for.
        protocol: &'static str,
        /// Why not.
        reason: &'static str,
    },
    /// Writing boot parameters failed.
    #[error("writing the boot parameters failed: {0}")]
    BootParams(String),
    /// A multiboot header's checksum is wrong.
    #[error(
        "bad multiboot header checksum at offset {offset:#x}: {checksum:#010x}, expected \
         {expected:#010x} (magic + flags + checksum must be 0)"
    )]
    BadMultibootChecksum {
        /// The header's offset in the file.
        offset: usize,
        /// The checksum in the header.
        checksum: u32,
        /// The checksum that would be right.
        expected: u32,
    },
    /// A multiboot header or image cannot be booted.
    #[error("invalid multiboot image: {0}")]
    InvalidMultiboot(String),
    /// The range a multiboot header's a.out kludge loads cannot be placed.
    #[error("the multiboot a.out kludge range ({size:#x} bytes at physical {addr:#x}) {reason}")]
    BadLoadRange {
        /// Physical load address.
        addr: u64,
        /// Size in memory, BSS included.
        size: u64,
        /// Why it cannot be loaded.
        reason: SegmentProblem,
    },
    /// The multiboot module does not fit between the kernel and the end of RAM.
    #[error(
        "multiboot module {path} ({size} bytes) does not fit in guest RAM between {from:#x} \
         and {to:#x}"
    )]
    ModuleDoesNotFit {
        /// The module's path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Lowest usable address (end of the kernel, page-aligned).
        from: u64,
        /// End of RAM below 4 GiB.
        to: u64,
    },
    /// The command line and module name overflow the multiboot information area.
    #[error(
        "the multiboot command line, module name and boot loader name need {needed} bytes, \
         more than the {room} bytes the multiboot information area has for them"
    )]
    MultibootInfoTooLarge {
        /// Bytes of strings, NULs included.
        needed: u64,
        /// Room for them.
        room: u64,
    },
    /// The MP table cannot be built.
    #[error("cannot build the MP table: {0}")]
    MpTable(String),
    /// The ACPI tables could not be built or placed.
    #[error("ACPI tables: {0}")]
    Acpi(String),
    /// linux-loader failed.
    #[error("loading the kernel failed: {0}")]
    Kernel(#[from] linux_loader::loader::Error),
    /// Writing guest memory failed.
    #[error("writing guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A load option, as an error names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOption {
    /// [`LoadOptions::load_addr`].
    LoadAddr,
    /// [`LoadOptions::entry`].
    Entry,
    /// [`LoadOptions::cmdline`].
    Cmdline,
    /// [`LoadOptions::initrd`].
    Initrd,
}

impl LoadOption {
    /// What the option sets, e.g. "command line".
    pub fn name(self) -> &'static str {
        match self {
            LoadOption::LoadAddr => "load address",
            LoadOption::Entry => "entry point",
            LoadOption::Cmdline => "command line",
            LoadOption::Initrd => "initrd",
        }
    }

    /// The name with its indefinite article, e.g. "a command line".
    pub fn with_article(self) -> &'static str {
        match self {
            LoadOption::LoadAddr => "a load address",
            LoadOption::Entry => "an entry point",
            LoadOption::Cmdline => "a command line",
            LoadOption::Initrd => "an initrd",
        }
    }
}

/// Why a segment cannot be loaded: an ELF program header
/// ([`Error::BadSegment`]) or the range a multiboot header's a.out kludge
/// loads ([`Error::BadLoadRange`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentProblem {
    /// Its file part is larger than the memory it fills.
    #[error("has a file size ({filesz:#x}) larger than its memory size")]
    FileLargerThanMemory {
        /// The file size.
        filesz: u64,
    },
    /// Its file part ends past the end of the file.
    #[error(
        "reads {filesz:#x} bytes at file offset {offset:#x}, past the end of the file \
         ({file_len} bytes)"
    )]
    PastEndOfFile {
        /// The file size of the segment.
        filesz: u64,
        /// Its offset in the file.
        offset: u64,
        /// The length of the file.
        file_len: u64,
    },
    /// It reaches above 4 GiB, which a 32-bit kernel cannot address.
    #[error("ends above 4 GiB")]
    Above4Gib,
    /// It does not lie in guest RAM (an ELF64 image's segment).
    #[error("does not fit in guest RAM ({ram} bytes)")]
    DoesNotFitInRam {
        /// The RAM size.
        ram: u64,
    },
    /// It does not lie in guest RAM (a multiboot kernel's segment).
    #[error("lies outside guest RAM ({ram} bytes)")]
    OutsideRam {
        /// The RAM size.
        ram: u64,
    },
    /// It lies in RAM, but the memory map the guest is given reserves part
    /// of it.
    #[error("overlaps the EBDA and BIOS area ({start:#x}-{end:#x}), which the memory map reserves")]
    ReservedInMemoryMap {
        /// Start of the reserved area.
        start: u64,
        /// End (exclusive) of the reserved area.
        end: u64,
    },
    /// It overlaps guest memory the VMM writes boot data into
    /// ([`layout::BOOT_DATA_RANGES`]).
    #[error("overlaps {what} at {start:#x}-{end:#x}")]
    OverlapsBootData {
        /// What the VMM keeps there.
        what: &'static str,
        /// Start of the boot data range.
        start: u64,
        /// End (exclusive) of the boot data range.
        end: u64,
    },
    /// It overlaps an earlier segment of the same image.
    #[error("overlaps segment {0}")]
    OverlapsSegment(usize),
    /// It overlaps an earlier range of the same image that is not an ELF
    /// segment.
    #[error("overlaps another segment")]
    OverlapsRange,
}

/// How to start an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// Chosen from the image (only as a request).
    #[default]
    Auto,
    /// No boot protocol: real mode for raw images, long mode for ELF.
    Bare,
    /// PVH: 32-bit protected mode with `hvm_start_info` (Linux).
    Pvh,
    /// The Linux 64-bit boot protocol with a zero page.
    Linux64,
    /// Multiboot v1: 32-bit protected mode with the multiboot information.
    Multiboot,
}

impl BootProtocol {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Bare => "bare",
            BootProtocol::Pvh => "PVH",
            BootProtocol::Linux64 => "the Linux 64-bit boot protocol",
            BootProtocol::Multiboot => "multiboot",
        }
    }

    /// True for the protocols that boot Linux.
    pub fn is_linux(self) -> bool {
        matches!(self, BootProtocol::Pvh | BootProtocol::Linux64)
    }

    /// True for the protocols whose kernels expect a PC: interrupt
    /// controllers, an MP table, firmware-initialised CPUs.
    pub fn wants_pc_machine(self) -> bool {
        matches!(self, BootProtocol::Pvh | BootProtocol::Linux64 | BootProtocol::Multiboot)
    }
}

/// Overrides for where an image goes, how it starts, and what a Linux
/// kernel gets.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load address of a raw image (default [`layout::RAW_IMAGE_DEFAULT_LOAD`]).
    pub load_addr: Option<u64>,
    /// Guest-physical entry point, overriding the image's own.
    pub entry: Option<u64>,
    /// The boot protocol; [`BootProtocol::Auto`] chooses from the image.
    pub boot: BootProtocol,
    /// Kernel command line (Linux boots: default [`DEFAULT_CMDLINE`];
    /// multiboot: default empty).
    pub cmdline: Option<String>,
    /// Initial RAM disk (Linux boots), or module 0 (multiboot).
    pub initrd: Option<PathBuf>,
    /// Unpack a bzImage's LZ4-compressed kernel on the host and boot it
    /// as a vmlinux, sparing the guest its decompressor.
    pub unpack_bzimage: bool,
    /// Where the ACPI RSDP is, for a Linux kernel (PVH's `rsdp_paddr`, the
    /// zero page's `acpi_rsdp_addr`); see [`acpi::write`].
    pub acpi_rsdp: Option<u64>,
}

/// How the first vCPU starts executing the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 16-bit real mode at `segment:ip` (CS base = segment << 4).
    RealMode {
        /// Code segment selector.
        segment: u16,
        /// Instruction pointer.
        ip: u16,
    },
    /// 32-bit protected mode, paging off, flat segments, at `eip` with
    /// `ebx` and `eax` set (PVH: the `hvm_start_info` address and 0;
    /// multiboot: the multiboot information and 0x2BADB002).
    ProtectedMode {
        /// Entry address.
        eip: u32,
        /// Value for EBX.
        ebx: u32,
        /// Value for EAX.
        eax: u32,
    },
    /// 64-bit long mode (identity-mapped paging) at `rip`, with `rsi` set
    /// (Linux 64-bit protocol: the zero page; bare: 0).
    LongMode {
        /// Entry address.
        rip: u64,
        /// Value for RSI.
        rsi: u64,
    },
}

/// Where an image landed and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The recognised format.
    pub format: ImageFormat,
    /// The protocol it boots through (never `Auto`).
    pub protocol: BootProtocol,
    /// How to start it.
    pub entry: EntryPoint,
    /// Guest-physical ranges written, as (start, length).
    pub ranges: Vec<(u64, u64)>,
}

/// Reads the image at `path`, recognises its format and loads it into `ram`.
pub fn load_image(ram: &GuestRam, path: &Path, options: &LoadOptions) -> Result<LoadedImage> {
    let bytes = read_image(path, ram.size_bytes())?;
    load_bytes(ram, &bytes, options)
}

/// Loads an image that is already in host memory into `ram`.
pub fn load_bytes(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<LoadedImage> {
    let format = ImageFormat::detect(image);
    log::info!("image format: {}, {} bytes", format.name(), image.len());
    // Before the ELF64 checks, which refuse the ELF32 a multiboot kernel is.
    if let Some(header) = multiboot::select(image, format, options.boot)? {
        let loaded = multiboot::load(ram, image, format, &header, options)?;
        log::info!("boot protocol: {}", loaded.protocol.name());
        return Ok(loaded);
    }
    if format != ImageFormat::Raw && options.load_addr.is_some() {
        return Err(Error::OptionNotForFormat {
            option: LoadOption::LoadAddr,
            format: format.name(),
        });
    }
    let loaded = match format {
        ImageFormat::Raw => {
            match options.boot {
                BootProtocol::Auto | BootProtocol::Bare => {}
                other => {
                    return Err(Error::WrongProtocol {
                        protocol: other.name(),
                        reason: "raw images run in real mode",
                    });
                }
            }
            refuse_linux_options(options, "raw")?;
            raw::load(ram, image, options)?
        }
        ImageFormat::Elf => load_elf(ram, image, options)?,
        ImageFormat::BzImage => load_bzimage(ram, image, options)?,
    };
    log::info!("boot protocol: {}", loaded.protocol.name());
    Ok(loaded)
}

fn refuse_linux_options(options: &LoadOptions, format: &'static str) -> Result<()> {
    if options.cmdline.is_some() {
        return Err(Error::OptionNotForFormat { option: LoadOption::Cmdline, format });
    }
    if options.initrd.is_some() {
        return Err(Error::OptionNotForFormat { option: LoadOption::Initrd, format });
    }
    Ok(())
}

fn load_bzimage(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<LoadedImage> {
    match options.boot {
        BootProtocol::Auto | BootProtocol::Linux64 => {}
        other => {
            return Err(Error::WrongProtocol {
                protocol: other.name(),
                reason: "a bzImage boots through the Linux 64-bit boot protocol",
            });
        }
    }
    if options.entry.is_some() {
        return Err(Error::OptionNotForFormat { option: LoadOption::Entry, format: "bzImage" });
    }
    if options.unpack_bzimage {
        let header = linux::BzImageHeader::parse(image)?;
        match unpack::payload(image, header.setup_sects, header.version) {
            Some(payload) if unpack::can_unpack(payload) => {
                let vmlinux = unpack::unpack(payload)?;
                log::info!("bzImage: kernel unpacked on the host ({} bytes)", vmlinux.len());
                let elf_options = LoadOptions { boot: BootProtocol::Linux64, ..options.clone() };
                let loaded = load_elf(ram, &vmlinux, &elf_options)?;
                return Ok(LoadedImage { format: ImageFormat::BzImage, ..loaded });
            }
            _ => log::info!("bzImage: its kernel is not LZ4-compressed; the guest unpacks it"),
        }
    }
    let cmdline = options.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    let kernel =
        linux::load_bzimage(ram, image, cmdline, options.initrd.as_deref(), options.acpi_rsdp)?;
    Ok(LoadedImage {
        format: ImageFormat::BzImage,
        protocol: BootProtocol::Linux64,
        entry: EntryPoint::LongMode { rip: kernel.entry, rsi: layout::ZERO_PAGE_START },
        ranges: kernel.ranges,
    })
}

fn load_elf(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<LoadedImage> {
    let mut elf = elf::load(ram, image, options)?;
    let protocol = match options.boot {
        BootProtocol::Auto if elf.pvh_entry.is_some() => BootProtocol::Pvh,
        BootProtocol::Auto if elf.linux_note => BootProtocol::Linux64,
        BootProtocol::Auto => BootProtocol::Bare,
        BootProtocol::Pvh if elf.pvh_entry.is_none() => {
            return Err(Error::WrongProtocol {
                protocol: "PVH",
                reason: "the ELF image has no XEN_ELFNOTE_PHYS32_ENTRY note",
            });
        }
        requested => requested,
    };
    let cmdline = options.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    let initrd = options.initrd.as_deref();
    let entry = match protocol {
        BootProtocol::Pvh => {
            let eip = options.entry.or(elf.pvh_entry).unwrap_or(elf.entry);
            if !ram.contains_range(eip, 1) {
                return Err(Error::BadEntry { entry: eip, reason: "it is outside guest RAM" });
            }
            let eip = u32::try_from(eip).map_err(|_| Error::BadEntry {
                entry: eip,
                reason: "a PVH entry must lie below 4 GiB",
            })?;
            elf.ranges.extend(linux::setup_pvh(
                ram,
                elf.end(),
                cmdline,
                initrd,
                options.acpi_rsdp,
            )?);
            EntryPoint::ProtectedMode { eip, ebx: layout::PVH_INFO_START as u32, eax: 0 }
        }
        BootProtocol::Linux64 => {
            elf.ranges.extend(linux::setup_vmlinux(
                ram,
                elf.end(),
                cmdline,
                initrd,
                options.acpi_rsdp,
            )?);
            EntryPoint::LongMode { rip: elf.entry, rsi: layout::ZERO_PAGE_START }
        }
        _ => {
            refuse_linux_options(options, "bare ELF")?;
            EntryPoint::LongMode { rip: elf.entry, rsi: 0 }
        }
    };
    Ok(LoadedImage { format: ImageFormat::Elf, protocol, entry, ranges: elf.ranges })
}

/// Whether `[start, start + len)` lies in one RAM entry of the memory map the
/// guest is given (so not in the EBDA, the BIOS area or the MMIO hole).
pub(crate) fn in_usable_ram(ram: &GuestRam, start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else { return false };
    ram.e820_map()
        .iter()
        .any(|e| e.kind == MemoryKind::Ram && start >= e.start && end <= e.start + e.size)
}

/// Reads a whole image file, refusing empty files and files larger than RAM
/// before reading them.
fn read_image(path: &Path, ram_size: u64) -> Result<Vec<u8>> {
    let metadata =
        std::fs::metadata(path).map_err(|source| Error::Open { path: path.to_owned(), source })?;
    if !metadata.is_file() {
        return Err(Error::NotAFile(path.to_owned()));
    }
    if metadata.len() == 0 {
        return Err(Error::Empty(path.to_owned()));
    }
    if metadata.len() > ram_size {
        return Err(Error::LargerThanRam {
            path: path.to_owned(),
            size: metadata.len(),
            ram: ram_size,
        });
    }
    let bytes =
        std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    if bytes.is_empty() {
        return Err(Error::Empty(path.to_owned()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-loader-{}-{name}", std::process::id()));
        std::fs::File::create(&path).unwrap().write_all(contents).unwrap();
        path
    }

    #[test]
    fn missing_image_is_an_open_error() {
        let ram = GuestRam::new(1).unwrap();
        let err =
            load_image(&ram, Path::new("/nonexistent/image"), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/image"));
    }

    #[test]
    fn directory_is_not_an_image() {
        let ram = GuestRam::new(1).unwrap();
        let err = load_image(&ram, &std::env::temp_dir(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NotAFile(_)));
    }

    #[test]
    fn empty_image_is_rejected() {
        let ram = GuestRam::new(1).unwrap();
        let path = temp_file("empty", b"");
        let err = load_image(&ram, &path, &LoadOptions::default()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::Empty(_)), "{err}");
    }

    #[test]
    fn image_larger_than_ram_is_rejected_before_reading() {
        let ram = GuestRam::new(1).unwrap();
        let path = temp_file("big", &vec![0x90; (1 << 20) + 1]);
        let err = load_image(&ram, &path, &LoadOptions::default()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::LargerThanRam { .. }), "{err}");
    }

    #[test]
    fn load_addr_is_refused_for_elf() {
        let ram = GuestRam::new(1).unwrap();
        let options = LoadOptions { load_addr: Some(0x1000), ..Default::default() };
        let err = load_bytes(&ram, b"\x7fELF\x02\x01\x01", &options).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OptionNotForFormat { option: LoadOption::LoadAddr, format: "ELF" }
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), "a load address does not apply to ELF images");
    }

    #[test]
    fn errors_name_values_not_command_line_flags() {
        let path = PathBuf::from("file");
        let options =
            [LoadOption::LoadAddr, LoadOption::Entry, LoadOption::Cmdline, LoadOption::Initrd];
        let errors = options
            .map(|option| Error::OptionNotForFormat { option, format: "raw" })
            .into_iter()
            .chain([
                Error::LargerThanRam { path: path.clone(), size: 2, ram: 1 },
                Error::KernelDoesNotFit { needed: 0x20_0000, ram: 0x10_0000 },
                Error::InitrdDoesNotFit { path: path.clone(), size: 2, from: 0, to: 1 },
                Error::ModuleDoesNotFit { path, size: 2, from: 0, to: 1 },
                Error::BadSegment {
                    index: 0,
                    addr: 0x10_0000,
                    size: 1,
                    reason: SegmentProblem::OutsideRam { ram: 1 << 20 },
                },
            ]);
        for err in errors {
            assert!(!err.to_string().contains("--"), "{err}");
        }
        let names = options.map(LoadOption::name);
        assert_eq!(names, ["load address", "entry point", "command line", "initrd"]);
        let err = Error::OptionNotForFormat { option: LoadOption::Initrd, format: "raw" };
        assert_eq!(err.to_string(), "an initrd does not apply to raw images");
        let err = Error::KernelDoesNotFit { needed: 0x20_0000, ram: 0x10_0000 };
        assert_eq!(
            err.to_string(),
            "the kernel needs guest RAM up to 0x200000, but low RAM ends at 0x100000"
        );
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::*;

    #[test]
    fn bare_elf_boots_in_long_mode_without_a_zero_page() {
        let ram = GuestRam::new(2).unwrap();
        let image = elf::tests::tiny_elf(0x10_0000, &[0xf4], 0);
        let loaded = load_bytes(&ram, &image, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.protocol, BootProtocol::Bare);
        assert_eq!(loaded.entry, EntryPoint::LongMode { rip: 0x10_0000, rsi: 0 });
    }

    #[test]
    fn linux_options_are_refused_for_bare_images() {
        let ram = GuestRam::new(2).unwrap();
        let image = elf::tests::tiny_elf(0x10_0000, &[0xf4], 0);
        let options = LoadOptions { cmdline: Some("quiet".into()), ..Default::default() };
        let err = load_bytes(&ram, &image, &options).unwrap_err();
        assert_eq!(err.to_string(), "a command line does not apply to bare ELF images");
        let err = load_bytes(&ram, &[0xf4], &options).unwrap_err();
        assert_eq!(err.to_string(), "a command line does not apply to raw images");
    }

    #[test]
    fn pvh_is_refused_without_the_note() {
        let ram = GuestRam::new(2).unwrap();
        let image = elf::tests::tiny_elf(0x10_0000, &[0xf4], 0);
        let options = LoadOptions { boot: BootProtocol::Pvh, ..Default::default() };
        let err = load_bytes(&ram, &image, &options).unwrap_err();
        assert!(err.to_string().contains("no XEN_ELFNOTE_PHYS32_ENTRY"), "{err}");
    }

    #[test]
    fn elf_forced_through_linux64_gets_a_zero_page() {
        let ram = GuestRam::new(4).unwrap();
        let image = elf::tests::tiny_elf(0x10_0000, &[0xf4], 0);
        let options = LoadOptions { boot: BootProtocol::Linux64, ..Default::default() };
        let loaded = load_bytes(&ram, &image, &options).unwrap();
        assert_eq!(
            loaded.entry,
            EntryPoint::LongMode { rip: 0x10_0000, rsi: layout::ZERO_PAGE_START }
        );
        let mut cmdline = vec![0u8; DEFAULT_CMDLINE.len()];
        vm_memory::Bytes::read_slice(
            ram.memory(),
            &mut cmdline,
            vm_memory::GuestAddress(layout::CMDLINE_START),
        )
        .unwrap();
        assert_eq!(cmdline, DEFAULT_CMDLINE.as_bytes());
    }
}
