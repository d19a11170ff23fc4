//! The UART and the i8042 driven directly through `vm_device::MutDevicePio`,
//! and the console input pump.
//!
//! The input is a sequence of operations: UART register reads and writes at
//! any offset and width (0 to 8 bytes), host input offered to the UART's
//! receive FIFO (`SerialPort::enqueue_input`), i8042 reads and writes at any
//! base and offset, and runs of `console::pump_input` over arbitrary bytes.
//!
//! Invariants:
//! - nothing panics;
//! - the UART matches `vmm_fuzz::SerialModel` register by register: every
//!   byte the guest writes to THR with DLAB clear and loopback off reaches
//!   the output writer, in order, and nothing else does; the receive FIFO
//!   gives back exactly what it accepted, in order; `enqueue_input` never
//!   takes more than the room `input_room` reported (the FIFO holds at most
//!   64 bytes) and takes nothing in loopback; LSR's data-ready bit says
//!   whether the FIFO holds data; the interrupts raised on the eventfd are
//!   exactly the model's;
//! - the i8042 matches `vmm_fuzz::I8042Model` (status, answers, resets
//!   reported through `ExitRequest::reset`), whose output buffer keeps at
//!   most 16 unread answers (a real controller holds one byte);
//! - `pump_input` delivers its input in order without losing or adding a
//!   byte, however the reader splits it (short reads, EINTR, a final error)
//!   and however little the FIFO takes each time; with the escape on, what
//!   it delivers is the input with the Ctrl-A sequences filtered (Ctrl-A x
//!   quits, Ctrl-A Ctrl-A is one Ctrl-A, Ctrl-A and another key are both
//!   passed); a stop request ends it with a prefix delivered.
#![no_main]

use std::io::{Cursor, ErrorKind, Read};

use libfuzzer_sys::fuzz_target;
use vm_device::MutDevicePio;
use vm_device::bus::PioAddress;
use vmm_devices::EventFdTrigger;
use vmm_devices::console::{ESCAPE, ESCAPE_QUIT, PumpEnd, pump_input};
use vmm_devices::i8042::I8042;
use vmm_devices::serial::{COM1_PORT, SerialPort};
use vmm_fuzz::{FIFO_SIZE, I8042_OUTPUT_MAX, I8042Model, Input, Request, Requests, SerialModel};

fn serial_offset(input: &mut Input) -> u16 {
    let raw = input.u8();
    if raw < 0xf0 { u16::from(raw % 10) } else { input.u16() }
}

/// A base and an offset as vm-device could pass them: the port they name,
/// `base + offset`, never wraps past 0xffff.
fn i8042_port(input: &mut Input) -> (u16, u16) {
    let raw = input.u8();
    let base = match raw & 3 {
        0 => 0x60,
        1 => 0x64,
        2 => 0x60 + u16::from(raw >> 2 & 7),
        _ => input.u16(),
    };
    let offset = match raw >> 5 {
        0..=5 => 0,
        6 => u16::from(input.u8() & 7),
        _ => input.u16(),
    };
    (base, offset.min(u16::MAX - base))
}

/// A reader that returns `data` in chunks of fuzz-chosen sizes, sometimes
/// failing with EINTR first, and ends with EOF or an error.
struct ChoppyReader<'a> {
    data: Cursor<&'a [u8]>,
    sizes: &'a [u8],
    calls: usize,
    interrupts_left: usize,
    final_error: bool,
}

impl Read for ChoppyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        let size = self.sizes.get(self.calls % self.sizes.len().max(1)).copied().unwrap_or(255);
        // EINTR, at most a few times: the pump retries.
        if size == 0 && self.interrupts_left > 0 {
            self.interrupts_left -= 1;
            return Err(ErrorKind::Interrupted.into());
        }
        let size = size.max(1);
        let want = usize::from(size).min(buf.len());
        let read = self.data.read(&mut buf[..want])?;
        if read == 0 && self.final_error {
            return Err(ErrorKind::BrokenPipe.into());
        }
        Ok(read)
    }
}

/// What the guest should get from `input` with the escape on, and whether
/// the user asked to quit.
fn filter_escape(input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut bytes = input.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != ESCAPE {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(ESCAPE_QUIT) => return (out, true),
            Some(ESCAPE) => out.push(ESCAPE),
            Some(other) => out.extend_from_slice(&[ESCAPE, other]),
            // A Ctrl-A at the very end waits for a key that never comes.
            None => {}
        }
    }
    (out, false)
}

