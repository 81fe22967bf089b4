//! The standard wallet contract, v4r2: its address from an ed25519 public
//! key, the signed external message that makes it send up to four internal
//! messages, and its key file.
//!
//! Layouts (the wallet's published TL-B and code):
//!
//! * data: `seqno:uint32 subwallet_id:uint32 public_key:bits256
//!   plugins:(HashmapE 256 ...)` (empty dictionary at deployment);
//! * address: workchain 0, hash of the `StateInit` cell (`split_depth`,
//!   `special` absent, `code` and `data` present, no library: bits `00110`,
//!   two references; tblkch.pdf §3.1.7);
//! * external message body: `signature:bits512` then the signed part
//!   `subwallet_id:uint32 valid_until:uint32 seqno:uint32 op:uint8 (0:
//!   simple send)` and, per message, `mode:uint8` and a reference to a
//!   `MessageRelaxed`; the signature is ed25519 over the signed part's cell
//!   hash;
//! * the envelope: `ext_in_msg_info$10 src:addr_none dest:MsgAddressInt
//!   import_fee:0`, the `StateInit` as a reference when deploying, the body
//!   as a reference.
//!
//! The code is the public on-chain constant [`CODE_HASH`] names; a test
//! checks the bytes below hash to it.

use std::path::Path;

use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{Cell, CellBuilder, TonError};
use ed25519_dalek::{Signer as _, SigningKey};

/// The subwallet id of the standard wallet on workchain 0 (698983191 =
/// 0x29a9a317).
pub const DEFAULT_SUBWALLET_ID: u32 = 698_983_191;

/// Representation hash of the wallet v4r2 code cell.
pub const CODE_HASH: [u8; 32] = [
    0xfe, 0xb5, 0xff, 0x68, 0x20, 0xe2, 0xff, 0x0d, 0x94, 0x83, 0xe7, 0xe0, 0xd6, 0x2c, 0x81, 0x7d,
    0x84, 0x67, 0x89, 0xfb, 0x4a, 0xe5, 0x80, 0xc8, 0x78, 0x86, 0x6d, 0x95, 0x9d, 0xab, 0xd5, 0xc0,
];

/// The wallet v4r2 code, a bag of cells (no index, no CRC).
const CODE_BOC_HEX: &[&str] = &[
    "b5ee9c72010214010002d4000114ff00f4a413f4bcf2c80b01020120020f020148030602e6d001d0d3032171b0925f04",
    "e022d749c120925f04e002d31f218210706c7567bd22821064737472bdb0925f05e003fa403020fa4401c8ca07cbffc9",
    "d0ed44d0810140d721f404305c810108f40a6fa131b3925f07e005d33fc8258210706c7567ba923830e30d0382106473",
    "7472ba925f06e30d0405007801fa00f40430f8276f2230500aa121bef2e0508210706c7567831eb17080185004cb0526",
    "cf1658fa0219f400cb6917cb1f5260cb3f20c98040fb0006008a5004810108f45930ed44d0810140d720c801cf16f400",
    "c9ed540172b08e23821064737472831eb17080185005cb055003cf1623fa0213cb6acb1fcb3fc98040fb00925f03e202",
    "0120070e020120080d020158090a003db29dfb513420405035c87d010c00b23281f2fff274006040423d029be84c6002",
    "01200b0c0019adce76a26840206b90eb85ffc00019af1df6a26840106b90eb858fc00011b8c97ed44d0d70b1f80059bd",
    "242b6f6a2684080a06b90fa0218470d4080847a4937d29910ce6903e9ff9837812801b7810148987159f318404f8f283",
    "08d71820d31fd31fd31f02f823bbf264ed44d0d31fd31fd3fff404d15143baf2a15151baf2a205f901541064f910f2a3",
    "f80024a4c8cb1f5240cb1f5230cbff5210f400c9ed54f80f01d30721c0009f6c519320d74a96d307d402fb00e830e021",
    "c001e30021c002e30001c0039130e30d03a4c8cb1f12cb1fcbff10111213006ed207fa00d4d422f90005c8ca0715cbff",
    "c9d077748018c8cb05cb0222cf165005fa0214cb6b12ccccc973fb00c84014810108f451f2a7020070810108d718fa00",
    "d33fc8542047810108f451f2a782106e6f746570748018c8cb05cb025006cf165004fa0214cb6a12cb1fcb3fc973fb00",
    "02006c810108d718fa00d33f305224810108f459f2a782106473747270748018c8cb05cb025005cf165003fa0213cb6a",
    "cb1f12cb3fc973fb00000af400c9ed54",
];

