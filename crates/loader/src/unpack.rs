//! Unpacking a bzImage's compressed kernel on the host.
//!
//! A bzImage carries its kernel (an ELF "vmlinux", stripped, maybe followed
//! by relocations) compressed, and a decompressor that runs in the guest
//! first. On hosts where guest kernel code is emulated that decompression
//! costs seconds; the host does it in milliseconds. The setup header says
//! where the payload is (`payload_offset`, `payload_length`, protocol
//! 2.08+). LZ4's legacy frame format, the one the kernel's build uses, is
//! supported; other formats are left to the guest.

use crate::{Error, Result};

/// The magic of LZ4's legacy frame format (`lz4 -l`).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Largest uncompressed block of the legacy format.
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;
/// Protocol 2.08 added payload_offset and payload_length.
const MIN_PAYLOAD_PROTOCOL: u16 = 0x0208;

/// The compressed payload of a bzImage, if its header locates one.
pub(crate) fn payload(image: &[u8], setup_sects: u8, version: u16) -> Option<&[u8]> {
    if version < MIN_PAYLOAD_PROTOCOL {
        return None;
    }
    let offset = u32::from_le_bytes(image.get(0x248..0x24c)?.try_into().ok()?) as usize;
    let length = u32::from_le_bytes(image.get(0x24c..0x250)?.try_into().ok()?) as usize;
    let kernel = (usize::from(setup_sects.max(4)) + 1) * 512;
    let start = kernel.checked_add(offset)?;
    image.get(start..start.checked_add(length)?)
}

/// True when `payload` is in a format this module unpacks.
pub(crate) fn can_unpack(payload: &[u8]) -> bool {
    payload.starts_with(&LZ4_LEGACY_MAGIC)
}

/// Unpacks an LZ4 legacy-frame payload: blocks of a little-endian 32-bit
/// compressed size and the block, up to the 4-byte uncompressed size the
/// kernel's build appends.
pub(crate) fn unpack(payload: &[u8]) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::InvalidBzImage(format!("cannot unpack the kernel: {what}"));
    let mut rest = payload.strip_prefix(&LZ4_LEGACY_MAGIC).ok_or_else(|| bad("not LZ4"))?;
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK_MAX];
    while rest.len() > 4 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(data) = rest.get(4..4 + size) else { break };
        if size == 0 {
            break;
        }
        let len = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|err| bad(&format!("corrupt LZ4 block: {err}")))?;
        out.extend_from_slice(&block[..len]);
        rest = &rest[4 + size..];
    }
    if out.is_empty() {
        return Err(bad("empty payload"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_frame(blocks: &[&[u8]]) -> Vec<u8> {
        let mut frame = LZ4_LEGACY_MAGIC.to_vec();
        let mut total = 0u32;
        for block in blocks {
            let compressed = lz4_flex::block::compress(block);
            frame.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            frame.extend_from_slice(&compressed);
            total += block.len() as u32;
        }
        frame.extend_from_slice(&total.to_le_bytes());
        frame
    }

    #[test]
    fn blocks_are_unpacked_in_order_and_the_size_trailer_ignored() {
        let a = vec![7u8; 5000];
        let b: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let frame = legacy_frame(&[&a, &b]);
        assert!(can_unpack(&frame));
        assert_eq!(unpack(&frame).unwrap(), [a, b].concat());
    }

    #[test]
    fn corrupt_or_foreign_payloads_are_errors() {
        assert!(!can_unpack(b"\x1f\x8b\x08\x00"));
        assert!(unpack(b"\x1f\x8b\x08\x00").is_err());
        let mut frame = legacy_frame(&[&[1u8; 100]]);
        frame[9] ^= 0xff;
        frame[10] = 0xff;
        assert!(unpack(&frame).is_err() || unpack(&frame).unwrap() != vec![1u8; 100]);
        assert!(unpack(&LZ4_LEGACY_MAGIC).is_err());
    }

    #[test]
    fn payload_is_found_from_the_setup_header() {
        let mut image = vec![0u8; 5 * 512 + 64];
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        image[5 * 512 + 16..5 * 512 + 24].copy_from_slice(b"PAYLOAD!");
        assert_eq!(payload(&image, 4, 0x020f), Some(&b"PAYLOAD!"[..]));
        assert_eq!(payload(&image, 4, 0x0207), None);
        image[0x24c..0x250].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(payload(&image, 4, 0x020f), None);
    }
}
