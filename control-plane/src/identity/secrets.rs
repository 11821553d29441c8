//! Secrets at rest: envelope encryption with AES-256-GCM.
//!
//! Each sealed value gets its own random 256-bit **data key** (DEK); the value is encrypted under the
//! DEK, and the DEK is encrypted ("wrapped") under a **master key** taken from the environment
//! (`LEAKY_MASTER_KEY`, or a file named by `LEAKY_MASTER_KEY_FILE`). Rows store the wrapped DEK, the
//! ciphertext and the master key's version. Several master keys can be configured (`v1:<b64>,v2:<b64>`);
//! the newest seals, any configured one opens, and [`rewrap`] moves every row to the newest by
//! re-wrapping only the DEK (the ciphertext is untouched, so a rewrap is cheap, idempotent and
//! resumable: a row is one `UPDATE … WHERE key_version = <old>`).
//!
//! Both layers bind **associated data**: the DEK is bound to its row's identity and the version, the
//! value to its row's identity, so a ciphertext copied onto another row (or a version byte edited)
//! fails to open instead of decrypting as someone else's secret.
//!
//! Nothing here prints a key or a plaintext: [`Secret`]'s `Debug` redacts, and errors say what failed,
//! never with what.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;

/// A master key for development only: public (it is in the source), selected only by
/// `LEAKY_IDENTITY_DEV=1`. Anything sealed under it is readable by anyone with this repository.
const DEV_MASTER_KEY: [u8; 32] = *b"leaky-tokens-dev-master-key-0001";

const NONCE_LEN: usize = 12;

/// A value that must not be logged: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that needs it (a hash, a signature, a response body).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why secrets could not be configured, sealed or opened. Carries no key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("no master key: set LEAKY_MASTER_KEY or LEAKY_MASTER_KEY_FILE (or LEAKY_IDENTITY_DEV=1 for the public dev key)")]
    NoMasterKey,
    #[error("master key {0}: {1}")]
    BadMasterKey(String, &'static str),
    #[error("master key file: {0}")]
    File(String),
    #[error("{0}: {1}")]
    BadSetting(String, &'static str),
    #[error("sealed with master key version {0}, which is not configured")]
    UnknownVersion(i32),
    #[error("the sealed value failed authentication (tampered, or sealed for another row)")]
    Tampered,
    #[error("encryption failed")]
    Encrypt,
}

/// A value sealed by [`MasterKeys::seal`]: what a row stores.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_version: i32,
    /// Nonce ‖ AES-GCM(master key, DEK).
    pub wrapped_dek: Vec<u8>,
    /// Nonce ‖ AES-GCM(DEK, value).
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// The configured master keys by version; the newest seals.
#[derive(Clone)]
pub struct MasterKeys {
    keys: BTreeMap<i32, Secret<[u8; 32]>>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<i32> = self.keys.keys().copied().collect();
        f.debug_struct("MasterKeys")
            .field("versions", &versions)
            .finish()
    }
}

