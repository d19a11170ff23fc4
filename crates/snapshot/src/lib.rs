#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first 8 bytes of every state blob.
pub const MAGIC: [u8; 8] = *b"VMMSTATE";

/// The format version this build writes and reads. Raise it whenever the
/// payload's shape changes in a way an older build would misread.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the payload: magic (8), version (4), payload length (8),
/// CRC32 of the payload (4), all little-endian.
pub const HEADER_LEN: usize = 24;

/// Why a state blob cannot be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the header, or than the header announces.
    #[error("the state is truncated at {len} bytes ({need} expected)")]
    Truncated {
        /// Bytes present.
        len: u64,
        /// Bytes the header (or the header's length field) asks for.
        need: u64,
    },
    /// The blob does not start with [`MAGIC`]: not a snapshot state.
    #[error("not a snapshot state: bad magic number {found:02x?} (expected {MAGIC:02x?})")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// A format version this build does not read.
    #[error("snapshot format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version {
        /// The version in the header.
        found: u32,
    },
    /// Bytes follow the payload the header announces.
    #[error("{extra} unexpected bytes after the state's payload")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The payload is not what was written.
    #[error("checksum mismatch: the header says {stored:#010x}, the payload's is {computed:#010x}")]
    Checksum {
        /// The CRC32 in the header.
        stored: u32,
        /// The CRC32 of the payload found.
        computed: u32,
    },
    /// The payload passed the checks but is not a valid state.
    #[error("cannot decode the state: {0}")]
    Decode(serde_json::Error),
    /// The state could not be serialized.
    #[error("cannot encode the state: {0}")]
    Encode(serde_json::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Encodes `state` as a blob: header, then its JSON.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(state).map_err(Error::Encode)?;
    let mut blob = Vec::with_capacity(HEADER_LEN + payload.len());
    blob.extend_from_slice(&header(&payload));
    blob.extend_from_slice(&payload);
    Ok(blob)
}

/// The header a blob with `payload` carries.
pub fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// Checks a blob's header and checksum and returns its payload.
pub fn payload(blob: &[u8]) -> Result<&[u8]> {
    let len = blob.len() as u64;
    if blob.len() < HEADER_LEN {
        // A short blob that does not even start like one is a foreign file.
        let prefix = blob.len().min(MAGIC.len());
        if blob[..prefix] != MAGIC[..prefix] {
            let mut found = [0u8; 8];
            found[..prefix].copy_from_slice(&blob[..prefix]);
            return Err(Error::BadMagic { found });
        }
        return Err(Error::Truncated { len, need: HEADER_LEN as u64 });
    }
    let field = |range: std::ops::Range<usize>| &blob[range];
    let mut found = [0u8; 8];
    found.copy_from_slice(field(0..8));
    if found != MAGIC {
        return Err(Error::BadMagic { found });
    }
    let version = u32::from_le_bytes(field(8..12).try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(Error::Version { found: version });
    }
    let announced = u64::from_le_bytes(field(12..20).try_into().unwrap_or_default());
    let stored = u32::from_le_bytes(field(20..24).try_into().unwrap_or_default());
    let body = len - HEADER_LEN as u64;
    if body < announced {
        // A length near u64::MAX is truncation too, not an overflow.
        return Err(Error::Truncated { len, need: announced.saturating_add(HEADER_LEN as u64) });
    }
    if body > announced {
        return Err(Error::TrailingBytes { extra: body - announced });
    }
    let payload = &blob[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(Error::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Checks a blob and decodes its state.
pub fn decode<T: DeserializeOwned>(blob: &[u8]) -> Result<T> {
    decode_payload(payload(blob)?)
}

/// Decodes a payload that passed [`payload`]'s checks.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(Error::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        regs: Vec<u64>,
        name: String,
    }

    fn state() -> State {
        State { regs: vec![1, 2, u64::MAX], name: "vcpu0".into() }
    }

    #[test]
    fn a_blob_decodes_to_what_was_encoded() {
        let blob = encode(&state()).unwrap();
        assert_eq!(&blob[..8], b"VMMSTATE");
        assert_eq!(decode::<State>(&blob).unwrap(), state());
    }

    #[test]
    fn every_truncation_is_refused_with_its_length() {
        let blob = encode(&state()).unwrap();
        for len in 0..blob.len() {
            let err = decode::<State>(&blob[..len]).unwrap_err();
            let need = if len < HEADER_LEN { HEADER_LEN } else { blob.len() } as u64;
            assert!(
                matches!(err, Error::Truncated { len: l, need: n } if l == len as u64 && n == need),
                "{len}: {err}"
            );
            assert!(err.to_string().contains(&format!("truncated at {len} bytes")), "{err}");
        }
    }

    #[test]
    fn a_foreign_file_has_a_bad_magic_number() {
        let mut blob = encode(&state()).unwrap();
        blob[0] = b'X';
        let err = decode::<State>(&blob).unwrap_err();
        assert!(matches!(err, Error::BadMagic { found } if found[0] == b'X'), "{err}");
        assert!(matches!(decode::<State>(b"{}").unwrap_err(), Error::BadMagic { .. }));
    }

    #[test]
    fn another_format_version_is_named() {
        let mut blob = encode(&state()).unwrap();
        blob[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = decode::<State>(&blob).unwrap_err();
        assert!(matches!(err, Error::Version { found: 7 }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "snapshot format version 7 is not supported (this build reads {FORMAT_VERSION})"
            )
        );
    }

    #[test]
    fn every_flipped_payload_byte_fails_the_checksum() {
        let blob = encode(&state()).unwrap();
        for at in HEADER_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[at] ^= 0x20;
            let err = decode::<State>(&bad).unwrap_err();
            assert!(matches!(err, Error::Checksum { .. }), "{at}: {err}");
        }
        let mut bad = blob;
        bad[20] ^= 1;
        assert!(matches!(decode::<State>(&bad).unwrap_err(), Error::Checksum { .. }));
    }

    #[test]
    fn a_payload_length_near_the_top_of_u64_is_truncation() {
        // Found by the fuzzer: the announced length plus the header overflowed.
        let mut blob = encode(&state()).unwrap();
        blob[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = decode::<State>(&blob).unwrap_err();
        assert!(matches!(err, Error::Truncated { need: u64::MAX, .. }), "{err}");
    }

    #[test]
    fn bytes_after_the_payload_are_refused() {
        let mut blob = encode(&state()).unwrap();
        blob.extend_from_slice(b"xyz");
        assert!(matches!(decode::<State>(&blob).unwrap_err(), Error::TrailingBytes { extra: 3 }));
    }

    #[test]
    fn a_sound_blob_of_the_wrong_shape_is_a_decode_error() {
        let mut blob = header(b"[1,2]").to_vec();
        blob.extend_from_slice(b"[1,2]");
        let err = decode::<State>(&blob).unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err}");
        assert!(err.to_string().starts_with("cannot decode the state: "), "{err}");
    }
}
