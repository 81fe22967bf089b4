//! Reproducible assembly of the Cocoon guest image.
//!
//! The guest's initramfs is a cpio archive in the "newc" format (the format
//! the Linux kernel unpacks into its initial root file system, described in
//! the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//! Two builds of the same inputs must give the same bytes, so that an auditor
//! who rebuilds the image gets the same SEV-SNP launch digest and TDX RTMRs
//! as the provider who published them. This crate therefore writes the
//! archive itself instead of calling `cpio`:
//!
//! - entries are sorted by path (byte order), parents before children;
//! - owners are 0:0, every time stamp is one given value
//!   (`SOURCE_DATE_EPOCH`), inode numbers count up from 1 in archive order,
//!   device numbers of regular entries are 0;
//! - permissions are normalised: directories 0755, files 0755 when any
//!   execute bit is set in the staging tree and 0644 otherwise, so that a
//!   umask or a checkout's modes cannot change the bytes;
//! - only directories, regular files, symbolic links and the character
//!   devices named explicitly (such as `/dev/console`) are accepted; any
//!   other kind of file in the staging tree is an error, never skipped.
//!
//! [`read_newc`] parses an archive back (strictly: bounded lengths, checked
//! magic, hex fields, padding and the trailer) so that two images can be
//! compared entry by entry and the tests can check what was written. The
//! binary's commands are `cocoon-image initramfs` and `list`.
//!
//! The initramfs holds only PID 1 (`cocoon-init`) and its kernel modules;
//! the code and the models are on the dm-verity root disk that
//! `images/build.sh` writes with `mksquashfs` and `veritysetup`. That
//! script drives the whole image from `images/image.lock` (the Debian
//! kernel package checked by SHA-256, modules, command line,
//! `SOURCE_DATE_EPOCH`); `--variant gpu` adds the GPU layer that
//! `images/gpu/build.sh` builds from `images/gpu/gpu.lock`.
//! `images/reproduce.sh` builds twice and compares, and `images/firmware/`
//! builds the measured OVMF/TDVF from Debian's edk2 source (see
//! `images/README.md`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The magic of a newc header ("new ASCII" format, no checksum).
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header: the magic and 13 eight-digit hex fields.
const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// File type bits of `st_mode` (see `inode(7)`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;
/// The largest archive [`read_newc`] accepts (the guest has to hold it in
/// memory twice while the kernel unpacks it).
pub const MAX_ARCHIVE: usize = 1 << 31;

/// Why an archive cannot be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file of the staging tree cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The staging tree holds something an image must not contain.
    #[error("{path}: {reason}")]
    Refused {
        /// The path inside the image.
        path: String,
        /// Why.
        reason: String,
    },
    /// An archive being read is not a well-formed newc archive.
    #[error("not a valid newc archive at byte {offset}: {reason}")]
    Malformed {
        /// Where the problem starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file and its contents.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry of an archive: a path without a leading `/` (`init`,
/// `dev/console`), its kind and its permission bits (the low 12 bits of
/// `st_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image, relative to `/`.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u32,
}

impl Entry {
    fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
        };
        ty | (self.perm & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev { .. } => &[],
        }
    }
}