/// Most internal messages in one external message.
pub const MAX_MESSAGES: usize = 4;

/// Send mode bits (`SENDRAWMSG`'s mode, tvm.pdf A.11.10): pay forwarding
/// fees separately.
pub const MODE_PAY_FEES_SEPARATELY: u8 = 1;
/// Ignore errors in the action phase.
pub const MODE_IGNORE_ERRORS: u8 = 2;

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// The key file cannot be used.
    #[error("wallet key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// More than [`MAX_MESSAGES`] messages, or none.
    #[error("a wallet v4 message carries 1 to 4 internal messages, not {0}")]
    MessageCount(usize),
    /// A cell could not be built.
    #[error("building the message: {0}")]
    Cell(#[from] TonError),
}

/// An internal message for the wallet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalMessage {
    /// Where to.
    pub dest: ContractAddress,
    /// Nanoton.
    pub value: u128,
    /// Bounce back when the destination fails (or has no code).
    pub bounce: bool,
    /// The body cell, if any (empty otherwise).
    pub body: Option<Cell>,
    /// A `StateInit` (code, data) to deploy the destination with.
    pub state_init: Option<(Cell, Cell)>,
    /// Send mode (e.g. [`MODE_PAY_FEES_SEPARATELY`] | [`MODE_IGNORE_ERRORS`]).
    pub mode: u8,
}

impl InternalMessage {
    /// A plain transfer: mode 3 (fees paid separately, errors ignored).
    pub fn transfer(dest: ContractAddress, value: u128, bounce: bool) -> InternalMessage {
        InternalMessage {
            dest,
            value,
            bounce,
            body: None,
            state_init: None,
            mode: MODE_PAY_FEES_SEPARATELY | MODE_IGNORE_ERRORS,
        }
    }

    /// `MessageRelaxed` (block.tlb): `int_msg_info$0 ihr_disabled:Bool
    /// bounce:Bool bounced:Bool src:MsgAddress dest:MsgAddressInt
    /// value:CurrencyCollection ihr_fee:Grams fwd_fee:Grams
    /// created_lt:uint64 created_at:uint32`, then init and body (each as a
    /// reference when present). Source, fees and times are zero: the
    /// wallet's `SENDRAWMSG` fills them in.
    pub fn to_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_bit(false)? // int_msg_info$0
            .store_bit(true)? // ihr_disabled
            .store_bit(self.bounce)?
            .store_bit(false)? // bounced
            .store_address(None)?
            .store_address(Some(&self.dest))?
            .store_coins(self.value)?
            .store_bit(false)? // no extra currencies
            .store_coins(0)? // ihr_fee
            .store_coins(0)? // fwd_fee
            .store_uint(0, 64)?
            .store_uint(0, 32)?;
        match &self.state_init {
            None => {
                b.store_bit(false)?;
            }
            Some((code, data)) => {
                b.store_bit(true)?
                    .store_bit(true)?
                    .store_ref(state_init(code.clone(), data.clone()))?;
            }
        }
        match &self.body {
            None => {
                b.store_bit(false)?;
            }
            Some(body) => {
                b.store_bit(true)?.store_ref(body.clone())?;
            }
        }
        Ok(b.build())
    }
}

/// `StateInit` with code and data only.
pub fn state_init(code: Cell, data: Cell) -> Cell {
    let mut b = CellBuilder::new();
    // split_depth, special absent; code, data present; library absent.
    // Five bits and two references always fit.
    #[allow(clippy::expect_used)]
    b.store_uint(0b00110, 5)
        .and_then(|b| b.store_ref(code))
        .and_then(|b| b.store_ref(data))
        .expect("a StateInit fits one cell");
    b.build()
}

