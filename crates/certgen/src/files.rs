//! Writing certificates and keys: atomically, with private modes, never clobbering by accident.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::{Error, Issued, Result};

/// One file to write.
#[derive(Debug)]
pub struct Output {
    /// Where.
    pub path: PathBuf,
    /// What.
    pub contents: String,
    /// Whether it holds a private key (mode 0600) or only public material (0644).
    pub secret: bool,
}

/// `<base><suffix>`, e.g. `certs/micronets-ws-root` + `.cert.pem`.
#[must_use]
pub fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(base.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The files of an issued certificate: `<base>.cert.pem`, `<base>.key.pem`, and for leaves
/// `<base>.pkeycert.pem` (certificate then key, the original's `cat` of the two).
#[must_use]
pub fn outputs(base: &Path, issued: &Issued, with_pkeycert: bool) -> Vec<Output> {
    let mut files = vec![
        Output { path: with_suffix(base, ".cert.pem"), contents: issued.cert_pem.clone(), secret: false },
        Output { path: with_suffix(base, ".key.pem"), contents: issued.key_pem.clone(), secret: true },
    ];
    if with_pkeycert {
        files.push(Output {
            path: with_suffix(base, ".pkeycert.pem"),
            contents: issued.pkeycert(),
            secret: true,
        });
    }
    files
}

/// Writes an issued certificate's files under `base` (see [`outputs`]) and returns their paths.
///
/// # Errors
/// As [`write_outputs`].
pub fn write_issued(base: &Path, issued: &Issued, leaf: bool, force: bool) -> Result<Vec<PathBuf>> {
    let files = outputs(base, issued, leaf);
    write_outputs(&files, force)?;
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// Writes every output or, when one cannot be written, as few as possible.
///
/// Checks first that each directory exists and, without `force`, that no output exists, so a
/// refusal writes nothing. Each file is written to a temporary file in the same directory
/// (created with its final mode, so a key is never readable by others, even briefly), synced,
/// then moved into place: renamed over the old file with `force`, else hard-linked, which
/// fails rather than replace a file that appeared meanwhile.
///
/// # Errors
/// [`Error::MissingDirectory`], [`Error::Exists`] or [`Error::Io`], naming the path.
pub fn write_outputs(outputs: &[Output], force: bool) -> Result<()> {
    for output in outputs {
        let dir = parent_dir(&output.path);
        if !dir.is_dir() {
            return Err(Error::MissingDirectory(dir.to_owned()));
        }
        if !force && output.path.symlink_metadata().is_ok() {
            return Err(Error::Exists(output.path.clone()));
        }
    }
    for output in outputs {
        write_one(output, force)?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn write_one(output: &Output, force: bool) -> Result<()> {
    let file_name = output.path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent_dir(&output.path).join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = write_tmp(&tmp, output).and_then(|()| {
        if force {
            fs::rename(&tmp, &output.path).map_err(|e| Error::io(&output.path, e))
        } else {
            fs::hard_link(&tmp, &output.path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(output.path.clone()),
                _ => Error::io(&output.path, e),
            })
        }
    });
    // After a rename the temporary name is gone already; after a link (or a failure) it is
    // removed here. Failing to remove it is harmless and not worth hiding the real outcome.
    let _ = fs::remove_file(&tmp);
    result
}

fn write_tmp(tmp: &Path, output: &Output) -> Result<()> {
    let mode = if output.secret { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| Error::io(tmp, e))?;
    file.write_all(output.contents.as_bytes()).map_err(|e| Error::io(tmp, e))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn out(path: PathBuf, secret: bool) -> Output {
        Output { path, contents: "x".into(), secret }
    }

    #[test]
    fn modes_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key.pem");
        let cert = dir.path().join("a.cert.pem");
        write_outputs(&[out(cert.clone(), false), out(key.clone(), true)], false).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);

        let fresh = dir.path().join("b.cert.pem");
        let err = write_outputs(&[out(fresh.clone(), false), out(key.clone(), true)], false).unwrap_err();
        assert!(matches!(err, Error::Exists(p) if p == key));
        assert!(!fresh.exists(), "a refusal writes nothing");

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_outputs(&[Output { path: key.clone(), contents: "new".into(), secret: true }], true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "new");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary files left");
    }

    #[test]
    fn missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = write_outputs(&[out(missing.join("a.cert.pem"), false)], false).unwrap_err();
        assert!(matches!(&err, Error::MissingDirectory(p) if *p == missing));
        assert!(err.to_string().contains("nope"));
    }
}