/// Checks that `path` is a clean relative path: non-empty components, no
/// `.` or `..`, no NUL, not absolute.
fn check_path(path: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::Refused {
        path: path.into(),
        reason: reason.into(),
    };
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(bad("paths are relative, without a leading or trailing '/'"));
    }
    if path.contains('\0') {
        return Err(bad("a path cannot contain NUL"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, '.' and '..' components are refused"));
    }
    Ok(())
}

/// Normalises a set of entries: checks paths, adds missing parent
/// directories (0755), refuses duplicates and a non-directory used as a
/// parent, and sorts by path bytes so that parents precede children.
pub fn normalise(entries: Vec<Entry>) -> Result<Vec<Entry>, ImageError> {
    let mut map: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        check_path(&e.path)?;
        if map.contains_key(&e.path) {
            return Err(ImageError::Refused {
                path: e.path,
                reason: "given twice".into(),
            });
        }
        map.insert(e.path.clone(), e);
    }
    let paths: Vec<String> = map.keys().cloned().collect();
    for p in paths {
        let mut parent = p.as_str();
        while let Some((head, _)) = parent.rsplit_once('/') {
            match map.get(head) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(ImageError::Refused {
                        path: p.clone(),
                        reason: format!("its parent {head} is not a directory"),
                    })
                }
                None => {
                    map.insert(
                        head.to_string(),
                        Entry {
                            path: head.to_string(),
                            kind: Kind::Dir,
                            perm: 0o755,
                        },
                    );
                }
            }
            parent = head;
        }
    }
    // Byte order of the whole path does not always put a directory before
    // its children ("a-b" < "a/c" but "a" < "a-b"); sorting by the list of
    // components does.
    let mut out: Vec<Entry> = map.into_values().collect();
    out.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(out)
}

fn hex8(out: &mut Vec<u8>, v: u64) -> Result<(), ImageError> {
    let v = u32::try_from(v).map_err(|_| ImageError::Refused {
        path: String::new(),
        reason: format!("value {v} does not fit the archive's 32-bit fields"),
    })?;
    out.extend_from_slice(format!("{v:08X}").as_bytes());
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes `entries` (normalised first, see [`normalise`]) as a newc archive
/// with every time stamp set to `mtime`.
pub fn write_newc(entries: Vec<Entry>, mtime: u32) -> Result<Vec<u8>, ImageError> {
    let entries = normalise(entries)?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (major, minor) = match e.kind {
            Kind::CharDev { major, minor } => (major, minor),
            _ => (0, 0),
        };
        let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
        header(
            &mut out,
            &HeaderFields {
                ino: i as u64 + 1,
                mode: e.mode(),
                nlink,
                mtime,
                size: e.data().len() as u64,
                rdev: (major, minor),
                name: &e.path,
            },
        )
        .map_err(|err| with_path(err, &e.path))?;
        out.extend_from_slice(e.data());
        pad4(&mut out);
    }
    header(
        &mut out,
        &HeaderFields {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
            name: TRAILER,
        },
    )?;
    // The kernel reads archives in 512-byte blocks like cpio(1) writes them.
    while out.len() % 512 != 0 {
        out.push(0);
    }
    Ok(out)
}

fn with_path(err: ImageError, path: &str) -> ImageError {
    match err {
        ImageError::Refused { reason, .. } => ImageError::Refused {
            path: path.into(),
            reason,
        },
        other => other,
    }
}

struct HeaderFields<'a> {
    ino: u64,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u64,
    rdev: (u32, u32),
    name: &'a str,
}

