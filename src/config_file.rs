//! Reading a `--config` file without trusting it: it must be a regular file (a symlink is
//! followed to one), at most [`MAX_CONFIG_BYTES`] long, and valid UTF-8. A path that names
//! `/dev/zero` (which never ends), a FIFO (whose open and read wait for a writer), a
//! directory or a device is refused before a byte is read, so neither start-up nor a reload
//! can be made to read without limit or to wait forever.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest configuration file read. Far above any real one (4096 backends with long names
/// and every key set are well under 1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Why a config file could not be read; one line, without the path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than {0} bytes, the most a config file may be")]
    TooLarge(u64),
    #[error("it is not UTF-8 text")]
    NotText,
}

/// The text of the file at `path`. See the module docs.
pub fn read(path: &Path) -> Result<String, ReadError> {
    read_bounded(path, MAX_CONFIG_BYTES)
}

fn read_bounded(path: &Path, limit: u64) -> Result<String, ReadError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    // nothing for a regular file. O_NOCTTY: a terminal never becomes ours.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // The type of what was opened (fstat), not of the path: no window for a swap.
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        }));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge(limit));
    }
    read_at_most(file, limit)
}

/// Reads to the end, refusing more than `limit` bytes (the file may grow after the fstat).
fn read_at_most(file: File, limit: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("uringlb-config-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn only_bounded_regular_text_files_are_read() {
        let dir = temp("kinds");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "retries = 1\n").expect("write");
        assert_eq!(read(&ok).expect("read"), "retries = 1\n");

        let link = dir.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let e = read(&link).expect_err("/dev/zero");
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file"
        );

        let fifo = dir.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = read(&fifo).expect_err("a FIFO, without waiting for a writer");
        assert_eq!(e.to_string(), "it is a FIFO, not a regular file");

        let e = read(&dir).expect_err("a directory");
        assert_eq!(e.to_string(), "it is a directory, not a regular file");

        let big = dir.join("big.toml");
        std::fs::write(&big, "#".repeat(101)).expect("write");
        let e = read_bounded(&big, 100).expect_err("over the bound");
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(read_bounded(&big, 101).is_ok());

        let latin1 = dir.join("latin1.toml");
        std::fs::write(&latin1, b"name = \"caf\xe9\"\n").expect("write");
        assert_eq!(
            read(&latin1).expect_err("not UTF-8").to_string(),
            "it is not UTF-8 text"
        );

        let missing = read(&dir.join("missing.toml")).expect_err("missing");
        assert!(matches!(missing, ReadError::Io(_)), "{missing:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn growth_after_the_size_check_is_caught() {
        let dir = temp("grow");
        let f = dir.join("f.toml");
        std::fs::write(&f, "x".repeat(10)).expect("write");
        let file = File::open(&f).expect("open");
        assert!(matches!(read_at_most(file, 9), Err(ReadError::TooLarge(9))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