impl MasterKeys {
    /// Parses `<b64>` (version 1) or `v1:<b64>,v2:<b64>,…` (each 32 bytes, standard base64).
    pub fn parse(spec: &str) -> Result<Self, SecretError> {
        let mut keys = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (version, b64) = match part.split_once(':') {
                Some((v, b64)) => {
                    let n = v
                        .strip_prefix('v')
                        .and_then(|n| n.parse::<i32>().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            SecretError::BadMasterKey(v.to_owned(), "version must be v<n>, n ≥ 1")
                        })?;
                    (n, b64)
                }
                None => (1, part),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| SecretError::BadMasterKey(format!("v{version}"), "not base64"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| SecretError::BadMasterKey(format!("v{version}"), "not 32 bytes"))?;
            if keys.insert(version, Secret::new(key)).is_some() {
                return Err(SecretError::BadMasterKey(
                    format!("v{version}"),
                    "configured twice",
                ));
            }
        }
        if keys.is_empty() {
            return Err(SecretError::NoMasterKey);
        }
        Ok(Self { keys })
    }

    /// The public development key as version 1.
    pub fn dev() -> Self {
        Self {
            keys: BTreeMap::from([(1, Secret::new(DEV_MASTER_KEY))]),
        }
    }

    /// From `LEAKY_MASTER_KEY`, else the file named by `LEAKY_MASTER_KEY_FILE`, else the dev key when
    /// `dev` is set; otherwise [`SecretError::NoMasterKey`].
    pub fn from_env(dev: bool) -> Result<Self, SecretError> {
        if let Some(spec) = std::env::var("LEAKY_MASTER_KEY")
            .ok()
            .filter(|s| !s.is_empty())
        {
            return Self::parse(&spec);
        }
        if let Some(path) = std::env::var_os("LEAKY_MASTER_KEY_FILE").filter(|p| !p.is_empty()) {
            let spec = std::fs::read_to_string(&path)
                .map_err(|e| SecretError::File(format!("{}: {e}", path.to_string_lossy())))?;
            return Self::parse(&spec);
        }
        if dev {
            return Ok(Self::dev());
        }
        Err(SecretError::NoMasterKey)
    }

    /// The version new values are sealed under.
    pub fn newest(&self) -> i32 {
        self.keys.keys().next_back().copied().unwrap_or(1)
    }

    fn cipher(&self, version: i32) -> Result<Aes256Gcm, SecretError> {
        let key = self
            .keys
            .get(&version)
            .ok_or(SecretError::UnknownVersion(version))?;
        Aes256Gcm::new_from_slice(key.expose()).map_err(|_| SecretError::Encrypt)
    }

    /// Seals `plaintext` for the row `row_id` under the newest master key.
    pub fn seal(&self, plaintext: &[u8], row_id: &str) -> Result<Sealed, SecretError> {
        let dek = Secret::new(random_bytes::<32>()?);
        let data = Aes256Gcm::new_from_slice(dek.expose()).map_err(|_| SecretError::Encrypt)?;
        let ciphertext = encrypt(&data, plaintext, row_id.as_bytes())?;
        let version = self.newest();
        let wrapped_dek = encrypt(
            &self.cipher(version)?,
            dek.expose(),
            &dek_aad(row_id, version),
        )?;
        Ok(Sealed {
            key_version: version,
            wrapped_dek,
            ciphertext,
        })
    }

    /// Opens a value sealed for `row_id` (by any configured master key version).
    pub fn open(&self, sealed: &Sealed, row_id: &str) -> Result<Secret<Vec<u8>>, SecretError> {
        let dek = self.unwrap_dek(sealed, row_id)?;
        let data = Aes256Gcm::new_from_slice(dek.expose()).map_err(|_| SecretError::Tampered)?;
        decrypt(&data, &sealed.ciphertext, row_id.as_bytes()).map(Secret::new)
    }

    /// The same value re-wrapped under the newest master key (the ciphertext is kept); `None` if it
    /// already is.
    pub fn rewrap(&self, sealed: &Sealed, row_id: &str) -> Result<Option<Sealed>, SecretError> {
        let newest = self.newest();
        if sealed.key_version == newest {
            return Ok(None);
        }
        let dek = self.unwrap_dek(sealed, row_id)?;
        let wrapped_dek = encrypt(
            &self.cipher(newest)?,
            dek.expose(),
            &dek_aad(row_id, newest),
        )?;
        Ok(Some(Sealed {
            key_version: newest,
            wrapped_dek,
            ciphertext: sealed.ciphertext.clone(),
        }))
    }

    fn unwrap_dek(&self, sealed: &Sealed, row_id: &str) -> Result<Secret<Vec<u8>>, SecretError> {
        let master = self.cipher(sealed.key_version)?;
        let aad = dek_aad(row_id, sealed.key_version);
        decrypt(&master, &sealed.wrapped_dek, &aad).map(Secret::new)
    }
}

/// The DEK's associated data: its row and the master key version (so the stored version cannot be
/// edited to point at another key).
fn dek_aad(row_id: &str, version: i32) -> Vec<u8> {
    format!("leaky-dek:v{version}:{row_id}").into_bytes()
}