fn header(out: &mut Vec<u8>, h: &HeaderFields<'_>) -> Result<(), ImageError> {
    out.extend_from_slice(NEWC_MAGIC);
    hex8(out, h.ino)?;
    hex8(out, u64::from(h.mode))?;
    hex8(out, 0)?; // uid
    hex8(out, 0)?; // gid
    hex8(out, u64::from(h.nlink))?;
    hex8(out, u64::from(h.mtime))?;
    hex8(out, h.size)?;
    hex8(out, 0)?; // devmajor
    hex8(out, 0)?; // devminor
    hex8(out, u64::from(h.rdev.0))?;
    hex8(out, u64::from(h.rdev.1))?;
    hex8(out, h.name.len() as u64 + 1)?;
    hex8(out, 0)?; // check
    out.extend_from_slice(h.name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

/// Reads a staging directory into entries: directories, regular files
/// (contents read now) and symbolic links; anything else is refused.
/// Permission bits are normalised (see the crate docs).
pub fn read_tree(root: &Path) -> Result<Vec<Entry>, ImageError> {
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), ImageError> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    names.sort();
    for path in names {
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| ImageError::Refused {
                path: path.display().to_string(),
                reason: "names in an image must be UTF-8".into(),
            })?
            .to_string();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(Entry {
                path: rel,
                kind: Kind::Dir,
                perm: 0o755,
            });
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let data = fs::read(&path).map_err(io_err(&path))?;
            let perm = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            out.push(Entry {
                path: rel,
                kind: Kind::File(data),
                perm,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let target = target.to_str().ok_or_else(|| ImageError::Refused {
                path: rel.clone(),
                reason: "link targets in an image must be UTF-8".into(),
            })?;
            out.push(Entry {
                path: rel,
                kind: Kind::Symlink(target.to_string()),
                perm: 0o777,
            });
        } else {
            let what = if ft.is_char_device() || ft.is_block_device() {
                "a device node (name devices explicitly instead, e.g. --char-dev)"
            } else {
                "a socket or FIFO"
            };
            return Err(ImageError::Refused {
                path: rel,
                reason: format!("is {what}; refused (rdev {:#x})", meta.rdev()),
            });
        }
    }
    Ok(())
}

/// One entry read back from an archive, with the header fields that a
/// reproducible build fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// The entry.
    pub entry: Entry,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Inode number.
    pub ino: u32,
}

