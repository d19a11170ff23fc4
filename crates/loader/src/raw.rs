//! Raw (flat binary) images, started in real mode where they were loaded.

use vm_memory::{Bytes, GuestAddress};

use crate::{
    BootProtocol, EntryPoint, Error, GuestRam, ImageFormat, LoadOptions, LoadedImage, Result,
    layout,
};

/// Real-mode segments are 64 KiB long.
const SEGMENT_SIZE: u64 = 0x1_0000;

/// Computes CS:IP so that code runs where it was loaded: CS = load >> 4 and
/// IP = entry - load.
pub(crate) fn real_mode_entry(load_addr: u64, entry: u64) -> Result<EntryPoint> {
    if !load_addr.is_multiple_of(16) {
        return Err(Error::BadLoadAddress {
            addr: load_addr,
            reason: "a real-mode image must be loaded at a multiple of 16",
        });
    }
    let segment = u16::try_from(load_addr >> 4)
        .ok()
        .filter(|_| load_addr < layout::REAL_MODE_LIMIT)
        .ok_or(Error::BadLoadAddress {
            addr: load_addr,
            reason: "a real-mode image must be loaded below 1 MiB",
        })?;
    let ip = entry
        .checked_sub(load_addr)
        .filter(|offset| *offset < SEGMENT_SIZE)
        .and_then(|offset| u16::try_from(offset).ok())
        .ok_or(Error::BadEntry {
            entry,
            reason: "a real-mode entry must lie in the 64 KiB that start at the load address",
        })?;
    Ok(EntryPoint::RealMode { segment, ip })
}

pub(crate) fn load(ram: &GuestRam, image: &[u8], options: &LoadOptions) -> Result<LoadedImage> {
    let load_addr = options.load_addr.unwrap_or(layout::RAW_IMAGE_DEFAULT_LOAD);
    let entry_addr = options.entry.unwrap_or(load_addr);
    let entry = real_mode_entry(load_addr, entry_addr)?;
    let size = image.len() as u64;
    if !ram.contains_range(load_addr, size) {
        return Err(Error::RawDoesNotFit { addr: load_addr, size, ram: ram.size_bytes() });
    }
    if !ram.contains_range(entry_addr, 1) {
        return Err(Error::BadEntry { entry: entry_addr, reason: "it is outside guest RAM" });
    }
    ram.memory().write_slice(image, GuestAddress(load_addr))?;
    log::info!("raw image: {size} bytes at {load_addr:#x}, real mode entry {entry:x?}");
    Ok(LoadedImage {
        format: ImageFormat::Raw,
        protocol: BootProtocol::Bare,
        entry,
        ranges: vec![(load_addr, size)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_load_runs_at_0x100_0() {
        let ram = GuestRam::new(1).unwrap();
        let loaded = load(&ram, &[0xf4], &LoadOptions::default()).unwrap();
        assert_eq!(loaded.entry, EntryPoint::RealMode { segment: 0x100, ip: 0 });
        assert_eq!(loaded.ranges, vec![(0x1000, 1)]);
        assert_eq!(ram.memory().read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xf4);
    }

    #[test]
    fn entry_inside_the_image_sets_ip() {
        let ram = GuestRam::new(1).unwrap();
        let options =
            LoadOptions { load_addr: Some(0x7c00), entry: Some(0x7c10), ..Default::default() };
        let loaded = load(&ram, &[0; 32], &options).unwrap();
        assert_eq!(loaded.entry, EntryPoint::RealMode { segment: 0x7c0, ip: 0x10 });
    }

    #[test]
    fn unaligned_or_high_load_address_is_rejected() {
        assert!(matches!(real_mode_entry(0x1001, 0x1001), Err(Error::BadLoadAddress { .. })));
        assert!(matches!(real_mode_entry(0x10_0000, 0x10_0000), Err(Error::BadLoadAddress { .. })));
    }

    #[test]
    fn entry_before_or_far_past_the_load_address_is_rejected() {
        assert!(matches!(real_mode_entry(0x1000, 0xfff), Err(Error::BadEntry { .. })));
        assert!(matches!(real_mode_entry(0x1000, 0x11000), Err(Error::BadEntry { .. })));
        assert_eq!(
            real_mode_entry(0x1000, 0x10fff).unwrap(),
            EntryPoint::RealMode { segment: 0x100, ip: 0xffff }
        );
    }

    #[test]
    fn image_past_the_end_of_ram_is_rejected() {
        let ram = GuestRam::new(1).unwrap();
        let options = LoadOptions { load_addr: Some(0xff000), ..Default::default() };
        let err = load(&ram, &[0; 0x2000], &options).unwrap_err();
        assert!(matches!(err, Error::RawDoesNotFit { .. }), "{err}");
    }
}
