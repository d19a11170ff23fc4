//! ACPI tables (ACPI 6.5) for a hardware-reduced x86 machine, on rust-vmm's
//! `acpi_tables`: RSDP, XSDT, FADT, MADT and a DSDT that announces the
//! serial port and the virtio-mmio devices and holds the `\_S5` package.
//!
//! They go in the BIOS area from [`layout::ACPI_TABLES_START`], which the
//! memory map reserves and the guest's legacy scan for the RSDP covers; the
//! boot protocols also pass the RSDP's address (PVH's `rsdp_paddr`, the
//! zero page's `acpi_rsdp_addr`).

use acpi_tables::Aml;
use acpi_tables::aml::{self, EISAName, Path};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{GuestRam, layout};

use crate::{Error, Result};

const OEM_ID: [u8; 6] = *b"RSTVMM";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;
/// Tables start on 16-byte boundaries.
const ALIGN: u64 = 16;
/// Size of an SDT header.
const HEADER_LEN: u32 = 36;
/// The DSDT's revision: 2 and up means 64-bit integers in AML.
const DSDT_REVISION: u8 = 6;

/// What the tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiMachine {
    /// vCPUs: local APIC ids 0..cpus; the I/O APIC takes id `cpus`.
    pub cpus: u8,
    /// The serial port: its first port and its interrupt.
    pub serial: Option<(u16, u32)>,
    /// Each virtio-mmio device: the base of its 4 KiB window and its GSI.
    pub virtio: Vec<(u64, u32)>,
}

