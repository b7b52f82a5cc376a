//! Crash-safe file replacement: every file twain writes goes through [`AtomicFile`] (or
//! [`write_atomic`]).
//!
//! The bytes go to a fresh temporary file in the destination's directory (created with
//! `O_EXCL`, so it never opens an existing file or follows a symlink planted at its name), are
//! flushed to disk (`sync_all`), the temporary file is renamed over the destination and the
//! directory is flushed so the rename survives a crash. A reader sees the old file or the
//! new one, never a mix. If the destination is a symlink, the rename replaces the link itself
//! and the file it pointed at stays untouched. On any error, or when an [`AtomicFile`] is
//! dropped without [`AtomicFile::commit`], the temporary file is removed and the destination
//! is left as it was.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written beside its destination; [`commit`](AtomicFile::commit) puts it in place.
///
/// Implements [`Write`] (buffered).
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl AtomicFile {
    /// Start replacing `dest`: creates a new, uniquely named temporary file in its directory.
    pub fn create(dest: impl AsRef<Path>) -> std::io::Result<AtomicFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dest = dest.as_ref().to_path_buf();
        let name = dest.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} names no file", dest.display()),
            )
        })?;
        let dir = parent_dir(&dest);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for _ in 0..64 {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.{n}.{nanos:08x}.tmp", std::process::id()));
            let tmp = dir.join(tmp_name);
            // create_new = O_CREAT | O_EXCL: fails on any existing entry, symlinks included.
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => {
                    return Ok(AtomicFile {
                        dest,
                        tmp,
                        out: Some(BufWriter::with_capacity(1 << 20, f)),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    fn out(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("atomic file already finished"))
    }

    /// Flush the bytes to disk, rename the temporary file over the destination and flush the
    /// directory. On error the temporary file is removed and the destination is unchanged
    /// (unless only the final directory flush failed: then the new file is in place).
    pub fn commit(mut self) -> std::io::Result<()> {
        let out = self.out()?;
        out.flush()?;
        out.get_ref().sync_all()?;
        // Close before the rename (Windows cannot rename an open file).
        self.out = None;
        std::fs::rename(&self.tmp, &self.dest)?;
        // The temporary name is gone; nothing to clean up any more.
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.dest))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out()?.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out()?.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.out = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Flush a directory's entries (the rename) to disk. A no-op where directories cannot be
/// opened as files (Windows).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Replace `path` by `bytes` atomically (see the [module docs](self)).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Replace `path` by what `fill` writes, atomically. If `fill` errs the destination is left as
/// it was and the temporary file is removed.
pub fn write_atomic_with<E: From<std::io::Error>>(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut AtomicFile) -> Result<(), E>,
) -> Result<(), E> {
    let mut f = AtomicFile::create(path)?;
    fill(&mut f)?;
    f.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("twain-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_the_whole_file() {
        let d = dir("whole");
        let p = d.join("out.bin");
        std::fs::write(&p, b"old old old old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(entries(&d), ["out.bin"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn atomic_write_failure_keeps_the_old_file_and_leaves_no_temp() {
        let d = dir("fail");
        let p = d.join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let r: std::io::Result<()> = write_atomic_with(&p, |w| {
            w.write_all(&[7u8; 3 << 20])?;
            Err(std::io::Error::other("disk full"))
        });
        assert_eq!(r.unwrap_err().to_string(), "disk full");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&d), ["out.bin"]);
        // Dropping an uncommitted file also cleans up.
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&d), ["out.bin"]);
        // A rename that fails (the destination is a non-empty directory) removes the temp.
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), b"x").unwrap();
        assert!(write_atomic(&sub, b"data").is_err());
        assert_eq!(entries(&d), ["out.bin", "sub"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_through_a_symlink_replaces_the_link_not_its_target() {
        let d = dir("link");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.join("out.bin");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        let _ = std::fs::remove_dir_all(&d);
    }
}
