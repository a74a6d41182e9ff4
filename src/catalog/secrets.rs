//! Secrets (`CREATE SECRET name AS 'value'`): values connector options
//! refer to (`password = SECRET name`) instead of holding them.
//!
//! A secret's value is kept in memory and written nowhere in the clear:
//! the DDL log (and so every checkpoint manifest) records it as
//! `CREATE SECRET name AS ENCRYPTED '<base64>'`, sealed with
//! ChaCha20-Poly1305 under a key kept outside the checkpoint store (a file
//! of the data directory, mode 0600: `--data-dir/secrets.key`), with the
//! secret's name as associated data (a sealed value cannot be moved to
//! another name). A checkpoint store that leaks (a copied directory, a
//! bucket) leaks no secret without the key.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{EddyError, Result};

/// Seals and opens secret values.
pub struct SecretBox {
    key: LessSafeKey,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

const KEY_BYTES: usize = 32;

impl SecretBox {
    /// A box with a fresh random key (secrets die with the process).
    pub fn ephemeral() -> Result<Self> {
        let mut key = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| crate::internal!("no randomness for a secrets key"))?;
        Self::with_key(&key)
    }

    /// The box of the key in `path`, made there (mode 0600) when absent.
    pub fn from_key_file(path: &Path) -> Result<Self> {
        let bad = |e: &dyn fmt::Display| {
            EddyError::InvalidParameter(format!("secrets key {}: {e}", path.display()))
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_BYTES => Self::with_key(&bytes),
            Ok(bytes) => Err(bad(&format!(
                "{} bytes; a key is {KEY_BYTES} bytes",
                bytes.len()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| crate::internal!("no randomness for a secrets key"))?;
                write_private(path, &key).map_err(|e| bad(&e))?;
                Self::with_key(&key)
            }
            Err(e) => Err(bad(&e)),
        }
    }

    fn with_key(key: &[u8]) -> Result<Self> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| crate::internal!("a secrets key of the wrong length"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed for the secret `name`, as base64 of nonce and
    /// ciphertext.
    pub fn seal(&self, name: &str, value: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| crate::internal!("no randomness for a nonce"))?;
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| crate::internal!("cannot seal a secret"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// The value `sealed` holds for the secret `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<String> {
        let refuse = || {
            EddyError::Checkpoint(format!(
                "secret \"{name}\" cannot be opened: it was sealed with another key than the \
                 data directory's secrets.key (or it was changed)"
            ))
        };
        let bytes = BASE64.decode(sealed).map_err(|_| refuse())?;
        if bytes.len() < NONCE_LEN {
            return Err(refuse());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refuse())?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
            .map_err(|_| refuse())?;
        String::from_utf8(plain.to_vec()).map_err(|_| refuse())
    }
}

/// Writes `bytes` to a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_name() {
        let dir = std::env::temp_dir().join(format!("eddy-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("secrets.key");
        let first = SecretBox::from_key_file(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal("pg", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, first.seal("pg", "hunter2").unwrap(), "fresh nonces");
        // The same key from the file opens it; another name or key does not.
        let again = SecretBox::from_key_file(&path).unwrap();
        assert_eq!(again.open("pg", &sealed).unwrap(), "hunter2");
        assert_eq!(
            again.open("other", &sealed).unwrap_err().sqlstate(),
            "58030"
        );
        let stranger = SecretBox::ephemeral().unwrap();
        assert!(stranger.open("pg", &sealed).is_err());
        assert!(again.open("pg", "not base64!").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
