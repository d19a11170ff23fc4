//! The image loader: arbitrary bytes as a guest image, with load options
//! chosen from the input.
//!
//! Input layout (fuzz/make-seeds.py writes seeds in it):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | RAM: 2 + (b & 31) % 31 MiB (2 to 32); vCPUs for the MP table: 1 + (b >> 5) |
//! | 1 | bits 0-2: boot protocol (auto, bare, PVH, linux64, multiboot; 5-7 auto); bits 3-5: initrd (0-3 none, 4 small, 5 1 MiB + 1 byte, 6 empty file, 7 missing file); bit 6: a command line; bit 7: `unpack_bzimage` |
//! | 2 | bit 0: a load address; bit 1: an entry point; bits 2-5: bits 8-11 of the command line length |
//! | 3 | bits 0-7 of the command line length |
//! | 4-7 | load address (little-endian u32), if asked for |
//! | 8-15 | entry point (little-endian u64), if asked for |
//! | 16.. | the command line (lossy UTF-8), then the image |
//!
//! Invariants, besides never panicking:
//! - on success: the format is the one `ImageFormat::detect` gives; the
//!   protocol is never `Auto` and is the requested one when one was given;
//!   the entry point has the form the protocol prescribes (registers
//!   included) and lies in RAM; every range in `LoadedImage.ranges` lies
//!   inside RAM and no two overlap; no range of a non-raw image lies over
//!   the VMM's boot data (`layout::BOOT_DATA_RANGES`);
//! - what the loader reports loaded is intact in guest memory once every
//!   structure of the boot is written (the MP table included, as the
//!   machine writes it for Linux and multiboot kernels): the raw image, each
//!   ELF or multiboot segment (file bytes, then zeroed BSS), the bzImage's
//!   protected-mode kernel, the initrd or multiboot module, and the command
//!   line as the kernel finds it (Linux: at 0x20000; multiboot: through the
//!   information structure, which also lists the module where it is).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::Input;
use vmm_loader::{
    BootProtocol, DEFAULT_CMDLINE, EntryPoint, ImageFormat, LoadOptions, LoadedImage, mptable,
    multiboot,
};
use vmm_memory::{GuestRam, layout};

const HEADER_LEN: usize = 16;
const SMALL_INITRD_LEN: usize = 5000;
const LARGE_INITRD_LEN: usize = (1 << 20) + 1;

fn initrd_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The initrd files, written once: (path, contents) for small, large and
/// empty, and a path that does not exist.
fn initrds() -> &'static [(PathBuf, Vec<u8>); 4] {
    static FILES: OnceLock<[(PathBuf, Vec<u8>); 4]> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir();
        let files = [
            (dir.join("vmm-fuzz-initrd-small"), initrd_bytes(SMALL_INITRD_LEN)),
            (dir.join("vmm-fuzz-initrd-large"), initrd_bytes(LARGE_INITRD_LEN)),
            (dir.join("vmm-fuzz-initrd-empty"), Vec::new()),
            (dir.join("vmm-fuzz-initrd-missing/none"), Vec::new()),
        ];
        for (path, contents) in &files[..3] {
            if std::fs::read(path).ok().as_ref() != Some(contents) {
                // Through a rename, so parallel fuzz jobs never see half a file.
                let temp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&temp, contents).expect("write initrd");
                std::fs::rename(&temp, path).expect("rename initrd");
            }
        }
        files
    })
}

fn read(ram: &GuestRam, address: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ram.memory().read_slice(&mut bytes, GuestAddress(address)).expect("read guest memory");
    bytes
}

fn read_u32(ram: &GuestRam, address: u64) -> u32 {
    ram.memory().read_obj(GuestAddress(address)).expect("read guest memory")
}

/// The NUL-terminated string at `address` (at most 64 KiB).
fn read_cstr(ram: &GuestRam, address: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for at in address..address + 0x1_0000 {
        match ram.memory().read_obj::<u8>(GuestAddress(at)).expect("read string") {
            0 => break,
            byte => out.push(byte),
        }
    }
    out
}