fn fuzz_pump(input: &mut Input) {
    let flags = input.u8();
    let escape = flags & 1 != 0;
    let final_error = flags & 2 != 0;
    // Taking nothing makes the pump sleep 1 ms: allow it once, rarely.
    let mut zero_takes_left = usize::from(flags & 0xfc == 0x80);
    let stop_after = if flags & 0x04 != 0 { Some(usize::from(input.u8())) } else { None };
    let read_count = usize::from(input.u8() % 8);
    let read_sizes = input.bytes(read_count);
    let take_count = usize::from(input.u8() % 8) + 1;
    let take_sizes = input.bytes(take_count);
    let len = usize::from(input.u16() % 2048);
    let data = input.bytes(len);

    let mut got = Vec::new();
    let mut pushes = 0usize;
    let stop_checks = std::cell::Cell::new(0usize);
    let reader = ChoppyReader {
        data: Cursor::new(data),
        sizes: read_sizes,
        calls: 0,
        interrupts_left: 4,
        final_error,
    };
    let end = pump_input(
        reader,
        |bytes| {
            assert!(!bytes.is_empty(), "pushed nothing");
            let mut take = usize::from(
                take_sizes.get(pushes % take_sizes.len().max(1)).copied().unwrap_or(255),
            );
            pushes += 1;
            if take == 0 {
                if zero_takes_left == 0 {
                    take = 1;
                } else {
                    zero_takes_left -= 1;
                }
            }
            let take = take.min(bytes.len());
            got.extend_from_slice(&bytes[..take]);
            take
        },
        escape,
        || {
            stop_checks.set(stop_checks.get() + 1);
            stop_after.is_some_and(|after| stop_checks.get() > after)
        },
    );
    let (expected, quits) = if escape { filter_escape(data) } else { (data.to_vec(), false) };
    match end {
        PumpEnd::Stopped => {
            assert!(stop_after.is_some(), "stopped without a stop request");
            assert!(expected.starts_with(&got), "stopped: delivered bytes are not a prefix");
        }
        PumpEnd::Quit => {
            assert!(quits, "quit without Ctrl-A x");
            assert_eq!(got, expected);
        }
        PumpEnd::EndOfInput => {
            assert!(!quits && !final_error);
            assert_eq!(got, expected);
        }
        PumpEnd::Error(kind) => {
            assert!(!quits && final_error);
            assert_eq!(kind, ErrorKind::BrokenPipe);
            assert_eq!(got, expected);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let base = PioAddress(COM1_PORT);
    let mut serial = SerialPort::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
    let mut serial_model = SerialModel::default();
    let requests = Requests::default();
    let mut i8042 = I8042::new(requests.clone());
    let mut i8042_model = I8042Model::default();
    let mut buffer = [0u8; 8];

    while !input.is_empty() {
        let op = input.u8();
        let len = usize::from(op >> 4) % 9; // 0..=8
        match op & 0x0f {
            0..=3 => {
                let offset = serial_offset(&mut input);
                let data = input.bytes(len);
                serial.pio_write(base, offset, data);
                serial_model.pio_write(offset, data);
                assert_eq!(serial.output().len(), serial_model.output.len());
            }
            4..=6 => {
                let offset = serial_offset(&mut input);
                buffer.fill(input.u8());
                serial.pio_read(base, offset, &mut buffer[..len]);
                let expected = serial_model.pio_read(offset, len);
                assert_eq!(buffer[..len], expected[..], "UART read of {len} at offset {offset}");
            }
            7 | 8 => {
                let count = usize::from(input.u8() % 80);
                let bytes = input.bytes(count);
                let room = serial.input_room();
                assert_eq!(room, FIFO_SIZE - serial_model.fifo.len());
                let taken = serial.enqueue_input(bytes);
                assert!(taken <= room && taken <= bytes.len(), "took {taken} with room {room}");
                assert_eq!(taken, serial_model.enqueue(bytes));
                assert_eq!(serial.input_room(), room - taken);
            }
            9..=11 => {
                let (port_base, offset) = i8042_port(&mut input);
                let data = input.bytes(len);
                i8042.pio_write(PioAddress(port_base), offset, data);
                if let Some(&value) = data.first() {
                    i8042_model.write(port_base + offset, value);
                }
            }
            12..=14 => {
                let (port_base, offset) = i8042_port(&mut input);
                buffer.fill(input.u8());
                i8042.pio_read(PioAddress(port_base), offset, &mut buffer[..len]);
                // The device answers with one byte (the rest zero); a
                // 0-byte read (which vm-device never makes) still reads it.
                let value = i8042_model.read(port_base + offset);
                if let Some((first, rest)) = buffer[..len].split_first() {
                    assert_eq!(*first, value, "i8042 read at {:#x}", port_base + offset);
                    assert!(rest.iter().all(|&b| b == 0));
                }
            }
            _ => fuzz_pump(&mut input),
        }
        let resets = requests.take();
        assert!(resets.iter().all(|r| *r == Request::Reset), "{resets:?}");
        assert_eq!(resets.len(), std::mem::take(&mut i8042_model.resets));
        // The model keeps at most I8042_OUTPUT_MAX unread answers, so reads
        // that match it show the device's buffer is bounded too (it was
        // not: fuzz/regressions/serial_i8042/i8042-output-unbounded).
        debug_assert!(i8042_model.queued() <= I8042_OUTPUT_MAX);
    }
    assert_eq!(serial.output(), &serial_model.output[..]);
    let raised = serial.interrupt().event_fd().read().unwrap_or(0);
    assert_eq!(raised, serial_model.interrupts);
});
