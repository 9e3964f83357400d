//! Writing to stdout and stderr without panicking when the reader has gone away.
//!
//! `println!` panics on a closed pipe (Rust ignores SIGPIPE), so `feedline schema | head` would
//! exit 101 with a panic message. A reader that stopped reading wants no more output: a closed
//! pipe ends the output quietly, and the exit code stays what the command decided.

use std::io::{ErrorKind, Write};

/// Write `text` to stdout; a closed pipe is not an error.
pub fn stdout(text: &str) -> std::io::Result<()> {
    quiet_on_closed_pipe(write_all(std::io::stdout().lock(), text))
}

/// Write `text` to stderr; any failure is ignored (there is nowhere left to report it).
pub fn stderr(text: &str) {
    let _ = write_all(std::io::stderr().lock(), text);
}

fn write_all(mut out: impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn quiet_on_closed_pipe(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `println!` to stdout through [`stdout`]; evaluates to `std::io::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::stdout(&format!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` through [`stderr`].
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::stderr(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_quiet_and_other_errors_are_not() {
        let closed = std::io::Error::from(ErrorKind::BrokenPipe);
        assert!(quiet_on_closed_pipe(Err(closed)).is_ok());
        let full = std::io::Error::from(ErrorKind::StorageFull);
        assert!(quiet_on_closed_pipe(Err(full)).is_err());
    }
}
