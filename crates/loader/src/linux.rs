//! The Linux boot protocols: the 64-bit protocol with a "zero page"
//! (Documentation/arch/x86/boot.rst), for bzImage and vmlinux, and PVH
//! (xen/include/public/arch-x86/hvm/start_info.h), for a vmlinux with a
//! XEN_ELFNOTE_PHYS32_ENTRY note. linux-loader loads the images and writes
//! the structures; this module validates, places and fills them.

use std::io::Cursor;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{GuestRam, layout};

use crate::{Error, Result};

/// The command line used when none is given: the VMM's console, and a
/// reboot through the i8042 that ends the VMM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// COMMAND_LINE_SIZE of x86 Linux (terminating NUL included), for images
/// that do not state their own limit.
pub const VMLINUX_CMDLINE_MAX: usize = 2048;
/// Highest initrd address for images that do not state theirs.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
const LOADFLAGS_LOADED_HIGH: u8 = 0x01;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;
const XLF_KERNEL_64: u16 = 0x01;
/// Protocol 2.12 introduced xloadflags, and with it XLF_KERNEL_64.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// End of the real-mode heap for the setup code, relative to the setup segment.
const SETUP_HEAP_END: u16 = 0xfe00;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 0x1000;

/// The setup header fields the checks need, read from the raw image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BzImageHeader {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub pref_address: u64,
    pub init_size: u32,
}

fn field<const N: usize>(image: &[u8], offset: usize) -> Result<[u8; N]> {
    image.get(offset..offset + N).and_then(|bytes| bytes.try_into().ok()).ok_or_else(|| {
        Error::InvalidBzImage(format!("truncated: the setup header ends past byte {}", image.len()))
    })
}

impl BzImageHeader {
    /// Reads and checks the setup header of a bzImage.
    pub(crate) fn parse(image: &[u8]) -> Result<Self> {
        let header = BzImageHeader {
            setup_sects: field::<1>(image, 0x1f1)?[0],
            version: u16::from_le_bytes(field(image, 0x206)?),
            loadflags: field::<1>(image, 0x211)?[0],
            initrd_addr_max: u32::from_le_bytes(field(image, 0x22c)?),
            xloadflags: u16::from_le_bytes(field(image, 0x236)?),
            cmdline_size: u32::from_le_bytes(field(image, 0x238)?),
            pref_address: u64::from_le_bytes(field(image, 0x258)?),
            init_size: u32::from_le_bytes(field(image, 0x260)?),
        };
        if header.version < MIN_BZIMAGE_PROTOCOL {
            return Err(Error::InvalidBzImage(format!(
                "boot protocol {}.{:02} is too old; the 64-bit entry needs 2.12 or later",
                header.version >> 8,
                header.version & 0xff
            )));
        }
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(Error::InvalidBzImage("the kernel has no 64-bit entry point".into()));
        }
        if header.loadflags & LOADFLAGS_LOADED_HIGH == 0 {
            return Err(Error::InvalidBzImage("the kernel does not load at 1 MiB (zImage)".into()));
        }
        let setup_end = (usize::from(header.setup_sects.max(4)) + 1) * 512;
        if setup_end >= image.len() {
            return Err(Error::InvalidBzImage(format!(
                "setup_sects {} puts the kernel past the end of the file ({} bytes)",
                header.setup_sects,
                image.len()
            )));
        }
        Ok(header)
    }

    /// The longest command line the kernel accepts, without the NUL
    /// (`cmdline_size` counts no NUL), within the room the VMM reserves.
    pub(crate) fn cmdline_max(&self) -> usize {
        (self.cmdline_size as usize).min(layout::CMDLINE_MAX_SIZE as usize - 1)
    }
}

/// Where the kernel and the initrd ended up.
#[derive(Debug, Clone)]
pub struct LinuxImage {
    /// The kernel's entry point.
    pub entry: u64,
    /// Guest-physical ranges written, as (start, length).
    pub ranges: Vec<(u64, u64)>,
}

