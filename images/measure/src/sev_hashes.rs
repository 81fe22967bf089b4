//! The SEV hashes table QEMU writes into guest memory for a direct kernel
//! boot, so that the launch measurement covers kernel, initrd and command
//! line (OVMF checks the files it is handed against the table).
//!
//! Layout (QEMU `target/i386/sev.c`, `SevHashTable`; the same GUIDs are the
//! ones edk2's `OvmfPkg/Library/BlobVerifierLib` (SEV hashes) looks up):
//!
//! ```text
//! table:  GUID 9438d606-4f22-4cc9-b479-a793d411fd21 ‖ u16 length (168)
//!         entry(cmdline) ‖ entry(initrd) ‖ entry(kernel)
//! entry:  GUID ‖ u16 length (50) ‖ SHA-256 (32 bytes)
//!   cmdline 97d02dd8-bd20-4c94-aa78-e7714d36ab2a
//!   initrd  44baf731-3a2f-4bd7-9af1-41e29169781d
//!   kernel  4de79437-abd2-427f-b835-d5b172d2045b
//! ```
//!
//! QEMU pads the table with zeros to a multiple of 16 bytes (176) and, for
//! SEV-SNP, places it in a zeroed 4 KiB page at the table GPA's offset
//! within its page. The command-line hash covers the string and its NUL
//! terminator (just `"\0"` without a command line); the initrd hash is of an
//! empty input without an initrd.

use crate::firmware::Guid;
use crate::{sha256, PAGE_SIZE};

const TABLE_GUID: Guid = Guid::new(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
const CMDLINE_GUID: Guid = Guid::new(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
const INITRD_GUID: Guid = Guid::new(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
const KERNEL_GUID: Guid = Guid::new(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

const ENTRY_LEN: usize = 16 + 2 + 32;
/// Bytes of the table proper.
pub const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// Bytes of the table with its padding, as QEMU copies it.
pub const PADDED_TABLE_LEN: usize = (TABLE_LEN + 15) & !15;

/// SHA-256 digests of what QEMU hands OVMF for a direct kernel boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel file.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of empty input when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line and its NUL terminator.
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// Hash the files and command line. `None` and an empty command line
    /// both mean no command line.
    pub fn from_contents(
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: Option<&str>,
    ) -> KernelHashes {
        KernelHashes {
            kernel: sha256(kernel),
            initrd: sha256(initrd.unwrap_or_default()),
            cmdline: Self::cmdline_hash(cmdline),
        }
    }

    /// The hash of a kernel or initrd file: SHA-256 of its bytes.
    pub fn file_hash(contents: &[u8]) -> [u8; 32] {
        sha256(contents)
    }

    /// The command-line hash: SHA-256 of the bytes and a NUL.
    pub fn cmdline_hash(cmdline: Option<&str>) -> [u8; 32] {
        let mut b = cmdline.unwrap_or_default().as_bytes().to_vec();
        b.push(0);
        sha256(&b)
    }

    /// The padded table (176 bytes).
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(TABLE_GUID.as_bytes());
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        for (i, (guid, hash)) in [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 18 + i * ENTRY_LEN;
            t[at..at + 16].copy_from_slice(guid.as_bytes());
            t[at + 16..at + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[at + 18..at + ENTRY_LEN].copy_from_slice(hash);
        }
        t
    }

    /// A zeroed page with the padded table at `offset`, or `None` when the
    /// table would not fit in the page there.
    pub fn page(&self, offset: usize) -> Option<Box<[u8; PAGE_SIZE]>> {
        let end = offset
            .checked_add(PADDED_TABLE_LEN)
            .filter(|e| *e <= PAGE_SIZE)?;
        let mut p = Box::new([0u8; PAGE_SIZE]);
        p[offset..end].copy_from_slice(&self.table());
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        let h = KernelHashes::from_contents(b"", None, Some(""));
        let t = h.table();
        assert_eq!(TABLE_LEN, 168);
        assert_eq!(PADDED_TABLE_LEN, 176);
        assert_eq!(
            hex::encode(&t[..16]),
            "06d638942 24fc94cb479a793d411fd21".replace(' ', "")
        );
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18 + 16..18 + 18], &[50, 0]);
        // sha256("\0"), the hash of an absent command line.
        assert_eq!(
            hex::encode(&t[18 + 18..18 + 50]),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(&t[168..], &[0; 8]);
        assert!(h.page(4096 - 176).is_some());
        assert!(h.page(4096 - 175).is_none());
    }
}
