//! Fixed guest-physical addresses of the x86-64 machine.
//!
//! Everything that places data at a fixed guest-physical address takes it from
//! here, so that no two components pick overlapping spots. The low addresses
//! follow the conventions of the Linux x86 boot protocol
//! (Documentation/arch/x86/boot.rst) and of the other rust-vmm based VMMs.

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// The 64-bit GDT the VMM builds for long-mode entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of 8-byte entries in the boot GDT (null, code64, data, TSS, code32).
pub const BOOT_GDT_ENTRIES: u64 = 5;
/// An empty IDT loaded on 32- and 64-bit entry: any exception then triple-faults.
pub const BOOT_IDT_START: u64 = 0x540;
/// PVH `hvm_start_info`, followed by its memory map (xen/include/public/arch-x86/hvm/start_info.h).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map table (after the 56-byte start info).
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6800;
/// The Linux "zero page" (`struct boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for 64-bit entry (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The multiboot information structure (Multiboot Specification 0.6.96,
/// section 3.3), followed by its memory map, module list and strings, all in
/// the page [`MULTIBOOT_INFO_START`]..[`MULTIBOOT_AREA_END`]. That page lies
/// below [`BOOT_AREA_END`], so no image (whose segments must load at or above
/// it) can overlap it; it is clear of page 0 (IVT, BDA), the GDT/IDT, the PVH
/// and zero-page structures and the page tables at [`PML4_START`]; the
/// 64-bit boot stack that ends at [`BOOT_STACK_POINTER`] shares it, but a
/// multiboot kernel starts in 32-bit mode without a VMM stack, so never both.
pub const MULTIBOOT_INFO_START: u64 = 0x8000;
/// The multiboot memory map (entries of 24 bytes, after the 88-byte info).
pub const MULTIBOOT_MMAP_START: u64 = 0x8080;
/// The multiboot module list (16 bytes per module).
pub const MULTIBOOT_MODS_START: u64 = 0x8180;
/// The strings of the multiboot information (boot loader name, module
/// names, command line), up to [`MULTIBOOT_AREA_END`].
pub const MULTIBOOT_STRINGS_START: u64 = 0x8200;
/// End (exclusive) of the multiboot information area.
pub const MULTIBOOT_AREA_END: u64 = PML4_START;
/// Level-4 page map of the identity page tables.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (one per identity-mapped GiB).
pub const PDE_START: u64 = 0xb000;
/// GiBs identity-mapped with 2 MiB pages for 64-bit entry.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// End of the area reserved for boot structures (exclusive). 64-bit images
/// may not load below it, or the page tables would overwrite them.
pub const BOOT_AREA_END: u64 = PDE_START + IDENTITY_MAPPED_GIB * 0x1000;

/// Default load address of raw (flat binary) images, run in real mode.
pub const RAW_IMAGE_DEFAULT_LOAD: u64 = 0x1000;
/// The highest address real-mode code can reach with a segment base below 1 MiB.
pub const REAL_MODE_LIMIT: u64 = MIB;

/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Room reserved for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;
/// Start of the extended BIOS data area: from here to 1 MiB is reserved in
/// the memory map, as on a PC (the MP table lives at its start).
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the Intel MP table (floating pointer and configuration table) goes.
pub const MPTABLE_START: u64 = EBDA_START;
/// The ACPI tables, from the RSDP on: in the BIOS area (reserved in the
/// memory map), where a guest's legacy scan for "RSD PTR " looks
/// (0xe0000-0xfffff), so that every boot protocol finds them.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// End (exclusive) of the room for the ACPI tables.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// The ACPI sleep control register (hardware-reduced ACPI, an I/O port).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// The ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// The ACPI reset register.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// What the guest writes to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0xfe;
/// The sleep type of S5 (soft off), as the DSDT's `\_S5` says.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// First address above the legacy BIOS area.
pub const HIGH_MEMORY_START: u64 = MIB;
/// The local APIC's default MMIO base.
pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// The I/O APIC's default MMIO base.
pub const IOAPIC_DEFAULT_BASE: u64 = 0xfec0_0000;

/// Start of the hole below 4 GiB that is left unbacked for MMIO devices
/// (where a PC has its PCI window, LAPIC and IOAPIC).
pub const MMIO_HOLE_START: u64 = 3 * GIB;
/// End of the MMIO hole (exclusive); RAM continues here.
pub const MMIO_HOLE_END: u64 = 4 * GIB;
/// Start of the window of virtio-mmio devices, inside the hole: one 4 KiB
/// slot per device (as in rust-vmm's vmm-reference).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of the virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x10_0000;
/// The first interrupt (I/O APIC pin, GSI) given to virtio-mmio devices:
/// above the PC's COM1 (4); up to 23, the in-kernel I/O APIC's last pin.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The last interrupt given to virtio-mmio devices.
pub const VIRTIO_LAST_GSI: u32 = 23;
/// Address of KVM's three-page TSS area (KVM_SET_TSS_ADDR), inside the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address of KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR), inside the hole.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The guest-physical ranges the VMM writes boot data into, as (start, end
/// exclusive, what): no image may load over them.
pub const BOOT_DATA_RANGES: [(u64, u64, &str); 3] = [
    (0, BOOT_AREA_END, "the VMM's boot structures (GDT, page tables, boot information)"),
    (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE, "the kernel command line"),
    (EBDA_START, HIGH_MEMORY_START, "the EBDA and BIOS area (MP table)"),
];
