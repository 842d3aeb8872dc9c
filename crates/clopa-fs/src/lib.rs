//! Atomic file output for every clopa crate and tool.
//!
//! Every output of the pipeline (tables, checkpoints, NIfTI masks, dataset files) is written to a
//! temporary file in the target's folder and renamed over the target only when the writer
//! succeeded. An interrupted or failed run therefore never leaves a half-written file, and a rerun
//! can trust that an existing output is complete — which is how the tools skip finished work.
//!
//! The temporary keeps the target's full name as a suffix (`.clopa-<pid>-<n>-mask.nii.gz`), so
//! writers that choose a format by extension still work, and it is created with the usual
//! permissions (0644 under the default umask), not `tempfile`'s owner-only 0600. A writer killed
//! outright (`kill -9`) cannot remove its temporary; the next write into that folder does, once
//! the writer's process is gone and the file has sat unchanged for a minute.
//!
//! ```
//! # fn main() -> Result<(), clopa_fs::IoError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("out/table.txt");
//! clopa_fs::write_bytes(&path, b"complete\n")?;
//! clopa_fs::write_atomic(&path, |file| -> Result<(), clopa_fs::IoError> {
//!     use std::io::Write;
//!     file.write_all(b"replaced\n").map_err(|e| clopa_fs::IoError::new("write", &path, e))
//! })?;
//! assert_eq!(std::fs::read_to_string(&path).unwrap(), "replaced\n");
//! # Ok(()) }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A failure of the file-system side of an atomic write (creating the folder or the temporary,
/// flushing, renaming); the caller's own writer reports its errors in its own type.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(action: &'static str, path: &Path, source: std::io::Error) -> IoError {
        IoError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The folder a relative file name without a folder lives in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary path beside `path`, unique within this process (threads may write outputs with
/// the same name into one folder at once) and across processes.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    parent_dir(path).join(format!(
        ".clopa-{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// How long a leftover temporary must have gone unmodified before [`remove_stale_temps`] takes
/// it for dead (its writer's pid gone is the other condition): a writer on another machine
/// sharing the folder has its own pids, but keeps its file's time moving while it writes.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporaries in `dir` left by writers killed before they could clean up (`kill
/// -9`, a power cut): `.clopa-<pid>-<n>-<name>` files whose process is gone and which have not
/// changed for [`STALE_AFTER`]. Once per folder and process — a tool writing a file per case
/// into one folder would otherwise list it for every file. Best effort: what cannot be listed
/// or removed stays.
fn remove_stale_temps(dir: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if swept.iter().any(|d| d == dir) {
            return;
        }
        swept.push(dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let mut parts = file
            .strip_prefix(".clopa-")
            .unwrap_or_default()
            .splitn(3, '-');
        let (Some(pid), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if pid != std::process::id() && !process_alive(pid) && idle {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id runs on this machine (Linux: `/proc/<pid>`); elsewhere every
/// process counts as alive, so nothing is removed.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Atomic output for writers that open the file themselves (a NIfTI or Parquet writer taking a
/// path): `write` receives a temporary path beside `path` with the same extension(s); the file
/// there is renamed over `path` when `write` succeeds and removed when it fails.
pub fn write_atomic_path<E: From<IoError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| IoError::new("create the folder", &dir, e))?;
    remove_stale_temps(&dir);
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path)
            .map_err(|e| E::from(IoError::new("move the finished output to", path, e)))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks, before any long computation, that the output file `path` can be written, so that a
/// read-only or impossible place fails in seconds, not after hours of work: a temporary file is
/// created (and removed) in `path`'s folder, or in its nearest existing ancestor when the folder
/// does not exist yet — nothing is left behind, not even a folder. Errors name `path` or that
/// folder, never the temporary.
pub fn check_writable(path: &Path) -> Result<(), IoError> {
    if path.is_dir() {
        return Err(IoError::new(
            "write",
            path,
            std::io::Error::other("it is a folder, not a file"),
        ));
    }
    probe(&parent_dir(path))
}

/// [`check_writable`] for an output folder `dir` (which may not exist yet).
pub fn check_writable_dir(dir: &Path) -> Result<(), IoError> {
    if dir.exists() && !dir.is_dir() {
        return Err(IoError::new(
            "write into",
            dir,
            std::io::Error::other("it is a file, not a folder"),
        ));
    }
    probe(dir)
}

/// Creates and removes a temporary file in `dir`, or in its nearest existing ancestor.
fn probe(dir: &Path) -> Result<(), IoError> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        return Err(IoError::new(
            "create the folder",
            dir,
            std::io::Error::other(format!("{} is a file", at.display())),
        ));
    }
    let tmp = temp_path(&at.join("probe"));
    File::create(&tmp).map_err(|e| IoError::new("create files in", at, e))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Atomic output through an open file: `write` fills a new temporary file beside `path`, which is
/// flushed to disk and renamed over `path` when `write` succeeds.
pub fn write_atomic<E: From<IoError>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    write_atomic_path(path, |tmp| {
        // The error names the output, not the hidden temporary the user never asked for.
        let mut file = File::create(tmp)
            .map_err(|e| IoError::new("create a temporary file beside", path, e))?;
        write(&mut file)?;
        file.sync_all()
            .map_err(|e| E::from(IoError::new("flush", path, e)))
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic(path, |file| {
        use std::io::Write;
        file.write_all(bytes)
            .map_err(|e| IoError::new("write", path, e))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".clopa-"))
            .collect()
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        write_bytes(&path, b"old").unwrap();
        let r: Result<(), IoError> = write_atomic(&path, |f| {
            use std::io::Write;
            f.write_all(b"half").unwrap();
            Err(IoError::new(
                "write",
                &path,
                std::io::Error::other("disk full"),
            ))
        });
        assert!(r.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn the_temporary_keeps_the_extension_and_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/y/mask.nii.gz");
        write_atomic_path(&path, |tmp| -> Result<(), IoError> {
            assert!(tmp.to_string_lossy().ends_with("-mask.nii.gz"), "{tmp:?}");
            assert_eq!(tmp.parent(), path.parent());
            std::fs::write(tmp, b"gz").map_err(|e| IoError::new("write", tmp, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"gz");
        // Two temporaries for one name never coincide (threads writing the same output name).
        assert_ne!(temp_path(&path), temp_path(&path));
    }

    #[test]
    fn writability_checks_name_the_output_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing is created: not the file, not its missing folders, no temporary.
        check_writable(&dir.path().join("new/sub/steps.parquet")).unwrap();
        check_writable_dir(&dir.path().join("evaldir")).unwrap();
        std::fs::create_dir(dir.path().join("there")).unwrap();
        check_writable_dir(&dir.path().join("there")).unwrap();
        check_writable(&dir.path().join("there/a.parquet")).unwrap();
        assert!(leftovers(&dir.path().join("there")).is_empty());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // A file where a folder must be (root can write anywhere, so a permission test would
        // not fail here): the error names that place, not a temporary.
        let file = dir.path().join("plain.txt");
        write_bytes(&file, b"x").unwrap();
        let e = check_writable(&file.join("out.parquet")).unwrap_err();
        assert!(
            e.to_string().contains("plain.txt") && !e.to_string().contains(".clopa-"),
            "{e}"
        );
        let e = check_writable_dir(&file).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
        let e = check_writable(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
    }

    #[test]
    fn dead_writers_idle_temporaries_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.nii.gz");
        let old = std::time::SystemTime::now() - STALE_AFTER - std::time::Duration::from_secs(5);
        // pid 4194304 is above Linux's pid_max: no process has it
        let dead = dir.path().join(".clopa-4194304-3-case.nii.gz");
        let alive = dir
            .path()
            .join(format!(".clopa-{}-999-case.nii.gz", std::process::id()));
        let fresh = dir.path().join(".clopa-4194305-0-case.nii.gz");
        let other = dir.path().join(".clopa-4194304-4-other.nii.gz");
        for (p, t) in [(&dead, old), (&alive, old), (&other, old)] {
            File::create(p).unwrap().set_modified(t).unwrap();
        }
        File::create(&fresh).unwrap();
        write_bytes(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "a dead writer's idle temporary stays");
        }
        // another output's goes too; this process's own and one still changing stay
        if cfg!(target_os = "linux") {
            assert!(!other.exists());
        }
        assert!(alive.exists() && fresh.exists());
    }

    #[cfg(unix)]
    #[test]
    fn outputs_are_ordinary_files_not_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write_bytes(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Whatever the umask leaves, group and others get what `File::create` gives every file;
        // tempfile's 0600 would hide outputs from a shared group.
        let expected = {
            let probe = dir.path().join("probe");
            File::create(&probe).unwrap();
            std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, expected);
    }
}
