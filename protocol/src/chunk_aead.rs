//! AES-256-GCM for the response stream, with the key schedule done once per
//! response: aws-lc-rs (`LessSafeKey`, the expanded key and GHASH tables kept
//! across chunks) by default, the pure-Rust `aes-gcm` crate without the
//! `aws-lc` feature. Both produce the same bytes. Nonce uniqueness is the
//! caller's job (`stream` derives each nonce from a fresh key and a counter).

/// Key length (AES-256).
pub(crate) const KEY_LEN: usize = 32;
/// Nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// Tag length.
pub(crate) const TAG_LEN: usize = 16;

/// The AEAD rejected its input (bad tag, or too long for GCM).
#[derive(Debug)]
pub(crate) struct AeadFailure;

/// A prepared AES-256-GCM key.
pub(crate) struct ChunkKey {
    #[cfg(feature = "aws-lc")]
    key: aws_lc_rs::aead::LessSafeKey,
    #[cfg(not(feature = "aws-lc"))]
    key: aes_gcm::Aes256Gcm,
}

#[cfg(feature = "aws-lc")]
impl ChunkKey {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Result<ChunkKey, AeadFailure> {
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| AeadFailure)?;
        Ok(ChunkKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypt `buf[from..]` in place and append the tag.
    pub(crate) fn seal_append_tag(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), AeadFailure> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let body = buf.get_mut(from..).ok_or(AeadFailure)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .map_err(|_| AeadFailure)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypt `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
    pub(crate) fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, AeadFailure> {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map(|pt| pt.len())
            .map_err(|_| AeadFailure)
    }
}

#[cfg(not(feature = "aws-lc"))]
impl ChunkKey {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Result<ChunkKey, AeadFailure> {
        use aes_gcm::KeyInit;
        Ok(ChunkKey {
            key: aes_gcm::Aes256Gcm::new_from_slice(key).map_err(|_| AeadFailure)?,
        })
    }

    /// Encrypt `buf[from..]` in place and append the tag.
    pub(crate) fn seal_append_tag(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), AeadFailure> {
        use aes_gcm::aead::AeadInPlace;
        let body = buf.get_mut(from..).ok_or(AeadFailure)?;
        let tag = self
            .key
            .encrypt_in_place_detached(&nonce.into(), aad, body)
            .map_err(|_| AeadFailure)?;
        buf.extend_from_slice(&tag[..]);
        Ok(())
    }

    /// Decrypt `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
    pub(crate) fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, AeadFailure> {
        use aes_gcm::aead::AeadInPlace;
        let len = buf.len().checked_sub(TAG_LEN).ok_or(AeadFailure)?;
        let (ct, tag) = buf.split_at_mut(len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadFailure)?;
        let tag = aes_gcm::Tag::from(tag);
        self.key
            .decrypt_in_place_detached(&nonce.into(), aad, ct, &tag)
            .map_err(|_| AeadFailure)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test Case 16 of McGrew and Viega, "The Galois/Counter Mode of
    /// Operation" (AES-256, 60-byte plaintext, 20-byte AAD), so both backends
    /// are checked against the same known answer.
    #[test]
    fn known_answer() {
        let key: [u8; 32] =
            hex32("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let nonce: [u8; 12] = [
            0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce, 0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88,
        ];
        let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected_ct = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
        let expected_tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");

        let k = ChunkKey::new(&key).unwrap();
        let mut buf = pt.clone();
        k.seal_append_tag(nonce, &aad, &mut buf, 0).unwrap();
        assert_eq!(&buf[..pt.len()], &expected_ct[..]);
        assert_eq!(&buf[pt.len()..], &expected_tag[..]);
        let n = k.open_in_place(nonce, &aad, &mut buf).unwrap();
        assert_eq!(&buf[..n], &pt[..]);

        let mut bad = expected_ct.clone();
        bad.extend_from_slice(&expected_tag);
        bad[0] ^= 1;
        assert!(k.open_in_place(nonce, &aad, &mut bad).is_err());
        assert!(k.open_in_place(nonce, &aad, &mut [0u8; 3]).is_err());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex32(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }
}
