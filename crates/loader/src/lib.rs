//! Loading guest images into guest memory.
//!
//! The format is recognised from the image's content ([`ImageFormat::detect`]),
//! never from its file name:
//! - **raw** images are copied to a load address (default
//!   [`layout::RAW_IMAGE_DEFAULT_LOAD`]) and started in 16-bit real mode with
//!   CS = load address >> 4, IP = entry - load address;
//! - **ELF64** x86-64 images are validated here, loaded by linux-loader's ELF
//!   loader at their physical addresses (BSS zeroed), and started in 64-bit
//!   long mode at their entry point.
//!
//! ```no_run
//! use vmm_loader::{load_image, EntryPoint, LoadOptions};
//! use vmm_memory::GuestRam;
//!
//! let ram = GuestRam::new(128).unwrap();
//! let image = load_image(&ram, "guest.bin".as_ref(), &LoadOptions::default()).unwrap();
//! match image.entry {
//!     EntryPoint::RealMode { segment, ip } => println!("start at {segment:#x}:{ip:#x}"),
//!     EntryPoint::LongMode { rip } => println!("start at {rip:#x}"),
//! }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod elf;
mod format;
mod raw;

use std::path::{Path, PathBuf};

pub use format::ImageFormat;
use vmm_memory::{GuestRam, layout};

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
    #[error(
        "image {path} ({size} bytes) is larger than guest RAM ({ram} bytes); give more --memory"
    )]
    LargerThanRam {
        /// The image path.
        path: PathBuf,
        /// File size.
        size: u64,
        /// RAM size.
        ram: u64,
    },
    /// A load option does not apply to the image's format.
    #[error("{option} does not apply to {format} images")]
    OptionNotForFormat {
        /// The option's name.
        option: &'static str,
        /// The image format.
        format: &'static str,
    },
    /// The format is recognised but not supported by this build.
    #[error("{0} images are not supported yet")]
    Unsupported(&'static str),
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
        reason: String,
    },
    /// linux-loader failed.
    #[error("loading the kernel failed: {0}")]
    Kernel(#[from] linux_loader::loader::Error),
    /// Writing guest memory failed.
    #[error("writing guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Overrides for where an image goes and where it starts.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load address of a raw image (default [`layout::RAW_IMAGE_DEFAULT_LOAD`]).
    pub load_addr: Option<u64>,
    /// Guest-physical entry point, overriding the image's own.
    pub entry: Option<u64>,
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
    /// 64-bit long mode (identity-mapped paging) at `rip`.
    LongMode {
        /// Entry address.
        rip: u64,
    },
}

/// Where an image landed and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The recognised format.
    pub format: ImageFormat,
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
    match format {
        ImageFormat::Raw => raw::load(ram, image, options),
        ImageFormat::Elf => {
            if options.load_addr.is_some() {
                return Err(Error::OptionNotForFormat {
                    option: "--load-addr",
                    format: "ELF",
                });
            }
            elf::load(ram, image, options)
        }
        ImageFormat::BzImage => Err(Error::Unsupported("bzImage")),
    }
}

/// Reads a whole image file, refusing empty files and files larger than RAM
/// before reading them.
fn read_image(path: &Path, ram_size: u64) -> Result<Vec<u8>> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
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
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
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
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        path
    }

    #[test]
    fn missing_image_is_an_open_error() {
        let ram = GuestRam::new(1).unwrap();
        let err = load_image(
            &ram,
            Path::new("/nonexistent/image"),
            &LoadOptions::default(),
        )
        .unwrap_err();
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
        let options = LoadOptions {
            load_addr: Some(0x1000),
            entry: None,
        };
        let err = load_bytes(&ram, b"\x7fELF\x02\x01\x01", &options).unwrap_err();
        assert!(matches!(err, Error::OptionNotForFormat { .. }), "{err}");
    }
}
