#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod layout;
pub mod snapshot;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub use vm_memory;

/// Errors from sizing, mapping or registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size was zero.
    #[error("guest memory size must be at least 1 MiB, got 0")]
    ZeroSize,
    /// The requested size overflows the guest-physical address space.
    #[error("guest memory size of {0} MiB is too large for the guest-physical address space")]
    TooLarge(u64),
    /// The host refused to map the memory.
    #[error("cannot map {size_mib} MiB of guest RAM on the host: {source}")]
    Map {
        /// Requested size in MiB.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {guest_addr:#x}): {source}")]
    RegisterSlot {
        /// Slot index.
        slot: u32,
        /// Guest-physical start.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What an entry of the memory map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (e820 type 1).
    Ram,
    /// Reserved, not RAM (e820 type 2).
    Reserved,
}

impl MemoryKind {
    /// The e820 type number of this kind.
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryKind::Ram => 1,
            MemoryKind::Reserved => 2,
        }
    }
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: MemoryKind,
}

/// Computes the RAM ranges for `size` bytes: below the MMIO hole first, the
/// rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= layout::MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![(0, layout::MMIO_HOLE_START), (layout::MMIO_HOLE_END, size - layout::MMIO_HOLE_START)]
    }
}

/// The guest's RAM.
#[derive(Debug, Clone)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Maps `size_mib` MiB of anonymous guest RAM. Pages are backed lazily, so
    /// a large guest costs host memory only for what it touches.
    pub fn new(size_mib: u64) -> Result<Self> {
        if size_mib == 0 {
            return Err(Error::ZeroSize);
        }
        let size = size_mib
            .checked_mul(layout::MIB)
            .filter(|size| {
                // The highest address must be representable, above the hole too.
                size.checked_add(layout::MMIO_HOLE_END).is_some()
            })
            .ok_or(Error::TooLarge(size_mib))?;
        let mut ranges = Vec::new();
        for (start, len) in ram_ranges(size) {
            let len = usize::try_from(len).map_err(|_| Error::TooLarge(size_mib))?;
            ranges.push((GuestAddress(start), len));
        }
        let memory = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|source| Error::Map { size_mib, source })?;
        log::debug!("mapped {size_mib} MiB of guest RAM in {} region(s)", ranges.len());
        Ok(GuestRam { memory, size })
    }

    /// The vm-memory view of the RAM, for loaders and devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Total RAM in bytes (the hole not included).
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// The end (exclusive) of RAM below the MMIO hole.
    pub fn low_ram_end(&self) -> u64 {
        self.size.min(layout::MMIO_HOLE_START)
    }

    /// True when `[start, start + len)` lies entirely inside one RAM region.
    pub fn contains_range(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        ram_ranges(self.size).iter().any(|&(base, size)| start >= base && end <= base + size)
    }

    /// The guest's physical memory map, sorted by address: low RAM up to
    /// the EBDA, the legacy BIOS area (reserved) up to 1 MiB, RAM, the MMIO
    /// hole (reserved) when RAM reaches it, and RAM above 4 GiB. A guest of
    /// 1 MiB or less gets its RAM as one entry.
    pub fn e820_map(&self) -> Vec<MemoryMapEntry> {
        let mut map = Vec::new();
        for region in self.memory.iter() {
            let start = region.start_addr().raw_value();
            if start == 0 && region.len() > layout::HIGH_MEMORY_START {
                map.push(MemoryMapEntry {
                    start: 0,
                    size: layout::EBDA_START,
                    kind: MemoryKind::Ram,
                });
                map.push(MemoryMapEntry {
                    start: layout::EBDA_START,
                    size: layout::HIGH_MEMORY_START - layout::EBDA_START,
                    kind: MemoryKind::Reserved,
                });
                map.push(MemoryMapEntry {
                    start: layout::HIGH_MEMORY_START,
                    size: region.len() - layout::HIGH_MEMORY_START,
                    kind: MemoryKind::Ram,
                });
                continue;
            }
            if start == layout::MMIO_HOLE_END {
                map.push(MemoryMapEntry {
                    start: layout::MMIO_HOLE_START,
                    size: layout::MMIO_HOLE_END - layout::MMIO_HOLE_START,
                    kind: MemoryKind::Reserved,
                });
            }
            map.push(MemoryMapEntry { start, size: region.len(), kind: MemoryKind::Ram });
        }
        map
    }

    /// The KVM memory slots that describe this RAM, one per region.
    pub fn kvm_regions(&self) -> Vec<kvm_userspace_memory_region> {
        self.memory
            .iter()
            .enumerate()
            .map(|(slot, region)| kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            })
            .collect()
    }

    /// Registers every region with `vm` as a KVM memory slot.
    ///
    /// # Safety
    ///
    /// KVM keeps writing to this memory for as long as the VM exists. The
    /// caller must keep this `GuestRam` (or a clone of it, which shares the
    /// mappings) alive until `vm` is closed.
    pub unsafe fn register(&self, vm: &VmFd) -> Result<()> {
        for region in self.kvm_regions() {
            // SAFETY: the region describes a live mapping owned by `self.memory`,
            // and the caller promises it outlives the VM (see `# Safety`).
            unsafe { vm.set_user_memory_region(region) }.map_err(|source| Error::RegisterSlot {
                slot: region.slot,
                guest_addr: region.guest_phys_addr,
                size: region.memory_size,
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_size_is_rejected() {
        assert!(matches!(GuestRam::new(0), Err(Error::ZeroSize)));
    }

    #[test]
    fn size_overflowing_the_address_space_is_rejected() {
        assert!(matches!(GuestRam::new(u64::MAX), Err(Error::TooLarge(_))));
        assert!(matches!(GuestRam::new(u64::MAX >> 20), Err(Error::TooLarge(_))));
    }

    #[test]
    fn size_the_host_cannot_map_is_a_map_error() {
        // 2^46 MiB = 64 EiB of virtual address space: no host can map it.
        let err = GuestRam::new(1 << 43).unwrap_err();
        assert!(matches!(err, Error::Map { .. }), "{err}");
        assert!(err.to_string().contains("cannot map"));
    }

    #[test]
    fn small_ram_is_one_region_from_zero() {
        let ram = GuestRam::new(128).unwrap();
        assert_eq!(ram.memory().num_regions(), 1);
        assert_eq!(
            ram.e820_map(),
            vec![
                entry(0, 0x9_fc00, MemoryKind::Ram),
                entry(0x9_fc00, 0x6_0400, MemoryKind::Reserved),
                entry(1 << 20, 127 << 20, MemoryKind::Ram),
            ]
        );
        assert_eq!(ram.low_ram_end(), 128 << 20);
        let tiny = GuestRam::new(1).unwrap();
        assert_eq!(tiny.e820_map(), vec![entry(0, 1 << 20, MemoryKind::Ram)]);
    }

    fn entry(start: u64, size: u64, kind: MemoryKind) -> MemoryMapEntry {
        MemoryMapEntry { start, size, kind }
    }

    #[test]
    fn large_ram_skips_the_mmio_hole() {
        let ram = GuestRam::new(4096).unwrap();
        let map = ram.e820_map();
        assert_eq!(map.len(), 5);
        assert_eq!(map[2], entry(1 << 20, (3 << 30) - (1 << 20), MemoryKind::Ram));
        assert_eq!(map[3], entry(3 << 30, 1 << 30, MemoryKind::Reserved));
        assert_eq!(map[4], entry(4 << 30, 1 << 30, MemoryKind::Ram));
        assert_eq!(ram.size_bytes(), 4 << 30);
        assert_eq!(ram.low_ram_end(), 3 << 30);
        // The hole really is unbacked.
        assert!(ram.memory().write_obj(1u8, GuestAddress(layout::MMIO_HOLE_START)).is_err());
        assert!(ram.memory().write_obj(1u8, GuestAddress(layout::MMIO_HOLE_END)).is_ok());
    }

    #[test]
    fn contains_range_checks_bounds_and_overflow() {
        let ram = GuestRam::new(1).unwrap();
        assert!(ram.contains_range(0, 1 << 20));
        assert!(!ram.contains_range(1, 1 << 20));
        assert!(!ram.contains_range(u64::MAX, 2));
        let big = GuestRam::new(4096).unwrap();
        assert!(!big.contains_range(layout::MMIO_HOLE_START - 1, 2));
        assert!(big.contains_range(layout::MMIO_HOLE_END, 1 << 30));
    }

    #[test]
    fn kvm_regions_point_at_the_host_mappings() {
        let ram = GuestRam::new(4096).unwrap();
        let regions = ram.kvm_regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].slot, 0);
        assert_eq!(regions[1].slot, 1);
        assert_eq!(regions[1].guest_phys_addr, 4 << 30);
        let host = ram.memory().get_host_address(GuestAddress(4 << 30)).unwrap();
        assert_eq!(regions[1].userspace_addr, host as u64);
    }
}