/// A command line checked against a kernel's limit.
fn checked_cmdline(cmdline: &str, max_len: usize) -> Result<Cmdline> {
    if cmdline.len() > max_len {
        return Err(Error::CmdlineTooLong { len: cmdline.len(), max: max_len });
    }
    Cmdline::try_from(cmdline, max_len + 1).map_err(|err| Error::InvalidCmdline(err.to_string()))
}

/// Reads the initrd and places it as high as allowed: page-aligned, below
/// `addr_max` and the end of low RAM, above `kernel_end`.
fn load_initrd(ram: &GuestRam, path: &Path, kernel_end: u64, addr_max: u64) -> Result<(u64, u64)> {
    let metadata =
        std::fs::metadata(path).map_err(|source| Error::Open { path: path.to_owned(), source })?;
    if !metadata.is_file() {
        return Err(Error::NotAFile(path.to_owned()));
    }
    let size = metadata.len();
    if size == 0 {
        return Err(Error::Empty(path.to_owned()));
    }
    let top = ram.low_ram_end().min(addr_max.saturating_add(1));
    let lowest = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let address = top.checked_sub(size).map(|a| a & !(PAGE_SIZE - 1)).filter(|&a| a >= lowest);
    let Some(address) = address else {
        return Err(Error::InitrdDoesNotFit { path: path.to_owned(), size, from: lowest, to: top });
    };
    // Read only once it is known to fit.
    let bytes =
        std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    if bytes.len() as u64 != size {
        let changed = std::io::Error::other("the file changed size while being read");
        return Err(Error::Read { path: path.to_owned(), source: changed });
    }
    ram.memory().write_slice(&bytes, GuestAddress(address))?;
    log::info!("initrd: {size} bytes at {address:#x}");
    Ok((address, size))
}

fn e820_table(ram: &GuestRam) -> Vec<(u64, u64, u32)> {
    ram.e820_map().iter().map(|e| (e.start, e.size, e.kind.e820_type())).collect()
}

/// Writes the zero page for the 64-bit boot protocol.
fn write_zero_page(
    ram: &GuestRam,
    mut hdr: setup_header,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<()> {
    let mut params = boot_params { acpi_rsdp_addr: rsdp.unwrap_or(0), ..Default::default() };
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    hdr.cmdline_size = cmdline.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0) as u32;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some((address, size)) = initrd {
        hdr.ramdisk_image = address as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    let table = e820_table(ram);
    if table.len() > params.e820_table.len() {
        return Err(Error::InvalidCmdline("memory map has too many entries".into()));
    }
    for (slot, &(addr, size, kind)) in params.e820_table.iter_mut().zip(&table) {
        *slot = boot_e820_entry { addr, size, r#type: kind };
    }
    params.e820_entries = table.len() as u8;
    load_cmdline(ram.memory(), GuestAddress(layout::CMDLINE_START), cmdline)?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        ram.memory(),
    )
    .map_err(|err| Error::BootParams(err.to_string()))
}

/// Loads a bzImage for the 64-bit boot protocol.
pub(crate) fn load_bzimage(
    ram: &GuestRam,
    image: &[u8],
    cmdline: &str,
    initrd: Option<&Path>,
    rsdp: Option<u64>,
) -> Result<LinuxImage> {
    let header = BzImageHeader::parse(image)?;
    let cmdline = checked_cmdline(cmdline, header.cmdline_max())?;
    let needed = header.pref_address.saturating_add(u64::from(header.init_size));
    if needed > ram.low_ram_end() {
        return Err(Error::KernelDoesNotFit { needed, ram: ram.low_ram_end() });
    }
    // At 1 MiB, as the boot protocol says, whatever code32_start claims.
    let result = BzImage::load(
        ram.memory(),
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
        &mut Cursor::new(image),
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    )?;
    let load = result.kernel_load.0;
    let Some(mut hdr) = result.setup_header else {
        return Err(Error::InvalidBzImage("linux-loader returned no setup header".into()));
    };
    hdr.heap_end_ptr = SETUP_HEAP_END;
    hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
    let kernel_end = result.kernel_end.max(needed);
    let initrd_max = match header.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        max => u64::from(max),
    };
    let initrd = initrd.map(|path| load_initrd(ram, path, kernel_end, initrd_max)).transpose()?;
    write_zero_page(ram, hdr, &cmdline, initrd, rsdp)?;
    let mut ranges = vec![(load, result.kernel_end - load)];
    ranges.extend(initrd);
    let entry = load + BZIMAGE_64BIT_ENTRY_OFFSET;
    if !ram.contains_range(entry, 1) {
        return Err(Error::BadEntry { entry, reason: "the 64-bit entry is outside guest RAM" });
    }
    Ok(LinuxImage { entry, ranges })
}