/// The DSDT's AML: COM1, the virtio-mmio devices, `\_S5`.
fn dsdt(machine: &AcpiMachine) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some((port, irq)) = machine.serial {
        let io = aml::IO::new(port, port, 1, 8);
        let interrupt = aml::Interrupt::new(true, true, false, false, irq);
        let resources = aml::ResourceTemplate::new(vec![&io, &interrupt]);
        let hid = EISAName::new("PNP0501");
        aml::Device::new(
            Path::new("_SB_.COM1"),
            vec![
                &aml::Name::new(Path::new("_HID"), &hid),
                &aml::Name::new(Path::new("_UID"), &aml::ZERO),
                &aml::Name::new(Path::new("_CRS"), &resources),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    for (index, &(base, gsi)) in machine.virtio.iter().enumerate() {
        // Linux's virtio_mmio driver binds to this id (drivers/virtio/virtio_mmio.c).
        let hid: aml::AmlStr = "LNRO0005";
        let window = aml::Memory32Fixed::new(true, base as u32, 0x1000);
        let interrupt = aml::Interrupt::new(true, true, false, false, gsi);
        let resources = aml::ResourceTemplate::new(vec![&window, &interrupt]);
        let uid = index as u32;
        aml::Device::new(
            Path::new(&format!("_SB_.V{index:03X}")),
            vec![
                &aml::Name::new(Path::new("_HID"), &hid),
                &aml::Name::new(Path::new("_UID"), &uid),
                &aml::Name::new(Path::new("_CRS"), &resources),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    let s5 = aml::Package::new(vec![&layout::ACPI_S5_SLEEP_TYPE]);
    aml::Name::new(Path::new("_S5_"), &s5).to_aml_bytes(&mut body);

    let mut table =
        Sdt::new(*b"DSDT", HEADER_LEN, DSDT_REVISION, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.update_checksum();
    table.as_slice().to_vec()
}

fn io_register(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

fn fadt(dsdt_address: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = io_register(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io_register(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_DEFAULT_BASE as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC_DEFAULT_BASE as u32, 0));
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes
}

fn align(address: u64) -> u64 {
    address.div_ceil(ALIGN) * ALIGN
}

/// Builds the tables for `machine`, laid out from `base`: the RSDP at
/// `base`, then the DSDT, FADT, MADT and XSDT. Returns the bytes to write
/// at `base`.
pub fn build(machine: &AcpiMachine, base: u64) -> Result<Vec<u8>> {
    if machine.cpus == 0 || machine.cpus > crate::mptable::MAX_CPUS {
        return Err(Error::Acpi(format!(
            "{} CPUs; the MADT takes 1 to {} (8-bit APIC ids, one for the I/O APIC)",
            machine.cpus,
            crate::mptable::MAX_CPUS
        )));
    }
    let dsdt_at = align(base + Rsdp::len() as u64);
    let dsdt = dsdt(machine);
    let fadt_at = align(dsdt_at + dsdt.len() as u64);
    let fadt = fadt(dsdt_at);
    let madt_at = align(fadt_at + fadt.len() as u64);
    let madt = madt(machine.cpus);
    let xsdt_at = align(madt_at + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_at).to_aml_bytes(&mut rsdp);

    let mut image = vec![0u8; (xsdt_at - base) as usize + xsdt_bytes.len()];
    for (at, bytes) in [
        (base, &rsdp),
        (dsdt_at, &dsdt),
        (fadt_at, &fadt),
        (madt_at, &madt),
        (xsdt_at, &xsdt_bytes),
    ] {
        let start = (at - base) as usize;
        image[start..start + bytes.len()].copy_from_slice(bytes);
    }
    Ok(image)
}

/// Writes the tables for `machine` at [`layout::ACPI_TABLES_START`] and
/// returns the RSDP's address.
pub fn write(ram: &GuestRam, machine: &AcpiMachine) -> Result<u64> {
    let base = layout::ACPI_TABLES_START;
    let bytes = build(machine, base)?;
    if base + bytes.len() as u64 > layout::ACPI_TABLES_END {
        return Err(Error::Acpi(format!(
            "the ACPI tables take {} bytes, more than the {} bytes of the BIOS area",
            bytes.len(),
            layout::ACPI_TABLES_END - base
        )));
    }
    if !ram.contains_range(base, bytes.len() as u64) {
        return Err(Error::Acpi("guest RAM ends before the BIOS area".into()));
    }
    ram.memory().write_slice(&bytes, GuestAddress(base))?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xe_0000;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// The table at guest address `at`, checked the way a guest checks it:
    /// its signature, its length in bounds and a zero checksum.
    fn table<'a>(image: &'a [u8], at: u64, signature: &[u8; 4]) -> &'a [u8] {
        let start = (at - BASE) as usize;
        assert_eq!(&image[start..start + 4], signature);
        let len = u32_at(image, start + 4) as usize;
        let table = &image[start..start + len];
        assert_eq!(sum(table), 0, "{} checksum", String::from_utf8_lossy(signature));
        table
    }

    /// Follows RSDP -> XSDT -> FADT, MADT -> DSDT as Linux does.
    fn parse(image: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        assert_eq!(&image[..8], b"RSD PTR ");
        assert_eq!(sum(&image[..20]), 0, "RSDP checksum");
        assert_eq!(u32_at(image, 20), 36);
        assert_eq!(sum(&image[..36]), 0, "RSDP extended checksum");
        assert_eq!(image[15], 2, "revision 2: the XSDT is used");
        let xsdt = table(image, u64_at(image, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len()).step_by(8).map(|at| u64_at(xsdt, at)).collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(image, entries[0], b"FACP").to_vec();
        let madt = table(image, entries[1], b"APIC").to_vec();
        let dsdt = table(image, u64_at(&fadt, 140), b"DSDT").to_vec();
        (fadt, madt, dsdt)
    }

    fn machine(cpus: u8) -> AcpiMachine {
        AcpiMachine {
            cpus,
            serial: Some((0x3f8, 4)),
            virtio: vec![(0xd000_0000, 5), (0xd000_1000, 6)],
        }
    }

    #[test]
    fn tables_link_up_and_checksum_to_zero() {
        let image = build(&machine(2), BASE).unwrap();
        let (fadt, _, dsdt) = parse(&image);
        assert_eq!(fadt[8], 6, "FADT revision");
        assert_eq!(dsdt[8], DSDT_REVISION);
    }

    #[test]
    fn the_fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let (fadt, _, _) = parse(&build(&machine(1), BASE).unwrap());
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // reset_reg (GAS at 116): system I/O, 8 bits, the reset port; then the value.
        assert_eq!(fadt[116], 1);
        assert_eq!(fadt[117], 8);
        assert_eq!(u64_at(&fadt, 120), u64::from(layout::ACPI_RESET_PORT));
        assert_eq!(fadt[128], layout::ACPI_RESET_VALUE);
        // sleep_control_reg and sleep_status_reg (GAS at 244 and 256).
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(&fadt, 248), u64::from(layout::ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(fadt[256], 1);
        assert_eq!(u64_at(&fadt, 260), u64::from(layout::ACPI_SLEEP_STATUS_PORT));
    }

    #[test]
    fn the_madt_has_a_local_apic_per_cpu_and_the_io_apic() {
        for cpus in [1u8, 2, 4, 254] {
            let (_, madt, _) = parse(&build(&machine(cpus), BASE).unwrap());
            assert_eq!(u32_at(&madt, 36), layout::APIC_DEFAULT_BASE as u32);
            let mut at = 44;
            let mut apic_ids = Vec::new();
            let mut ioapics = Vec::new();
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(&madt, at + 4) & 1, 1, "enabled");
                        apic_ids.push(madt[at + 3]);
                    }
                    1 => ioapics.push((madt[at + 2], u32_at(&madt, at + 4), u32_at(&madt, at + 8))),
                    other => panic!("unexpected MADT structure {other}"),
                }
                at += len;
            }
            assert_eq!(apic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, [(cpus, layout::IOAPIC_DEFAULT_BASE as u32, 0)]);
        }
    }

    #[test]
    fn the_dsdt_announces_com1_the_virtio_devices_and_s5() {
        let (_, _, dsdt) = parse(&build(&machine(1), BASE).unwrap());
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 2);
        assert_eq!(count(b"COM1"), 1);
        assert_eq!(count(b"_S5_"), 1);
        // Each window: a Memory32Fixed descriptor (0x86) with its base and length.
        for base in [0xd000_0000u32, 0xd000_1000] {
            let mut descriptor = vec![0x86, 9, 0, 1];
            descriptor.extend_from_slice(&base.to_le_bytes());
            descriptor.extend_from_slice(&0x1000u32.to_le_bytes());
            assert_eq!(count(&descriptor), 1, "window at {base:#x}");
        }
        // Each interrupt: an extended IRQ descriptor (0x89), edge, active high.
        for gsi in [4u32, 5, 6] {
            let mut descriptor = vec![0x89, 6, 0, 0b11, 1];
            descriptor.extend_from_slice(&gsi.to_le_bytes());
            assert_eq!(count(&descriptor), 1, "interrupt {gsi}");
        }
    }

    #[test]
    fn cpu_counts_the_madt_cannot_describe_are_errors() {
        for cpus in [0u8, 255] {
            let err = build(&machine(cpus), BASE).unwrap_err().to_string();
            assert!(err.contains(&format!("{cpus} CPUs")), "{err}");
        }
    }

    #[test]
    fn the_tables_fit_the_bios_area_even_with_254_cpus_and_19_devices() {
        let mut big = machine(254);
        big.virtio = (0..19).map(|i| (0xd000_0000 + i * 0x1000, 5 + i as u32)).collect();
        let len = build(&big, BASE).unwrap().len() as u64;
        assert!(BASE + len <= layout::ACPI_TABLES_END, "{len} bytes");
        let ram = GuestRam::new(16).unwrap();
        assert_eq!(write(&ram, &big).unwrap(), BASE);
    }
}
