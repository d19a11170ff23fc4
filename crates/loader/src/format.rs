//! Recognising an image's format from its first bytes.

/// The formats an image can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// An ELF file (class and machine are checked when it is loaded).
    Elf,
    /// A Linux bzImage (the "HdrS" setup-header magic at offset 0x202).
    BzImage,
    /// Anything else: a flat binary, copied as it is.
    Raw,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";

impl ImageFormat {
    /// Recognises the format from the start of an image.
    pub fn detect(head: &[u8]) -> ImageFormat {
        if head.starts_with(ELF_MAGIC) {
            ImageFormat::Elf
        } else if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(BZIMAGE_MAGIC) {
            ImageFormat::BzImage
        } else {
            ImageFormat::Raw
        }
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Elf => "ELF",
            ImageFormat::BzImage => "bzImage",
            ImageFormat::Raw => "raw",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_magic_is_elf() {
        assert_eq!(ImageFormat::detect(b"\x7fELF\x02\x01\x01"), ImageFormat::Elf);
    }

    #[test]
    fn hdrs_at_0x202_is_bzimage() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(ImageFormat::detect(&image), ImageFormat::BzImage);
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(ImageFormat::detect(&[0xf4]), ImageFormat::Raw);
        assert_eq!(ImageFormat::detect(b"\x7fEL"), ImageFormat::Raw);
        // The magic must be at the start, not anywhere.
        assert_eq!(ImageFormat::detect(b"x\x7fELF"), ImageFormat::Raw);
        // A file named like an ELF but holding code is still raw: content decides.
        assert_eq!(ImageFormat::detect(&[0xb0, 0x41, 0xe6, 0xe9]), ImageFormat::Raw);
    }
}
