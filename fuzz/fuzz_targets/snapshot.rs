//! The snapshot state decoder (`vmm_snapshot::decode`) over the VMM's real
//! machine state type (`vmm/src/snapshot/state.rs`, included as it is):
//! the input as a whole blob (header checks: length, magic, version,
//! payload length, checksum), and as a payload behind a valid header (the
//! serde decoding of every vCPU, VM and device state). Invariants: never a
//! panic; behind a valid header only a decode error is possible; a state
//! that decodes encodes to a blob that decodes and encodes to the same
//! bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../vmm/src/snapshot/state.rs"]
mod state;

use state::MachineState;

fuzz_target!(|data: &[u8]| {
    // The input as a blob: whatever it holds, an answer, never a panic.
    if let Ok(state) = vmm_snapshot::decode::<MachineState>(data) {
        round_trip(&state);
    }
    // The input as the payload of a sound blob.
    let mut blob = vmm_snapshot::header(data).to_vec();
    blob.extend_from_slice(data);
    match vmm_snapshot::decode::<MachineState>(&blob) {
        Ok(state) => round_trip(&state),
        Err(vmm_snapshot::Error::Decode(_)) => {}
        Err(other) => panic!("a sound header was refused: {other}"),
    }
});

/// Encoding a decoded state gives a blob that decodes to a state that
/// encodes to the same bytes.
fn round_trip(state: &MachineState) {
    let blob = vmm_snapshot::encode(state).expect("a decoded state encodes");
    let again: MachineState = vmm_snapshot::decode(&blob).expect("an encoded state decodes");
    let blob_again = vmm_snapshot::encode(&again).expect("encodes again");
    assert_eq!(blob, blob_again, "the state changed through a round trip");
}