/// The address of a contract deployed with `(code, data)` on `workchain`.
pub fn contract_address(workchain: i8, code: Cell, data: Cell) -> ContractAddress {
    ContractAddress {
        workchain,
        hash: state_init(code, data).hash(),
    }
}

/// The wallet v4r2 code cell.
pub fn code() -> Cell {
    let hex: String = CODE_BOC_HEX.concat();
    // A constant checked by the tests (it parses and hashes to CODE_HASH).
    #[allow(clippy::expect_used)]
    let boc = hex::decode(hex).expect("the wallet code constant is hex");
    #[allow(clippy::expect_used)]
    Cell::from_boc(&boc).expect("the wallet code constant parses")
}

/// A wallet v4r2 of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletV4 {
    /// The ed25519 public key.
    pub public_key: [u8; 32],
    /// Workchain (0).
    pub workchain: i8,
    /// Subwallet id ([`DEFAULT_SUBWALLET_ID`]).
    pub subwallet_id: u32,
}

impl WalletV4 {
    /// The standard wallet of `public_key`: workchain 0, subwallet
    /// 698983191.
    pub fn new(public_key: [u8; 32]) -> WalletV4 {
        WalletV4 {
            public_key,
            workchain: 0,
            subwallet_id: DEFAULT_SUBWALLET_ID,
        }
    }

    /// The data cell it is deployed with (seqno 0, no plugins).
    pub fn initial_data(&self) -> Cell {
        let mut b = CellBuilder::new();
        // 32 + 32 + 256 + 1 bits fit.
        #[allow(clippy::expect_used)]
        b.store_uint(0, 32)
            .and_then(|b| b.store_uint(u128::from(self.subwallet_id), 32))
            .and_then(|b| b.store_bytes(&self.public_key))
            .and_then(|b| b.store_bit(false))
            .expect("wallet data fits one cell");
        b.build()
    }

    /// Its `StateInit` (code and initial data).
    pub fn state_init(&self) -> Cell {
        state_init(code(), self.initial_data())
    }

    /// Its address.
    pub fn address(&self) -> ContractAddress {
        contract_address(self.workchain, code(), self.initial_data())
    }

    /// The body the wallet checks: the signature, then the signed part.
    pub fn signed_body(
        &self,
        key: &SigningKey,
        seqno: u32,
        valid_until: u32,
        messages: &[InternalMessage],
    ) -> Result<Cell, WalletError> {
        if messages.is_empty() || messages.len() > MAX_MESSAGES {
            return Err(WalletError::MessageCount(messages.len()));
        }
        let mut signed = CellBuilder::new();
        signed
            .store_uint(u128::from(self.subwallet_id), 32)?
            .store_uint(u128::from(valid_until), 32)?
            .store_uint(u128::from(seqno), 32)?
            .store_uint(0, 8)?; // op 0: simple send
        for m in messages {
            signed
                .store_uint(u128::from(m.mode), 8)?
                .store_ref(m.to_cell()?)?;
        }
        let signed = signed.build();
        let signature = key.sign(&signed.hash()).to_bytes();
        let mut body = CellBuilder::new();
        body.store_bytes(&signature)?
            .store_bits(signed.data(), signed.bit_len())?;
        for r in signed.refs() {
            body.store_ref(r.clone())?;
        }
        Ok(body.build())
    }

    /// The whole external message (a bag of cells, ready for
    /// [`ChainClient::send_message`](crate::ChainClient::send_message)):
    /// `messages` signed for `seqno`, valid until `valid_until` (unix
    /// seconds); with `deploy`, the wallet's `StateInit` rides along so the
    /// first message deploys it (seqno 0).
    pub fn external_message(
        &self,
        key: &SigningKey,
        seqno: u32,
        valid_until: u32,
        messages: &[InternalMessage],
        deploy: bool,
    ) -> Result<Vec<u8>, WalletError> {
        let body = self.signed_body(key, seqno, valid_until, messages)?;
        let mut b = CellBuilder::new();
        b.store_uint(0b10, 2)? // ext_in_msg_info$10
            .store_address(None)? // src: addr_none
            .store_address(Some(&self.address()))?
            .store_coins(0)?; // import_fee
        if deploy {
            b.store_bit(true)?
                .store_bit(true)?
                .store_ref(self.state_init())?;
        } else {
            b.store_bit(false)?;
        }
        b.store_bit(true)?.store_ref(body)?;
        Ok(b.build().to_boc())
    }
}