/// Checks a vmlinux's command line and loads its initrd: an ELF kernel
/// states no limits of its own, so x86's defaults apply.
fn vmlinux_cmdline_and_initrd(
    ram: &GuestRam,
    kernel_end: u64,
    cmdline: &str,
    initrd: Option<&Path>,
) -> Result<(Cmdline, Option<(u64, u64)>)> {
    let cmdline = checked_cmdline(cmdline, VMLINUX_CMDLINE_MAX - 1)?;
    let initrd = initrd
        .map(|path| load_initrd(ram, path, kernel_end, DEFAULT_INITRD_ADDR_MAX))
        .transpose()?;
    Ok((cmdline, initrd))
}

/// Boots an already loaded vmlinux ELF through the 64-bit protocol.
pub(crate) fn setup_vmlinux(
    ram: &GuestRam,
    kernel_end: u64,
    cmdline: &str,
    initrd: Option<&Path>,
    rsdp: Option<u64>,
) -> Result<Vec<(u64, u64)>> {
    let (cmdline, initrd) = vmlinux_cmdline_and_initrd(ram, kernel_end, cmdline, initrd)?;
    write_zero_page(ram, setup_header::default(), &cmdline, initrd, rsdp)?;
    Ok(initrd.into_iter().collect())
}

/// Boots an already loaded vmlinux ELF through PVH: writes `hvm_start_info`
/// with the memory map, the command line and the initrd as module 0.
pub(crate) fn setup_pvh(
    ram: &GuestRam,
    kernel_end: u64,
    cmdline: &str,
    initrd: Option<&Path>,
    rsdp: Option<u64>,
) -> Result<Vec<(u64, u64)>> {
    let (cmdline, initrd) = vmlinux_cmdline_and_initrd(ram, kernel_end, cmdline, initrd)?;
    load_cmdline(ram.memory(), GuestAddress(layout::CMDLINE_START), &cmdline)?;
    let memmap: Vec<hvm_memmap_table_entry> = e820_table(ram)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry { addr, size, type_, reserved: 0 })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { layout::PVH_MODLIST_START } else { 0 },
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry { paddr, size, ..Default::default() };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, ram.memory())
        .map_err(|err| Error::BootParams(err.to_string()))?;
    Ok(initrd.into_iter().collect())
}

