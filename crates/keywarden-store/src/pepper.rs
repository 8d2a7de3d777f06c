//! The pepper file (`docs/concepts.md#secret-storage`): when no pepper is configured for the embedded store, one is
//! generated on first start and kept beside the database, readable by its owner only.
//!
//! Losing the pepper makes every `hmac-sha256` key unusable, and leaking it weakens them,
//! so the file is never overwritten and is refused when others can read it.

use crate::sqlite::SqliteTarget;
use crate::store::StoreError;
use keywarden_core::secret::Secret;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Random bytes in a generated pepper (written as hex).
const PEPPER_BYTES: usize = 32;

/// Reads the pepper at `path`, or creates it there when the file does not exist. Returns
/// the pepper and whether it was just created (so the caller can tell the operator to back
/// it up).
///
/// An existing file must not be empty and, on Unix, must not be readable or writable by
/// group or others. A new file holds 32 random bytes as hex, with mode 0600, and reaches
/// its final name only complete and synced: two processes starting at once both end up
/// with the same pepper.
pub fn load_or_create_pepper_file(path: &Path) -> Result<(Secret, bool), StoreError> {
    match read_pepper(path) {
        Ok(p) => return Ok((p, false)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(pepper_error(path, e)),
    }
    let pepper = generate()?;
    match publish(path, &pepper) {
        Ok(()) => Ok((pepper, true)),
        // Another process created it first; theirs is the one to use.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_pepper(path)
            .map(|p| (p, false))
            .map_err(|e| pepper_error(path, e)),
        Err(e) => Err(pepper_error(path, e)),
    }
}

/// Where the pepper of a SQLite database lives: `<database file>.pepper`, beside it.
/// `None` for in-memory databases and for PostgreSQL, whose peppers must be configured.
pub fn pepper_path_for(database_url: &str) -> Option<PathBuf> {
    match SqliteTarget::parse(database_url)?.ok()? {
        SqliteTarget::File(db) => {
            let mut name = db.into_os_string();
            name.push(".pepper");
            Some(PathBuf::from(name))
        }
        SqliteTarget::Memory => None,
    }
}

fn pepper_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Database(format!("pepper file {}: {e}", path.display()))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, msg)
}

fn read_pepper(path: &Path) -> std::io::Result<Secret> {
    let mut file = File::open(path)?;
    check_private(&file)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let pepper = text.trim();
    if pepper.is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    Ok(Secret::new(pepper))
}

#[cfg(unix)]
fn check_private(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "mode {mode:04o} lets group or others access it; run chmod 600 on it"
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &File) -> std::io::Result<()> {
    Ok(())
}

fn generate() -> Result<Secret, StoreError> {
    let mut bytes = [0u8; PEPPER_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Database(format!("the OS random generator failed: {e}")))?;
    Ok(Secret::new(hex::encode(bytes)))
}

/// Creates a file that only its owner can read, refusing to replace an existing one.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes the pepper to a private temporary file beside `path`, syncs it, then links it
/// to `path`. Linking fails if `path` exists, so nothing is ever overwritten, and a reader
/// never sees a half-written pepper.
fn publish(path: &Path, pepper: &Secret) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", ulid::Ulid::new()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = create_private(&tmp)?;
        file.write_all(pepper.expose().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result?;
    sync_parent(path)
}

/// Makes the new directory entry durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pepper_paths_sit_beside_sqlite_files() {
        assert_eq!(
            pepper_path_for("sqlite://keywarden.db"),
            Some(PathBuf::from("keywarden.db.pepper"))
        );
        assert_eq!(
            pepper_path_for("sqlite:/var/lib/kw/kw.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/kw/kw.db.pepper"))
        );
        assert_eq!(pepper_path_for("sqlite::memory:"), None);
        assert_eq!(pepper_path_for("postgres://db/kw"), None);
    }

    #[test]
    fn a_pepper_is_created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kw.db.pepper");
        let (first, created) = load_or_create_pepper_file(&path).unwrap();
        assert!(created);
        assert_eq!(first.len(), PEPPER_BYTES * 2);
        assert!(first.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        let (again, created) = load_or_create_pepper_file(&path).unwrap();
        assert!(!created);
        assert_eq!(again, first);
        // Only the pepper file is left behind, no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn unsafe_files_are_refused_with_their_path_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = load_or_create_pepper_file(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("0644"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (p, created) = load_or_create_pepper_file(&path).unwrap();
        assert_eq!((p.expose(), created), ("s3cret", false));

        std::fs::write(&path, "  \n").unwrap();
        let msg = load_or_create_pepper_file(&path).unwrap_err().to_string();
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn concurrent_creators_agree_on_one_pepper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kw.db.pepper");
        let peppers: Vec<Secret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_pepper_file(&path).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(peppers.iter().all(|p| *p == peppers[0]));
    }
}