/// Whether `bytes` are all zero (compared a page at a time: a byte loop
/// would be instrumented byte by byte and slow every input down).
fn is_zero(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|chunk| chunk == &ZEROS[..chunk.len()])
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 != 0 && b.1 != 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A part of the file loaded at an address: (file offset, address, file
/// size, memory size).
type Segment = (usize, u64, usize, u64);

/// The PT_LOAD segments of an ELF64 with contents.
fn elf64_segments(image: &[u8]) -> Vec<Segment> {
    let phoff = u64_at(image, 32) as usize;
    let phnum = usize::from(u16_at(image, 56));
    (0..phnum)
        .map(|i| phoff + i * 56)
        .filter(|&at| u32_at(image, at) == 1)
        .map(|at| {
            let (offset, paddr) = (u64_at(image, at + 8), u64_at(image, at + 24));
            (offset as usize, paddr, u64_at(image, at + 32) as usize, u64_at(image, at + 40))
        })
        .filter(|segment| segment.3 > 0)
        .collect()
}

/// What a multiboot loader loads, by the Multiboot Specification 0.6.96:
/// the a.out kludge's range when header flag 16 is set, else the PT_LOAD
/// segments of the ELF32 file.
fn multiboot_segments(image: &[u8]) -> Vec<Segment> {
    let window = image.len().min(8192);
    let header = (0..window.saturating_sub(11))
        .step_by(4)
        .find(|&at| u32_at(image, at) == multiboot::HEADER_MAGIC)
        .expect("a multiboot header");
    if u32_at(image, header + 4) & (1 << 16) != 0 {
        let field = |index: usize| u64::from(u32_at(image, header + 12 + 4 * index));
        let (header_addr, load_addr) = (field(0), field(1));
        let offset = header - (header_addr - load_addr) as usize;
        let load_end = match field(2) {
            0 => load_addr + (image.len() - offset) as u64,
            end => end,
        };
        let bss_end = match field(3) {
            0 => load_end,
            end => end,
        };
        return vec![(offset, load_addr, (load_end - load_addr) as usize, bss_end - load_addr)];
    }
    let phoff = u32_at(image, 28) as usize;
    let phnum = usize::from(u16_at(image, 44));
    (0..phnum)
        .map(|i| phoff + i * 32)
        .filter(|&at| u32_at(image, at) == 1)
        .map(|at| {
            let (offset, paddr) = (u32_at(image, at + 4), u32_at(image, at + 12));
            let (filesz, memsz) = (u32_at(image, at + 16), u32_at(image, at + 20));
            (offset as usize, u64::from(paddr), filesz as usize, u64::from(memsz))
        })
        .filter(|segment| segment.3 > 0)
        .collect()
}

/// Whether `unpack_bzimage` makes the loader unpack this bzImage's kernel on
/// the host: its header locates a payload in LZ4's legacy frame format.
fn unpacks(image: &[u8]) -> bool {
    let version = u16_at(image, 0x206);
    let offset = u32_at(image, 0x248) as usize;
    let length = u32_at(image, 0x24c) as usize;
    let start = (usize::from(image[0x1f1].max(4)) + 1) * 512 + offset;
    version >= 0x0208
        && image.get(start..start + length).is_some_and(|p| p.starts_with(&[2, 0x21, 0x4c, 0x18]))
}

fn entry_address(entry: EntryPoint) -> u64 {
    match entry {
        EntryPoint::RealMode { segment, ip } => (u64::from(segment) << 4) + u64::from(ip),
        EntryPoint::ProtectedMode { eip, .. } => u64::from(eip),
        EntryPoint::LongMode { rip, .. } => rip,
    }
}

fn check_segments(ram: &GuestRam, image: &[u8], segments: &[Segment], ranges: &[(u64, u64)]) {
    assert_eq!(ranges.len(), segments.len(), "{ranges:x?}");
    for (&(offset, paddr, filesz, memsz), &range) in segments.iter().zip(ranges) {
        assert_eq!(range, (paddr, memsz));
        let got = read(ram, paddr, memsz as usize);
        assert!(
            got[..filesz] == image[offset..offset + filesz],
            "segment at {paddr:#x}+{filesz:#x} overwritten"
        );
        assert!(is_zero(&got[filesz..]), "BSS at {paddr:#x} not zero");
    }
}

fn check(
    ram: &GuestRam,
    image: &[u8],
    options: &LoadOptions,
    initrd: Option<&[u8]>,
    cpus: u8,
    loaded: &LoadedImage,
) {
    assert_eq!(loaded.format, ImageFormat::detect(image));
    assert_ne!(loaded.protocol, BootProtocol::Auto);
    if options.boot != BootProtocol::Auto {
        assert_eq!(loaded.protocol, options.boot);
    }
    let info = |start: u64| u32::try_from(start).unwrap();
    match (loaded.format, loaded.protocol, loaded.entry) {
        (ImageFormat::Raw, BootProtocol::Bare, EntryPoint::RealMode { .. }) => {}
        (ImageFormat::Elf, BootProtocol::Bare, EntryPoint::LongMode { rsi: 0, .. }) => {}
        (ImageFormat::Elf, BootProtocol::Pvh, EntryPoint::ProtectedMode { ebx, eax: 0, .. }) => {
            assert_eq!(ebx, info(layout::PVH_INFO_START))
        }
        (
            ImageFormat::Elf | ImageFormat::BzImage,
            BootProtocol::Linux64,
            EntryPoint::LongMode { rsi, .. },
        ) => assert_eq!(rsi, layout::ZERO_PAGE_START),
        (_, BootProtocol::Multiboot, EntryPoint::ProtectedMode { ebx, eax, .. }) => {
            assert_eq!(ebx, info(layout::MULTIBOOT_INFO_START));
            assert_eq!(eax, multiboot::BOOTLOADER_MAGIC);
        }
        other => panic!("the entry does not match the format and protocol: {other:?}"),
    }
    let entry = entry_address(loaded.entry);
    assert!(ram.contains_range(entry, 1), "entry point {entry:#x} is outside guest RAM");

    let with_initrd = initrd.is_some() && loaded.protocol != BootProtocol::Bare;
    let image_ranges = &loaded.ranges[..loaded.ranges.len() - usize::from(with_initrd)];
    for (i, &range) in loaded.ranges.iter().enumerate() {
        assert!(ram.contains_range(range.0, range.1), "range {range:x?} is outside guest RAM");
        for &other in &loaded.ranges[..i] {
            assert!(!overlaps(range, other), "ranges {range:x?} and {other:x?} overlap");
        }
    }
    if loaded.format != ImageFormat::Raw || loaded.protocol == BootProtocol::Multiboot {
        for &range in image_ranges {
            for &(start, end, what) in &layout::BOOT_DATA_RANGES {
                assert!(!overlaps(range, (start, end - start)), "range {range:x?} is over {what}");
            }
        }
    }

    // What the machine writes after loading, before the guest starts.
    if loaded.protocol.wants_pc_machine() {
        mptable::write(ram, cpus, &[]).expect("MP table");
    }

    // Everything the loader says it loaded is intact.
    if let (true, Some(contents)) = (with_initrd, initrd) {
        let range = *loaded.ranges.last().unwrap();
        assert_eq!(range.1, contents.len() as u64, "initrd range {range:x?}");
        assert!(read(ram, range.0, contents.len()) == contents, "initrd overwritten");
    }
    match (loaded.format, loaded.protocol) {
        (_, BootProtocol::Multiboot) => {
            check_segments(ram, image, &multiboot_segments(image), image_ranges)
        }
        (ImageFormat::Raw, _) => {
            assert_eq!(image_ranges.len(), 1);
            assert!(read(ram, image_ranges[0].0, image.len()) == image, "raw image overwritten");
        }
        (ImageFormat::Elf, _) => check_segments(ram, image, &elf64_segments(image), image_ranges),
        // Unpacked on the host: the vmlinux is not at hand here.
        (ImageFormat::BzImage, _) if options.unpack_bzimage && unpacks(image) => {}
        (ImageFormat::BzImage, _) => {
            assert_eq!(image_ranges.len(), 1);
            let setup_sects = match image[0x1f1] {
                0 => 4,
                n => usize::from(n),
            };
            let kernel = &image[(setup_sects + 1) * 512..];
            let (load, len) = image_ranges[0];
            assert_eq!((load, len), (layout::HIGH_MEMORY_START, kernel.len() as u64));
            assert!(read(ram, load, kernel.len()) == kernel, "bzImage kernel overwritten");
        }
    }
    if loaded.protocol.is_linux() {
        let text = options.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
        let expected = Cmdline::try_from(text, 0x1_0000).unwrap().as_cstring().unwrap();
        let expected = expected.as_bytes_with_nul();
        let got = read(ram, layout::CMDLINE_START, expected.len());
        assert!(got == expected, "command line overwritten: {got:?}");
    }
    if loaded.protocol == BootProtocol::Multiboot {
        let mbi = layout::MULTIBOOT_INFO_START;
        let flags = read_u32(ram, mbi);
        assert_eq!(flags & (1 << 2), 1 << 2, "no command line in the multiboot information");
        let text = options.cmdline.as_deref().unwrap_or("");
        let text = text.split('\0').next().unwrap_or_default().as_bytes();
        let got = read_cstr(ram, u64::from(read_u32(ram, mbi + 16)));
        assert!(got == text, "multiboot command line {got:?}");
        if with_initrd {
            assert_eq!(read_u32(ram, mbi + 20), 1, "mods_count");
            let module = u64::from(read_u32(ram, mbi + 24));
            let (start, end) = (read_u32(ram, module), read_u32(ram, module + 4));
            let range = *loaded.ranges.last().unwrap();
            let size = end.checked_sub(start).expect("module 0 ends before its start");
            assert_eq!((u64::from(start), u64::from(size)), range, "module 0");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let mut input = Input::new(data);
    let sizing = input.u8();
    let flags = input.u8();
    let more = input.u8();
    let cmdline_len = usize::from(input.u8()) | usize::from(more >> 2 & 0xf) << 8;
    let load_addr = u64::from(input.u32());
    let entry = input.u64();
    let cmdline = input.bytes(cmdline_len);
    let image = input.rest();

    let ram_mib = 2 + u64::from(sizing & 31) % 31;
    let cpus = 1 + (sizing >> 5);
    let boot = match flags & 7 {
        1 => BootProtocol::Bare,
        2 => BootProtocol::Pvh,
        3 => BootProtocol::Linux64,
        4 => BootProtocol::Multiboot,
        _ => BootProtocol::Auto,
    };
    let initrd = match flags >> 3 & 7 {
        0..=3 => None,
        n => Some(&initrds()[usize::from(n - 4)]),
    };
    let options = LoadOptions {
        load_addr: (more & 1 != 0).then_some(load_addr),
        entry: (more & 2 != 0).then_some(entry),
        boot,
        cmdline: (flags & 0x40 != 0).then(|| String::from_utf8_lossy(cmdline).into_owned()),
        initrd: initrd.map(|(path, _)| path.clone()),
        unpack_bzimage: flags & 0x80 != 0,
        // The machine's ACPI tables are not part of this target.
        acpi_rsdp: None,
    };
    let ram = GuestRam::new(ram_mib).expect("guest RAM");
    let result = vmm_loader::load_bytes(&ram, image, &options);
    if vmm_fuzz::verbose() {
        eprintln!("{ram_mib} MiB, {options:?}: {result:x?}");
    }
    if let Ok(loaded) = result {
        check(&ram, image, &options, initrd.map(|(_, bytes)| &bytes[..]), cpus, &loaded);
    }
});
