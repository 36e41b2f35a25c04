//! The files a start makes (the access log, the upgrade socket), checked without making or
//! touching them. `--check` runs these checks, and so does a start before it changes
//! anything, so a check that passes is not followed by a start that fails, and a mistyped
//! path never replaces a file.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::unistd::AccessFlags;

/// Whether a new file could be made at `path`: its directory exists and this process may
/// write in it.
pub fn can_create(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(io::Error::from)
}

/// Whether a Unix socket may be put at `path`: nothing is there and it could be made, or
/// a socket is (a running or stale balancer's). Anything else there is refused.
pub fn check_socket_path(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "something other than a socket is there, and it is not replaced",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => can_create(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_sockets_and_missing_directories() {
        let dir = std::env::temp_dir().join(format!("uringlb-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a-file");
        std::fs::write(&file, "kept").unwrap();
        assert!(can_create(&dir.join("new")).is_ok());
        assert!(check_socket_path(&dir.join("new")).is_ok());
        let e = check_socket_path(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let sock = dir.join("a-socket");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(check_socket_path(&sock).is_ok());
        let missing = dir.join("missing-dir").join("x");
        assert!(can_create(&missing).is_err());
        assert!(check_socket_path(&missing).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