/// The memory-map kind of a zero-page or PVH entry, for tests.
#[cfg(test)]
fn kind_of(type_: u32) -> vmm_memory::MemoryKind {
    use vmm_memory::MemoryKind;
    if type_ == 1 { MemoryKind::Ram } else { MemoryKind::Reserved }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header of protocol `version`, 4 setup
    /// sectors, and a few bytes of "kernel".
    pub(crate) fn tiny_bzimage(version: u16) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512 + 0x400];
        image[0x1f1] = 4;
        image[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = LOADFLAGS_LOADED_HIGH;
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        image[0x234] = 1;
        image[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        image[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image
    }

    #[test]
    fn bzimage_boots_at_the_64_bit_entry_with_a_zero_page() {
        let ram = GuestRam::new(64).unwrap();
        let image = tiny_bzimage(0x020f);
        let loaded = load_bzimage(&ram, &image, "console=ttyS0", None, Some(0xe_0000)).unwrap();
        assert_eq!(loaded.entry, 0x10_0200);
        let params: boot_params =
            ram.memory().read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ hdr.heap_end_ptr }, 0xfe00);
        assert_ne!(hdr.loadflags & LOADFLAGS_CAN_USE_HEAP, 0);
        assert_eq!(params.e820_entries, 3);
        let last = params.e820_table[2];
        assert_eq!(
            (last.addr, last.size, kind_of(last.r#type)),
            (1 << 20, 63 << 20, vmm_memory::MemoryKind::Ram)
        );
        let mut cmdline = [0u8; 14];
        ram.memory().read_slice(&mut cmdline, GuestAddress(layout::CMDLINE_START)).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
    }

    #[test]
    fn old_or_32_bit_only_bzimage_is_rejected() {
        let err = BzImageHeader::parse(&tiny_bzimage(0x0206)).unwrap_err();
        assert!(err.to_string().contains("boot protocol 2.06 is too old"), "{err}");
        // A kernel that is not relocatable still boots: it is loaded at the
        // address it was linked for.
        let mut image = tiny_bzimage(0x020f);
        image[0x234] = 0;
        assert!(BzImageHeader::parse(&image).is_ok());
        let mut image = tiny_bzimage(0x020f);
        image[0x236] = 0;
        assert!(BzImageHeader::parse(&image).unwrap_err().to_string().contains("no 64-bit entry"));
    }

    #[test]
    fn absurd_setup_sects_is_rejected() {
        let mut image = tiny_bzimage(0x020f);
        image[0x1f1] = 200;
        let err = BzImageHeader::parse(&image).unwrap_err();
        assert!(err.to_string().contains("setup_sects 200"), "{err}");
        let err = BzImageHeader::parse(&image[..0x210]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn kernel_that_does_not_fit_is_rejected() {
        let ram = GuestRam::new(16).unwrap();
        let err = load_bzimage(&ram, &tiny_bzimage(0x020f), "", None, None).unwrap_err();
        assert!(matches!(err, Error::KernelDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_rejected() {
        let ram = GuestRam::new(64).unwrap();
        let long = "x".repeat(2048);
        let err = load_bzimage(&ram, &tiny_bzimage(0x020f), &long, None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the command line is 2048 bytes long, but the kernel accepts at most 2047"
        );
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let ram = GuestRam::new(64).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-initrd-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let (address, size) = load_initrd(&ram, &path, 0x20_0000, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!((address, size), ((64 << 20) - 0x2000, 5000));
        let err =
            load_initrd(&ram, &path, (64 << 20) - 0x1000, DEFAULT_INITRD_ADDR_MAX).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn pvh_start_info_describes_memory_cmdline_and_initrd() {
        let ram = GuestRam::new(64).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-pvh-initrd-{}", std::process::id()));
        std::fs::write(&path, b"initrd").unwrap();
        let ranges = setup_pvh(&ram, 0x20_0000, "quiet", Some(&path), Some(0xe_0000)).unwrap();
        std::fs::remove_file(&path).unwrap();
        let info: hvm_start_info =
            ram.memory().read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!((info.nr_modules, info.memmap_entries), (1, 3));
        assert_eq!({ info.rsdp_paddr }, 0xe_0000);
        let module: hvm_modlist_entry =
            ram.memory().read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (ranges[0].0, 6));
        let entry: hvm_memmap_table_entry =
            ram.memory().read_obj(GuestAddress(info.memmap_paddr + 2 * 24)).unwrap();
        assert_eq!((entry.addr, entry.type_), (1 << 20, 1));
    }
}
