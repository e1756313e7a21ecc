//! Reading the files the host is handed (plugins, manifests, signatures,
//! keys, secret files): regular files only, and never more than a bound.
//!
//! Anyone who can write the plugin directory can put a FIFO or a device
//! where a file is expected (`name.wasm.minisig`, a `[secrets]` file): a
//! plain open and read of a FIFO waits for a writer forever, and a read of
//! `/dev/zero` never ends. So the file is opened without blocking
//! (`O_NONBLOCK`, which changes nothing for a regular file), checked on the
//! open handle to be a regular file, and read up to its bound.

use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// The content of the regular file at `path`, of at most `max` bytes.
///
/// # Errors
/// The open's error (`NotFound` for a missing file);
/// [`io::ErrorKind::InvalidInput`] for anything but a regular file (a FIFO,
/// a device, a directory), saying what it is; [`io::ErrorKind::FileTooLarge`]
/// for a file over `max` bytes, saying its size.
pub(crate) fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({what})"),
        ));
    }
    let too_large = |len: u64| {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{len} bytes is more than the {max}-byte limit"),
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        // It grew while it was read.
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Runs `read` on a thread of its own and gives its result, failing the
/// test if it has not finished within 10 s: for tests of reads that once
/// blocked forever (a FIFO), which must fail, not hang the suite.
#[cfg(test)]
pub(crate) fn finishes<T: Send + 'static>(what: &str, read: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        let e = read_regular(&file, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("5 bytes"), "{e}");
        let e = read_regular(dir.path(), 5).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 5).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let e = read_regular(&dir.path().join("missing"), 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
