//! `cocoon-image`: assembles the guest initramfs reproducibly and lists an
//! archive's entries so that two builds can be compared.
//!
//! Exit codes: 0 done, 1 refused (a staging tree or archive that cannot be
//! used), 64 usage error.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cocoon_image::{read_newc, read_tree, write_atomically, write_newc, Entry, Kind};
use sha2::{Digest, Sha256};

/// Reproducible guest-image assembly for Cocoon.
#[derive(Debug, Parser)]
#[command(name = "cocoon-image", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Packs a staging directory into a newc initramfs: sorted entries,
    /// owners 0:0, one time stamp, normalised permissions.
    Initramfs {
        /// The directory that becomes `/`.
        #[arg(long, value_name = "DIR")]
        staging: PathBuf,
        /// Output file (written atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Time stamp of every entry (seconds since 1970; usually
        /// SOURCE_DATE_EPOCH).
        #[arg(long, value_name = "SECONDS")]
        mtime: u32,
        /// A character device to create, PATH:MAJOR:MINOR:MODE (octal), e.g.
        /// dev/console:5:1:600. Repeatable.
        #[arg(long = "char-dev", value_name = "SPEC")]
        char_devs: Vec<String>,
    },
    /// Lists an archive: permissions, owner, time, size, SHA-256, path.
    List {
        /// The archive.
        file: PathBuf,
    },
}

fn parse_char_dev(spec: &str) -> Result<Entry, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [path, major, minor, mode] = parts[..] else {
        return Err(format!(
            "--char-dev {spec:?}: expected PATH:MAJOR:MINOR:MODE"
        ));
    };
    let num = |s: &str, radix| {
        u32::from_str_radix(s, radix)
            .map_err(|_| format!("--char-dev {spec:?}: {s:?} is not a number"))
    };
    Ok(Entry {
        path: path.into(),
        kind: Kind::CharDev {
            major: num(major, 10)?,
            minor: num(minor, 10)?,
        },
        perm: num(mode, 8)?,
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.cmd {
        Cmd::Initramfs {
            staging,
            out,
            mtime,
            char_devs,
        } => {
            let mut entries = match read_tree(&staging) {
                Ok(e) => e,
                Err(e) => return fail(&e.to_string()),
            };
            for spec in &char_devs {
                match parse_char_dev(spec) {
                    Ok(e) => entries.push(e),
                    Err(msg) => {
                        eprintln!("cocoon-image: {msg}");
                        return ExitCode::from(64);
                    }
                }
            }
            let count = entries.len();
            let bytes = match write_newc(entries, mtime) {
                Ok(b) => b,
                Err(e) => return fail(&e.to_string()),
            };
            if let Err(e) = write_atomically(&out, &bytes) {
                return fail(&e.to_string());
            }
            println!(
                "{}  {} ({} entries, {} bytes)",
                hex::encode(Sha256::digest(&bytes)),
                out.display(),
                count,
                bytes.len()
            );
            ExitCode::SUCCESS
        }
        Cmd::List { file } => {
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => return fail(&format!("cannot read {}: {e}", file.display())),
            };
            let entries = match read_newc(&bytes) {
                Ok(e) => e,
                Err(e) => return fail(&format!("{}: {e}", file.display())),
            };
            for r in entries {
                let (size, digest, extra) = match &r.entry.kind {
                    Kind::File(d) => (d.len(), hex::encode(Sha256::digest(d)), String::new()),
                    Kind::Symlink(t) => (t.len(), "-".repeat(64), format!(" -> {t}")),
                    Kind::CharDev { major, minor } => {
                        (0, "-".repeat(64), format!(" (char {major}:{minor})"))
                    }
                    Kind::Dir => (0, "-".repeat(64), String::new()),
                };
                println!(
                    "{:04o} {}:{} {} {:>10} {} {}{}",
                    r.entry.perm, r.uid, r.gid, r.mtime, size, digest, r.entry.path, extra
                );
            }
            ExitCode::SUCCESS
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("cocoon-image: {msg}");
    ExitCode::from(1)
}
