//! The signing key: a public key id and a secret that never leaves this process.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

/// Secret bytes of an Agent Access key.
///
/// The bytes are zeroed when the value drops, and `Debug` and `Display` print a placeholder,
/// so a stray `{:?}` in a log line cannot leak the key.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

/// What `Debug` and `Display` print in place of a secret.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    /// Wraps secret bytes. An empty secret is rejected because it would sign with a known key.
    pub fn new(bytes: Vec<u8>) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file as Kubernetes mounts it: the whole file, minus one trailing
    /// `\n` or `\r\n`, which editors and `echo` add.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let mut bytes = std::fs::read(path).map_err(SecretError::Read)?;
        strip_trailing_newline(&mut bytes);
        Self::new(bytes)
    }

    /// Reads a secret from the named environment variable, minus one trailing newline.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value = std::env::var_os(name).ok_or(SecretError::MissingEnv)?;
        let mut bytes = value.into_encoded_bytes();
        strip_trailing_newline(&mut bytes);
        Self::new(bytes)
    }

    /// Returns the secret bytes for keying the HMAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

fn strip_trailing_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a secret could not be loaded. The messages never contain secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the environment variable is not set")]
    MissingEnv,
    #[error("cannot read the secret file: {0}")]
    Read(#[source] std::io::Error),
}

/// A key id with its secret, swapped as one unit so that no request is signed with one
/// key's id and another key's secret.
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub id: String,
    pub secret: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact_secret() {
        let secret = Secret::new(b"hunter2-very-secret".to_vec()).unwrap();
        let key = SigningKey {
            id: "key_1".into(),
            secret: secret.clone(),
        };

        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert!(!format!("{key:?}").contains("hunter2"));
    }

    #[test]
    fn file_secret_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("aap-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");

        std::fs::write(&path, b"abc\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), b"abc");

        std::fs::write(&path, b"abc\r\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), b"abc");

        std::fs::write(&path, b"abc \n\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), b"abc \n");

        std::fs::write(&path, b"\n").unwrap();
        assert!(matches!(Secret::from_file(&path), Err(SecretError::Empty)));

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