/// Parses a newc archive strictly: every header has the magic and valid hex
/// fields, names are NUL-terminated UTF-8, sizes stay inside the input,
/// padding is zero, only the kinds of [`Kind`] appear, and the archive ends
/// with the trailer followed by zero padding only.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<ReadEntry>, ImageError> {
    if bytes.len() > MAX_ARCHIVE {
        return Err(ImageError::Malformed {
            offset: 0,
            reason: format!("larger than {MAX_ARCHIVE} bytes"),
        });
    }
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        let bad = |offset: usize, reason: String| ImageError::Malformed { offset, reason };
        let hdr = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| bad(pos, "truncated header (no trailer)".into()))?;
        if &hdr[..6] != NEWC_MAGIC {
            return Err(bad(pos, "bad magic (want 070701, newc)".into()));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let field = &hdr[6 + 8 * i..14 + 8 * i];
            let text = std::str::from_utf8(field)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad(pos + 6 + 8 * i, "header field is not 8 hex digits".into()))?;
            *v = u32::from_str_radix(text, 16)
                .map_err(|_| bad(pos + 6 + 8 * i, "header field is not hex".into()))?;
        }
        let [ino, mode, uid, gid, _nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _check] =
            f;
        let name_start = pos + HEADER_LEN;
        let namesize = namesize as usize;
        if namesize == 0 {
            return Err(bad(pos, "name size 0".into()));
        }
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(name_start, "name runs past the end".into()))?;
        if name_bytes[namesize - 1] != 0 || name_bytes[..namesize - 1].contains(&0) {
            return Err(bad(
                name_start,
                "name is not one NUL-terminated string".into(),
            ));
        }
        let name = std::str::from_utf8(&name_bytes[..namesize - 1])
            .map_err(|_| bad(name_start, "name is not UTF-8".into()))?
            .to_string();
        let data_start = align4(name_start + namesize);
        check_zero(bytes, name_start + namesize, data_start)?;
        let size = size as usize;
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or_else(|| bad(data_start, format!("{name}: data runs past the end")))?;
        let next = align4(data_start + size);
        check_zero(bytes, data_start + size, next.min(bytes.len()))?;
        if name == TRAILER {
            check_zero(bytes, next.min(bytes.len()), bytes.len())?;
            return Ok(out);
        }
        let perm = mode & 0o7777;
        let kind = match mode & S_IFMT {
            S_IFDIR if size == 0 => Kind::Dir,
            S_IFREG => Kind::File(data.to_vec()),
            S_IFLNK => Kind::Symlink(
                std::str::from_utf8(data)
                    .map_err(|_| bad(data_start, format!("{name}: link target is not UTF-8")))?
                    .to_string(),
            ),
            S_IFCHR if size == 0 => Kind::CharDev {
                major: rmaj,
                minor: rmin,
            },
            other => {
                return Err(bad(
                    pos,
                    format!("{name}: unsupported file type {other:#o} or size"),
                ))
            }
        };
        out.push(ReadEntry {
            entry: Entry {
                path: name,
                kind,
                perm,
            },
            uid,
            gid,
            mtime,
            ino,
        });
        pos = next;
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn check_zero(bytes: &[u8], from: usize, to: usize) -> Result<(), ImageError> {
    match bytes.get(from..to) {
        Some(pad) if pad.iter().all(|&b| b == 0) => Ok(()),
        Some(_) => Err(ImageError::Malformed {
            offset: from,
            reason: "non-zero padding".into(),
        }),
        None => Err(ImageError::Malformed {
            offset: from,
            reason: "padding runs past the end".into(),
        }),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so that a half-written image is never left under the final
/// name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8], perm: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File(data.to_vec()),
            perm,
        }
    }

    #[test]
    fn round_trips_and_adds_parents_in_order() {
        let entries = vec![
            file("lib/modules/a.ko", b"module", 0o644),
            file("init", b"\x7fELF", 0o755),
            Entry {
                path: "dev/console".into(),
                kind: Kind::CharDev { major: 5, minor: 1 },
                perm: 0o600,
            },
            Entry {
                path: "bin".into(),
                kind: Kind::Symlink("usr/bin".into()),
                perm: 0o777,
            },
            file("lib-x", b"", 0o644),
        ];
        let bytes = write_newc(entries, 1_700_000_000).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let back = read_newc(&bytes).unwrap();
        let paths: Vec<&str> = back.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/a.ko",
                "lib-x"
            ]
        );
        for (i, e) in back.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000));
            assert_eq!(e.ino as usize, i + 1);
        }
        assert_eq!(back[2].entry.kind, Kind::CharDev { major: 5, minor: 1 });
        assert_eq!(back[6].entry.kind, Kind::File(b"module".to_vec()));
    }

    #[test]
    fn same_entries_in_any_order_give_the_same_bytes() {
        let a = vec![file("x/y", b"1", 0o644), file("a", b"22", 0o755)];
        let b = vec![file("a", b"22", 0o755), file("x/y", b"1", 0o644)];
        assert_eq!(write_newc(a, 5).unwrap(), write_newc(b, 5).unwrap());
    }

    #[test]
    fn bad_paths_and_duplicates_are_refused() {
        for p in ["", "/init", "a/../b", "a//b", "a/", "./a", "a\0b"] {
            assert!(write_newc(vec![file(p, b"", 0o644)], 0).is_err(), "{p:?}");
        }
        let dup = vec![file("a", b"", 0o644), file("a", b"x", 0o644)];
        assert!(write_newc(dup, 0).is_err());
        let under_file = vec![file("a", b"", 0o644), file("a/b", b"", 0o644)];
        assert!(write_newc(under_file, 0).is_err());
    }

    #[test]
    fn reader_refuses_damage() {
        let bytes = write_newc(vec![file("init", b"hello", 0o755)], 0).unwrap();
        // Truncated anywhere before the trailer.
        for cut in [0, 50, 110, 120, 200] {
            assert!(read_newc(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut m = bytes.clone();
        m[0] = b'1';
        assert!(read_newc(&m).is_err());
        let mut m = bytes.clone();
        m[10] = b'G'; // not hex
        assert!(read_newc(&m).is_err());
        let mut m = bytes.clone();
        let last = m.len() - 1;
        m[last] = 1; // garbage after the trailer
        assert!(read_newc(&m).is_err());
        // Size field claims more data than there is.
        let mut m = bytes;
        m[6 + 8 * 6..6 + 8 * 7].copy_from_slice(b"7FFFFFFF");
        assert!(read_newc(&m).is_err());
    }
}
