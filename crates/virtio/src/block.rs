//! virtio-blk (virtio 1.2, section 5.2) on a raw image file or a block
//! device: read, write, flush and get-id requests, read-only disks, and a
//! lock on the image while it is in use.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue};

use crate::{Error, Memory, Result, VirtioDevice, drain_queue};

/// The sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (the header and the status
/// take two descriptors of the queue).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes moved between the image and guest memory per step of a request.
const CHUNK: usize = 128 * 1024;
/// The request header: type, reserved, sector.
const HEADER_LEN: usize = 16;

/// Counters of what a disk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed (with any status).
    pub requests: u64,
    /// Bytes read from the image into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the image.
    pub written_bytes: u64,
    /// Requests that ended with VIRTIO_BLK_S_IOERR.
    pub errors: u64,
    /// Chains so malformed that no status could be returned.
    pub malformed: u64,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    disk: File,
    sectors: u64,
    read_only: bool,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: Vec<u8>,
    buffer: Vec<u8>,
    counters: BlockCounters,
}

/// Takes an advisory lock on `file` without waiting: exclusive for a
/// writable disk, shared for a read-only one.
fn lock(file: &File, exclusive: bool) -> std::io::Result<()> {
    let operation = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: flock takes a descriptor we own and an operation; no memory.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Block {
    /// Opens the disk image (or block device) at `path`, locks it (see
    /// [`Error::Locked`]) and makes a device of it. `serial` defaults to
    /// the file's name, cut to 20 bytes.
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Block> {
        let name = path.display().to_string();
        let open_error = |source| Error::Open { path: name.clone(), source };
        // Checked before opening: a directory cannot be opened for writing,
        // and that error would say less.
        let kind = std::fs::metadata(path).map_err(open_error)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(Error::NotADisk { path: name });
        }
        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;
        lock(&disk, !read_only).map_err(|err| match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Error::Locked { path: name.clone() },
            _ => open_error(err),
        })?;
        let size = disk.seek(SeekFrom::End(0)).map_err(open_error)?;
        if size < SECTOR_SIZE {
            return Err(Error::EmptyDisk { path: name, size });
        }
        let serial = match serial {
            Some(id) => id.as_bytes(),
            // The default, the file's name, is cut to what fits.
            None => {
                let name = path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
                &name[..name.len().min(VIRTIO_BLK_ID_BYTES as usize)]
            }
        };
        Block::new(disk, size, read_only, serial)
    }

    /// A device on an already opened `disk` of `size` bytes (whole sectors
    /// count; a partial last sector is not part of the disk) whose serial
    /// (GET_ID) is `serial`.
    pub fn new(disk: File, size: u64, read_only: bool, serial: &[u8]) -> Result<Block> {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        if serial.len() > id.len() {
            return Err(Error::SerialTooLong {
                id: String::from_utf8_lossy(serial).into_owned(),
                len: serial.len(),
            });
        }
        id[..serial.len()].copy_from_slice(serial);
        let sectors = size / SECTOR_SIZE;
        // struct virtio_blk_config up to blk_size: capacity, size_max,
        // seg_max, geometry, blk_size.
        let mut config = Vec::with_capacity(24);
        config.extend_from_slice(&sectors.to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        config.extend_from_slice(&[0; 4]);
        config.extend_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            disk,
            sectors,
            read_only,
            serial: id,
            config,
            buffer: vec![0; CHUNK],
            counters: BlockCounters::default(),
        })
    }

    /// The disk's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest sees a read-only disk.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// What the disk has done so far.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// Flushes what the guest wrote to stable storage.
    pub fn flush(&self) -> std::io::Result<()> {
        if self.read_only { Ok(()) } else { self.disk.sync_data() }
    }

    /// The byte offset of a request of `len` bytes at `sector`, if it lies
    /// on the disk.
    fn extent(&self, sector: u64, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.sectors).then(|| sector * SECTOR_SIZE)
    }

    /// Serves one request; returns the bytes written into its
    /// device-writable buffers (data and status).
    fn serve(&mut self, chain: DescriptorChain<&Memory>, mem: &Memory) -> u32 {
        self.counters.requests += 1;
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem))
        else {
            // A buffer outside guest RAM, or lengths that overflow.
            self.counters.malformed += 1;
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            // No device-writable byte for the status.
            self.counters.malformed += 1;
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(status_at) else {
            self.counters.malformed += 1;
            return 0;
        };
        let mut header = [0u8; HEADER_LEN];
        let status = if reader.read_exact(&mut header).is_err() {
            VIRTIO_BLK_S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]);
            match kind {
                VIRTIO_BLK_T_IN => self.read(sector, &mut writer),
                VIRTIO_BLK_T_OUT => self.write(sector, &mut reader),
                VIRTIO_BLK_T_FLUSH => match self.flush() {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(err) => {
                        log::warn!("disk flush failed: {err}");
                        VIRTIO_BLK_S_IOERR
                    }
                },
                VIRTIO_BLK_T_GET_ID => {
                    let len = writer.available_bytes().min(self.serial.len());
                    match writer.write_all(&self.serial[..len]) {
                        Ok(()) => VIRTIO_BLK_S_OK,
                        Err(_) => VIRTIO_BLK_S_IOERR,
                    }
                }
                _ => VIRTIO_BLK_S_UNSUPP,
            }
        };
        if status == VIRTIO_BLK_S_IOERR {
            self.counters.errors += 1;
        }
        // The status byte is device-writable guest memory checked above.
        let _ = status_writer.write_all(&[status as u8]);
        let written = writer.bytes_written() + status_writer.bytes_written();
        u32::try_from(written).unwrap_or(u32::MAX)
    }

    fn read(&mut self, sector: u64, writer: &mut virtio_queue::Writer<'_>) -> u32 {
        let mut left = writer.available_bytes();
        let Some(mut offset) = self.extent(sector, left) else { return VIRTIO_BLK_S_IOERR };
        while left > 0 {
            let chunk = &mut self.buffer[..left.min(CHUNK)];
            if let Err(err) = self.disk.read_exact_at(chunk, offset) {
                log::warn!("disk read at {offset:#x} failed: {err}");
                return VIRTIO_BLK_S_IOERR;
            }
            if writer.write_all(chunk).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            self.counters.read_bytes += chunk.len() as u64;
            offset += chunk.len() as u64;
            left -= chunk.len();
        }
        VIRTIO_BLK_S_OK
    }

    fn write(&mut self, sector: u64, reader: &mut virtio_queue::Reader<'_>) -> u32 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut left = reader.available_bytes();
        let Some(mut offset) = self.extent(sector, left) else { return VIRTIO_BLK_S_IOERR };
        while left > 0 {
            let chunk = &mut self.buffer[..left.min(CHUNK)];
            if reader.read_exact(chunk).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            if let Err(err) = self.disk.write_all_at(chunk, offset) {
                log::warn!("disk write at {offset:#x} failed: {err}");
                return VIRTIO_BLK_S_IOERR;
            }
            self.counters.written_bytes += chunk.len() as u64;
            offset += chunk.len() as u64;
            left -= chunk.len();
        }
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> std::result::Result<bool, virtio_queue::Error> {
        drain_queue(queue, mem, |chain| self.serve(chain, mem))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            log::warn!("flushing a disk at exit failed: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::{MmioTransport, QueueNotify};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;
    const HEADER: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    struct Rig {
        transport: MmioTransport<Block>,
        queue: TestQueue,
        mem: Memory,
        image: TempFile,
    }

    fn rig(read_only: bool) -> Rig {
        let image = TempFile::new().unwrap();
        let pattern: Vec<u8> = (0..8 * 512u32).map(|i| (i / 512) as u8 + 1).collect();
        image.as_file().write_all_at(&pattern, 0).unwrap();
        let disk = Block::open(image.as_path(), read_only, Some("serial-1")).unwrap();
        let mem = memory(1 << 20);
        let mut transport =
            MmioTransport::new(disk, mem.clone(), Box::new(CountingInterrupt::default())).unwrap();
        assert!(negotiate(&mut transport, FEATURES));
        let queue = TestQueue::new(16, 0x1000);
        queue.install(&mut transport, 0);
        driver_ok(&mut transport);
        Rig { transport, queue, mem, image }
    }

    impl Rig {
        /// Sends a request and returns (status, used length).
        fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u8, u32) {
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
            self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let mut chain = vec![(HEADER, 16, false)];
            if let Some((len, writable)) = data {
                chain.push((DATA, len, writable));
            }
            chain.push((STATUS, 1, true));
            self.queue.add_chain(&self.mem, &chain);
            self.transport.queue_notify(0);
            let used = self.queue.take_used(&self.mem);
            assert_eq!(used.len(), 1);
            (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), used[0].1)
        }

        fn file(&self) -> Vec<u8> {
            std::fs::read(self.image.as_path()).unwrap()
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn config_space_holds_capacity_seg_max_and_block_size() {
        let mut rig = rig(false);
        let config = read_config(&mut rig.transport, 0, 24);
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 8);
        assert_eq!(u32::from_le_bytes(config[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
        assert_eq!(read_config(&mut rig.transport, 24, 4), vec![0; 4], "past the end reads zero");
    }

    #[test]
    fn reads_and_writes_reach_the_image() {
        let mut rig = rig(false);
        assert_eq!(rig.request(VIRTIO_BLK_T_IN, 2, Some((1024, true))), (OK, 1025));
        let mut got = vec![0u8; 1024];
        rig.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
        rig.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 7, Some((512, false))), (OK, 1));
        assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
        let file = rig.file();
        assert!(file[7 * 512..].iter().all(|&b| b == 0x5a));
        assert!(file[6 * 512..7 * 512].iter().all(|&b| b == 7));
        let counters = rig.transport.device().counters();
        assert_eq!(
            (counters.read_bytes, counters.written_bytes, counters.requests),
            (1024, 512, 3)
        );
    }

    #[test]
    fn requests_past_the_end_or_partial_sectors_fail_without_touching_the_file() {
        let mut rig = rig(false);
        let before = rig.file();
        assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 7, Some((1024, false))).0, IOERR);
        assert_eq!(rig.request(VIRTIO_BLK_T_OUT, u64::MAX, Some((512, false))).0, IOERR);
        assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 0, Some((100, false))).0, IOERR);
        assert_eq!(rig.request(VIRTIO_BLK_T_IN, 8, Some((512, true))).0, IOERR);
        assert_eq!(rig.request(VIRTIO_BLK_T_IN, 0, Some((0, true))).0, OK);
        assert_eq!(rig.file(), before);
        assert_eq!(rig.transport.device().counters().errors, 4);
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let mut rig = rig(true);
        assert_ne!(rig.transport.device().features() & 1 << VIRTIO_BLK_F_RO, 0);
        let before = rig.file();
        assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 0, Some((512, false))).0, IOERR);
        assert_eq!(rig.request(VIRTIO_BLK_T_IN, 0, Some((512, true))).0, OK);
        assert_eq!(rig.file(), before);
    }

    #[test]
    fn get_id_returns_the_serial_and_unknown_requests_are_unsupported() {
        let mut rig = rig(false);
        assert_eq!(rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true))), (OK, 21));
        let mut id = [0u8; 20];
        rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..9], b"serial-1\0");
        assert_eq!(rig.request(11, 0, None).0, VIRTIO_BLK_S_UNSUPP as u8);
    }

    #[test]
    fn malformed_chains_are_used_without_a_crash() {
        let mut rig = rig(false);
        // No status byte (everything device-readable).
        rig.queue.add_chain(&rig.mem, &[(HEADER, 16, false)]);
        // A buffer outside guest RAM.
        rig.queue.add_chain(
            &rig.mem,
            &[(HEADER, 16, false), (0xfff_0000, 512, true), (STATUS, 1, true)],
        );
        // A buffer that crosses the end of guest RAM.
        rig.queue.add_chain(
            &rig.mem,
            &[(HEADER, 16, false), ((1 << 20) - 8, 512, true), (STATUS, 1, true)],
        );
        rig.transport.queue_notify(0);
        assert_eq!(rig.queue.take_used(&rig.mem), vec![(0, 0), (1, 0), (4, 0)]);
        // A chain that loops back on itself ends (the chain is cut at the
        // queue size) and is used.
        let head = 8;
        rig.queue.write_desc(&rig.mem, head, HEADER, 16, 1, head + 1);
        rig.queue.write_desc(&rig.mem, head + 1, STATUS, 1, 1 | 2, head);
        rig.queue.publish(&rig.mem, head);
        rig.transport.queue_notify(0);
        assert_eq!(rig.queue.take_used(&rig.mem).len(), 1);
        assert_eq!(rig.transport.device().counters().malformed, 3);
        // The device still works.
        assert_eq!(rig.request(VIRTIO_BLK_T_IN, 0, Some((512, true))).0, OK);
    }

    #[test]
    fn opening_checks_the_file_and_locks_it() {
        let dir = std::env::temp_dir();
        assert!(matches!(Block::open(&dir, false, None), Err(Error::NotADisk { .. })));
        assert!(matches!(
            Block::open(Path::new("/nonexistent/disk"), false, None),
            Err(Error::Open { .. })
        ));
        let empty = TempFile::new().unwrap();
        assert!(matches!(Block::open(empty.as_path(), false, None), Err(Error::EmptyDisk { .. })));
        let image = TempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let first = Block::open(image.as_path(), false, None).unwrap();
        assert!(matches!(Block::open(image.as_path(), false, None), Err(Error::Locked { .. })));
        assert!(matches!(Block::open(image.as_path(), true, None), Err(Error::Locked { .. })));
        drop(first);
        let shared = Block::open(image.as_path(), true, None).unwrap();
        assert!(matches!(Block::open(image.as_path(), false, None), Err(Error::Locked { .. })));
        drop(shared);
        assert!(matches!(
            Block::open(image.as_path(), false, Some("012345678901234567890")),
            Err(Error::SerialTooLong { len: 21, .. })
        ));
    }
}
