//! The host side of a serial console: the terminal in raw mode while the
//! guest owns it, and a pump that feeds host input into the UART's receive
//! FIFO without dropping a byte.

use std::io::{IsTerminal, Read};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmm_sys_util::terminal::Terminal;

/// Ctrl-A, the escape key (as in QEMU): Ctrl-A x leaves, Ctrl-A Ctrl-A
/// sends one Ctrl-A to the guest.
pub const ESCAPE: u8 = 0x01;
/// The key that, after [`ESCAPE`], leaves the console.
pub const ESCAPE_QUIT: u8 = b'x';

/// Whether this process put stdin's terminal in raw mode and has not
/// restored it yet, for every exit path.
static RAW_MODE: AtomicBool = AtomicBool::new(false);

/// Standard input's descriptor as a vmm-sys-util [`Terminal`].
///
/// vmm-sys-util implements the trait for `StdinLock`, but the console
/// input thread holds that lock while it blocks in `read`: restoring the
/// terminal through it (at the end of a run, or from a panic hook) would
/// wait for the next key press. This handle takes no lock.
struct StdinTerminal;

// SAFETY: descriptor 0 is standard input for the whole life of the process
// (nothing in this VMM closes it), so the descriptor returned is valid for
// at least as long as any `StdinTerminal`.
unsafe impl Terminal for StdinTerminal {
    fn tty_fd(&self) -> RawFd {
        libc::STDIN_FILENO
    }
}

/// Puts standard input's terminal in raw mode (no echo, no line editing,
/// no signals from keys: Ctrl-C goes to the guest) and restores it when
/// dropped. Output processing stays on, so host messages keep their line
/// breaks.
///
/// Through vmm-sys-util's [`Terminal`]: `set_raw_mode` clears only `ICANON`,
/// `ECHO` and `ISIG` in the local flags and never touches the output flags,
/// so `OPOST` (and with it `ONLCR`) stays as the user had it; dropping (or
/// [`restore_terminal`]) calls `set_canon_mode`, which sets those three
/// flags again. The input flags are left as they were too: where the
/// terminal has them, Ctrl-S/Ctrl-Q flow control (`IXON`) stays with the
/// host and Enter reaches the guest as a line feed (`ICRNL`).
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode; `None` when stdin is not a terminal or
    /// its mode cannot be changed.
    pub fn enable() -> Option<RawTerminal> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // Set first, so that a panic on another thread restores the mode
        // even while it is being changed.
        RAW_MODE.store(true, Ordering::SeqCst);
        if let Err(err) = StdinTerminal.set_raw_mode() {
            RAW_MODE.store(false, Ordering::SeqCst);
            log::warn!("cannot put the terminal in raw mode: {err}");
            return None;
        }
        Some(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Takes the terminal out of the raw mode [`RawTerminal::enable`] set
/// (canonical mode, echo and signals from keys again), if it did. Safe to
/// call more than once and from any thread, e.g. from a panic hook: it
/// waits for no lock.
pub fn restore_terminal() {
    if RAW_MODE.swap(false, Ordering::SeqCst)
        && let Err(err) = StdinTerminal.set_canon_mode()
    {
        log::warn!("cannot restore the terminal's mode: {err}");
    }
}

/// True when standard input is /dev/null: there is no input to pump.
pub fn stdin_is_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Ok(stdin), Ok(null)) = (std::fs::metadata("/dev/stdin"), std::fs::metadata("/dev/null"))
    else {
        return false;
    };
    stdin.file_type().is_char_device() && stdin.rdev() == null.rdev()
}

/// What [`pump_input`] ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The input reached its end.
    EndOfInput,
    /// The user typed the escape sequence to leave.
    Quit,
    /// `stopped` returned true.
    Stopped,
    /// Reading failed.
    Error(std::io::ErrorKind),
}

/// Filters the escape sequence out of host input.
#[derive(Debug, Default)]
struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Appends what the guest should get from `input` to `out`; true when
    /// the user asked to quit.
    fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    ESCAPE_QUIT => return true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(byte);
            }
        }
        false
    }
}

/// Copies `input` into a receive FIFO through `push`, which takes what
/// fits and returns how many bytes it took; waits for room rather than
/// dropping bytes. With `escape`, Ctrl-A x ends the pump with
/// [`PumpEnd::Quit`]. Returns when the input ends or `stopped()` is true.
pub fn pump_input(
    mut input: impl Read,
    mut push: impl FnMut(&[u8]) -> usize,
    escape: bool,
    stopped: impl Fn() -> bool,
) -> PumpEnd {
    let mut buffer = [0u8; 256];
    let mut filter = EscapeFilter::default();
    let mut pending = Vec::with_capacity(512);
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => return PumpEnd::EndOfInput,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return PumpEnd::Error(err.kind()),
        };
        pending.clear();
        let quit = if escape {
            filter.filter(&buffer[..read], &mut pending)
        } else {
            pending.extend_from_slice(&buffer[..read]);
            false
        };
        let mut rest = &pending[..];
        while !rest.is_empty() {
            if stopped() {
                return PumpEnd::Stopped;
            }
            let taken = push(rest).min(rest.len());
            rest = &rest[taken..];
            if taken == 0 {
                // The guest has not drained the FIFO yet.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if quit {
            return PumpEnd::Quit;
        }
        if stopped() {
            return PumpEnd::Stopped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn every_byte_arrives_in_order_even_when_the_fifo_is_small() {
        let input: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut got = Vec::new();
        let mut calls = 0;
        let end = pump_input(
            Cursor::new(input.clone()),
            |bytes| {
                calls += 1;
                // Full every other call, else room for 7 bytes.
                let room = if calls % 2 == 0 { 0 } else { 7 };
                let n = room.min(bytes.len());
                got.extend_from_slice(&bytes[..n]);
                n
            },
            false,
            || false,
        );
        assert_eq!(end, PumpEnd::EndOfInput);
        assert_eq!(got, input);
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one_ctrl_a() {
        let mut got = Vec::new();
        let end = pump_input(
            Cursor::new(b"ab\x01\x01c\x01dx\x01xzzz".to_vec()),
            |bytes| {
                got.extend_from_slice(bytes);
                bytes.len()
            },
            true,
            || false,
        );
        assert_eq!(end, PumpEnd::Quit);
        assert_eq!(got, b"ab\x01c\x01dx");
    }

    #[test]
    fn without_escape_ctrl_a_is_data() {
        let mut got = Vec::new();
        pump_input(
            Cursor::new(b"\x01x".to_vec()),
            |b| {
                got.extend_from_slice(b);
                b.len()
            },
            false,
            || false,
        );
        assert_eq!(got, b"\x01x");
    }

    #[test]
    fn a_stop_request_ends_the_pump_while_waiting_for_room() {
        let end = pump_input(Cursor::new(b"abc".to_vec()), |_| 0, false, || true);
        assert_eq!(end, PumpEnd::Stopped);
    }
}
