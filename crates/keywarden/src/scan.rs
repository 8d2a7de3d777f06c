//! `keywarden scan`: this deployment's keys in files and directories, offline
//! (docs/leaked-keys.md). The tree is walked on every CPU (`.git` directories skipped,
//! nothing else: a key in an ignored file is still a key on disk); each file that is not
//! binary is searched with the templates' expression and every candidate's checksum is
//! verified, so look-alikes are not reported.

use ignore::{WalkBuilder, WalkState};
use keywarden_core::leaks::{Found, KeyFinder};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// How far into a file a NUL byte makes it binary (as git and grep decide).
const BINARY_PROBE: usize = 8192;

/// A key found in a file.
#[derive(Debug)]
pub struct Finding {
    /// The file, as reached from the paths given.
    pub path: PathBuf,
    /// Where in it, and what.
    pub found: Found,
}

/// What a scan found and looked at.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every key, by path and then position.
    pub findings: Vec<Finding>,
    /// Text files searched.
    pub files: usize,
    /// Binary files skipped.
    pub binary: usize,
    /// Paths that could not be read, with why.
    pub errors: Vec<String>,
}

/// Scans `paths` (files or directories) with `threads` threads (0 = one per CPU).
pub fn scan(finder: &KeyFinder, paths: &[PathBuf], threads: usize) -> Scan {
    let Some((first, rest)) = paths.split_first() else {
        return Scan::default();
    };
    let mut walk = WalkBuilder::new(first);
    for p in rest {
        walk.add(p);
    }
    walk.standard_filters(false)
        .threads(threads)
        .filter_entry(|e| e.file_name() != ".git");
    let findings = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let (files, binary) = (AtomicUsize::new(0), AtomicUsize::new(0));
    walk.build_parallel().run(|| {
        Box::new(|entry| {
            match entry {
                Ok(e) if e.file_type().is_some_and(|t| t.is_file()) => {
                    match scan_file(finder, e.path()) {
                        Ok(None) => {
                            binary.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(found)) => {
                            files.fetch_add(1, Ordering::Relaxed);
                            if !found.is_empty() {
                                let mut all = findings.lock().unwrap_or_else(|p| p.into_inner());
                                all.extend(found.into_iter().map(|found| Finding {
                                    path: e.path().to_path_buf(),
                                    found,
                                }));
                            }
                        }
                        Err(err) => errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{}: {err}", e.path().display())),
                    }
                }
                Ok(_) => {}
                Err(err) => errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(err.to_string()),
            }
            WalkState::Continue
        })
    });
    let mut findings = findings.into_inner().unwrap_or_else(|p| p.into_inner());
    findings.sort_by(|a, b| (&a.path, a.found.offset).cmp(&(&b.path, b.found.offset)));
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort();
    Scan {
        findings,
        files: files.into_inner(),
        binary: binary.into_inner(),
        errors,
    }
}

/// The keys in one file; `None` when it is binary.
fn scan_file(finder: &KeyFinder, path: &Path) -> std::io::Result<Option<Vec<Found>>> {
    let bytes = std::fs::read(path)?;
    if bytes[..bytes.len().min(BINARY_PROBE)].contains(&0) {
        return Ok(None);
    }
    Ok(Some(finder.find(&bytes)))
}
