//! The host side of a serial console: the terminal in raw mode while the
//! guest owns it, and a pump that feeds host input into the UART's receive
//! FIFO without dropping a byte.

use std::io::Read;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Ctrl-A, the escape key (as in QEMU): Ctrl-A x leaves, Ctrl-A Ctrl-A
/// sends one Ctrl-A to the guest.
pub const ESCAPE: u8 = 0x01;
/// The key that, after [`ESCAPE`], leaves the console.
pub const ESCAPE_QUIT: u8 = b'x';

/// The terminal settings saved before going raw, for every exit path.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts standard input's terminal in raw mode (no echo, no line editing,
/// no signals from keys: Ctrl-C goes to the guest) and restores it when
/// dropped. Output processing stays on, so host messages keep their line
/// breaks.
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode; `None` when stdin is not a terminal.
    pub fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; all-zero is a valid value to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_oflag |= libc::OPOST;
        *SAVED_TERMIOS.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        // SAFETY: `raw` is a valid termios for this descriptor.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
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

/// Restores the terminal settings saved by [`RawTerminal::enable`], if any.
/// Safe to call more than once, e.g. from a panic hook.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(saved) = saved {
        // SAFETY: `saved` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
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