/// Loads a wallet key: a file of 32 raw bytes (the ed25519 seed) or 64
/// hex characters (whitespace around them allowed). The file must not be
/// readable or writable by group or others (mode 0600 or stricter).
pub fn load_key(path: &Path) -> Result<SigningKey, WalletError> {
    let err = |reason: String| WalletError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {mode:04o} lets group or others read it; a wallet key must be 0600 or stricter (chmod 600 {})",
                path.display()
            )));
        }
    }
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        seed.copy_from_slice(&bytes);
    } else {
        let text = std::str::from_utf8(&bytes)
            .map(str::trim)
            .map_err(|_| err("neither 32 raw bytes nor 64 hex characters".into()))?;
        if text.len() != 64 {
            return Err(err(format!(
                "neither 32 raw bytes nor 64 hex characters ({} bytes)",
                bytes.len()
            )));
        }
        hex::decode_to_slice(text, &mut seed[..])
            .map_err(|_| err("64 characters that are not hex".into()))?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_the_published_v4r2() {
        assert_eq!(code().hash(), CODE_HASH);
        assert_eq!(
            hex::encode(CODE_HASH),
            "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"
        );
    }

    #[test]
    fn message_shape() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let w = WalletV4::new(key.verifying_key().to_bytes());
        let dest = ContractAddress {
            workchain: 0,
            hash: [1; 32],
        };
        let msgs = vec![InternalMessage::transfer(dest, 5, true); 5];
        assert!(matches!(
            w.external_message(&key, 0, 1, &msgs, true),
            Err(WalletError::MessageCount(5))
        ));
        assert!(w.external_message(&key, 0, 1, &[], true).is_err());
        let boc = w.external_message(&key, 3, 100, &msgs[..4], false).unwrap();
        let root = Cell::from_boc(&boc).unwrap();
        let mut s = root.as_slice();
        assert_eq!(s.load_uint(2).unwrap(), 0b10);
        assert_eq!(s.load_address().unwrap(), None);
        assert_eq!(s.load_address().unwrap(), Some(w.address()));
        assert_eq!(s.load_coins().unwrap(), 0);
        assert!(!s.load_bit().unwrap(), "no StateInit");
        assert!(s.load_bit().unwrap());
        let body = s.load_ref().unwrap();
        s.end().unwrap();
        let mut b = body.as_slice();
        let sig = b.load_bytes(64).unwrap();
        assert_eq!(b.load_uint(32).unwrap(), u128::from(DEFAULT_SUBWALLET_ID));
        assert_eq!(b.load_uint(32).unwrap(), 100);
        assert_eq!(b.load_uint(32).unwrap(), 3);
        assert_eq!(b.load_uint(8).unwrap(), 0);
        assert_eq!(b.remaining_refs(), 4);
        // The signature verifies over the signed part's hash.
        let mut signed = CellBuilder::new();
        signed
            .store_bits(&body.data()[64..], body.bit_len() - 512)
            .unwrap();
        for r in body.refs() {
            signed.store_ref(r.clone()).unwrap();
        }
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        key.verifying_key()
            .verify_strict(&signed.build().hash(), &sig)
            .unwrap();
    }

    #[test]
    fn key_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("cocoon-wallet-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, bytes: &[u8], mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let raw = put("raw", &[9; 32], 0o600);
        let hex_file = put("hex", format!("{}\n", "09".repeat(32)).as_bytes(), 0o400);
        let a = load_key(&raw).unwrap();
        let b = load_key(&hex_file).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        let open = put("open", &[9; 32], 0o640);
        let e = load_key(&open).unwrap_err().to_string();
        assert!(e.contains("0640") && e.contains("chmod 600"), "{e}");
        let short = put("short", &[9; 31], 0o600);
        assert!(load_key(&short).is_err());
        let nothex = put("nothex", "zz".repeat(32).as_bytes(), 0o600);
        assert!(load_key(&nothex)
            .unwrap_err()
            .to_string()
            .contains("not hex"));
        assert!(load_key(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