fn encrypt(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretError> {
    let nonce = random_bytes::<NONCE_LEN>()?;
    let body = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SecretError::Encrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + body.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

fn decrypt(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretError> {
    if sealed.len() < NONCE_LEN {
        return Err(SecretError::Tampered);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Tampered)?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map_err(|_| SecretError::Tampered)
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| SecretError::Encrypt)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_b64(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn seal_open_round_trip_and_row_binding() {
        let keys = MasterKeys::parse(&key_b64(7)).unwrap();
        let sealed = keys.seal(b"private key bytes", "kid-1").unwrap();
        assert_eq!(sealed.key_version, 1);
        assert_eq!(
            keys.open(&sealed, "kid-1").unwrap().expose(),
            b"private key bytes"
        );
        // The same ciphertext on another row does not open.
        assert_eq!(keys.open(&sealed, "kid-2"), Err(SecretError::Tampered));
    }

    #[test]
    fn tampering_any_part_is_detected() {
        let keys = MasterKeys::parse(&key_b64(7)).unwrap();
        let sealed = keys.seal(b"value", "row").unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut t = sealed.clone();
            t.ciphertext[i] ^= 1;
            assert_eq!(keys.open(&t, "row"), Err(SecretError::Tampered), "byte {i}");
        }
        let mut t = sealed.clone();
        t.wrapped_dek[20] ^= 0x80;
        assert_eq!(keys.open(&t, "row"), Err(SecretError::Tampered));
        let mut t = sealed.clone();
        t.ciphertext.truncate(5);
        assert_eq!(keys.open(&t, "row"), Err(SecretError::Tampered));
    }

    #[test]
    fn versions_newest_seals_rewrap_moves_old_rows() {
        let old = MasterKeys::parse(&format!("v1:{}", key_b64(1))).unwrap();
        let sealed = old.seal(b"value", "row").unwrap();
        let both = MasterKeys::parse(&format!("v1:{},v2:{}", key_b64(1), key_b64(2))).unwrap();
        assert_eq!(both.newest(), 2);
        // Old rows still open; a rewrap moves them to v2 and is then a no-op.
        assert_eq!(both.open(&sealed, "row").unwrap().expose(), b"value");
        let moved = both.rewrap(&sealed, "row").unwrap().unwrap();
        assert_eq!(moved.key_version, 2);
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert!(both.rewrap(&moved, "row").unwrap().is_none());
        // With v1 gone, the moved row opens and the old one reports its missing version.
        let new_only = MasterKeys::parse(&format!("v2:{}", key_b64(2))).unwrap();
        assert_eq!(new_only.open(&moved, "row").unwrap().expose(), b"value");
        assert_eq!(
            new_only.open(&sealed, "row"),
            Err(SecretError::UnknownVersion(1))
        );
        // Editing the stored version cannot redirect to another key.
        let mut lied = moved.clone();
        lied.key_version = 1;
        assert_eq!(both.open(&lied, "row"), Err(SecretError::Tampered));
    }

    #[test]
    fn bad_master_keys_are_refused_without_echoing_them() {
        for (spec, want) in [
            ("", "no master key"),
            ("bm90IDMyIGJ5dGVz", "not 32 bytes"),
            ("v0:AAAA", "version must be"),
            ("v1:%%%", "not base64"),
        ] {
            let err = MasterKeys::parse(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(!err.contains("%%%") && !err.contains("AAAA"), "{err}");
        }
        let twice = format!("v1:{},v1:{}", key_b64(1), key_b64(2));
        assert!(MasterKeys::parse(&twice).is_err());
    }

    #[test]
    fn debug_output_redacts() {
        let keys = MasterKeys::parse(&key_b64(9)).unwrap();
        let sealed = keys.seal(b"hunter2", "row").unwrap();
        let shown = format!(
            "{keys:?} {sealed:?} {:?} {}",
            Secret::new("hunter2"),
            Secret::new("hunter2")
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains(&key_b64(9)),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
