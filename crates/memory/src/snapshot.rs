//! Guest RAM in a snapshot: saved to a sparse file holding only the pages
//! that are not zero, and restored by mapping that file privately.
//!
//! The file is the RAM regions back to back (low RAM, then RAM above 4 GiB),
//! `size` bytes long. [`GuestRam::save_to`] writes each run of non-zero
//! pages at its offset (`pwrite`) and sizes the file with `ftruncate`, so
//! untouched pages are holes that take no disk space. [`GuestRam::from_file`]
//! maps each region from the file with `MAP_PRIVATE`: pages load lazily, on
//! the guest's first touch, and its writes go to private copies, so the file
//! never changes and one snapshot restores any number of times.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::FileOffset;
use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::{GuestRam, layout, ram_ranges};

/// The unit of the zero-page scan.
const PAGE_SIZE: usize = 4096;

/// Errors of saving or restoring guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Writing the memory file failed.
    #[error("cannot write guest memory to the snapshot: {0}")]
    Write(std::io::Error),
    /// The memory file does not have the size of the RAM.
    #[error("the memory file holds {found} bytes, but the guest has {expected} bytes of RAM")]
    Size {
        /// The file's size.
        found: u64,
        /// The RAM's.
        expected: u64,
    },
    /// Reading the file's size failed.
    #[error("cannot read the memory file's size: {0}")]
    Stat(std::io::Error),
    /// Mapping the file failed.
    #[error("cannot map the memory file: {0}")]
    Map(String),
}

/// What [`GuestRam::save_to`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedMemory {
    /// The file's size: the RAM's.
    pub size: u64,
    /// Bytes of non-zero pages written.
    pub written: u64,
}

fn is_zero(page: &[u8]) -> bool {
    // Compare in words: the scan of a mostly empty guest is memory-bound.
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to gives the
        // aligned middle and the unaligned ends.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

impl GuestRam {
    /// Writes the RAM's non-zero pages to `file` (empty, opened for
    /// writing) at their offsets and sizes it to the RAM's size: a sparse
    /// file. The guest must not run meanwhile.
    pub fn save_to(&self, file: &File) -> Result<SavedMemory, SnapshotError> {
        let mut offset = 0u64;
        let mut written = 0u64;
        for region in self.memory.iter() {
            let len = region.len() as usize;
            let base = region.as_ptr();
            // SAFETY: the region is a live mapping of `len` bytes owned by
            // `self.memory`; the vCPUs are paused (the caller's promise), so
            // nothing writes it while this slice is read.
            let bytes = unsafe { std::slice::from_raw_parts(base.cast_const(), len) };
            let mut page = 0;
            while page < len {
                let end = (page + PAGE_SIZE).min(len);
                if is_zero(&bytes[page..end]) {
                    page = end;
                    continue;
                }
                // A run of non-zero pages, written at once.
                let start = page;
                page = end;
                while page < len {
                    let end = (page + PAGE_SIZE).min(len);
                    if is_zero(&bytes[page..end]) {
                        break;
                    }
                    page = end;
                }
                file.write_all_at(&bytes[start..page], offset + start as u64)
                    .map_err(SnapshotError::Write)?;
                written += (page - start) as u64;
            }
            offset += len as u64;
        }
        file.set_len(offset).map_err(SnapshotError::Write)?;
        Ok(SavedMemory { size: offset, written })
    }

    /// Guest RAM of `size_mib` MiB mapped privately from `file`, as
    /// [`GuestRam::save_to`] wrote it: pages load when first touched, and
    /// writes never reach the file.
    pub fn from_file(size_mib: u64, file: &File) -> Result<GuestRam, SnapshotError> {
        let size = size_mib.saturating_mul(layout::MIB);
        let found = file.metadata().map_err(SnapshotError::Stat)?.len();
        if found != size {
            return Err(SnapshotError::Size { found, expected: size });
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (start, len) in ram_ranges(size) {
            let map_err = |err: &dyn std::fmt::Display| SnapshotError::Map(err.to_string());
            let clone = file.try_clone().map_err(|err| map_err(&err))?;
            let length = usize::try_from(len).map_err(|err| map_err(&err))?;
            let mapping = MmapRegionBuilder::new(length)
                .with_file_offset(FileOffset::new(clone, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|err| map_err(&err))?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start))
                .ok_or_else(|| SnapshotError::Map(format!("region at {start:#x} overflows")))?;
            regions.push(region);
            offset += len;
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|err| SnapshotError::Map(err.to_string()))?;
        Ok(GuestRam { memory, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("vmm-memory-{}-{name}", std::process::id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path);
        (path, file.unwrap())
    }

    #[test]
    fn only_non_zero_pages_take_room_and_the_restored_ram_reads_the_same() {
        let ram = GuestRam::new(64).unwrap();
        let mem = ram.memory();
        mem.write_slice(b"low page", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0xab; 3 * PAGE_SIZE], GuestAddress(0x20_0000)).unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress((64 << 20) - 8)).unwrap();
        let (path, file) = temp_file("sparse");
        let saved = ram.save_to(&file).unwrap();
        assert_eq!(saved, SavedMemory { size: 64 << 20, written: 5 * PAGE_SIZE as u64 });
        // Sparse: the disk holds a few pages, not 64 MiB.
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

        let restored = GuestRam::from_file(64, &File::open(&path).unwrap()).unwrap();
        let rmem = restored.memory();
        let mut buf = [0u8; 8];
        rmem.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"low page");
        assert_eq!(
            rmem.read_obj::<u8>(GuestAddress(0x20_0000 + 3 * PAGE_SIZE as u64 - 1)).unwrap(),
            0xab
        );
        assert_eq!(
            rmem.read_obj::<u64>(GuestAddress((64 << 20) - 8)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(rmem.read_obj::<u64>(GuestAddress(0x30_0000)).unwrap(), 0);
        // Copy-on-write: the clone's writes never reach the file.
        rmem.write_slice(b"clone's", GuestAddress(0x1000)).unwrap();
        let again = GuestRam::from_file(64, &File::open(&path).unwrap()).unwrap();
        again.memory().read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"low page");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn ram_above_the_hole_lands_after_low_ram_in_the_file() {
        let ram = GuestRam::new(3 * 1024 + 16).unwrap();
        ram.memory().write_obj(7u32, GuestAddress(layout::MMIO_HOLE_END + 0x10)).unwrap();
        let (path, file) = temp_file("high");
        let saved = ram.save_to(&file).unwrap();
        assert_eq!(saved.written, PAGE_SIZE as u64);
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, layout::MMIO_HOLE_START + 0x10).unwrap();
        assert_eq!(u32::from_le_bytes(word), 7);
        let restored = GuestRam::from_file(3 * 1024 + 16, &file).unwrap();
        assert_eq!(
            restored.memory().read_obj::<u32>(GuestAddress(layout::MMIO_HOLE_END + 0x10)).unwrap(),
            7
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_memory_file_of_another_size_is_refused() {
        let (path, file) = temp_file("short");
        file.set_len((16 << 20) - 4096).unwrap();
        let err = GuestRam::from_file(16, &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the memory file holds {} bytes, but the guest has {} bytes of RAM",
                (16 << 20) - 4096,
                16 << 20
            )
        );
        std::fs::remove_file(path).unwrap();
    }
}
