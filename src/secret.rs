//! The signing key: a public key id and a secret that never leaves this process.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Secret bytes of an Agent Access key.
///
/// The bytes are zeroed when the value drops, and `Debug` and `Display` print a placeholder,
/// so a stray `{:?}` in a log line cannot leak the key.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

/// Placeholder that `Debug` and `Display` print in place of a secret.
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

/// An error loading a secret. The messages never contain secret bytes.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    pub id: String,
    pub secret: Secret,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

/// The source of the secret: a file or an environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// The source of the key id: the configuration or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyIdSource {
    Inline(String),
    File(PathBuf),
}

/// The sources of a whole key, read again on every reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySource {
    pub id: KeyIdSource,
    pub secret: SecretSource,
}

/// An error loading a key. The messages never contain secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key id file '{path}': {message}")]
    IdFile { path: String, message: String },
    #[error("secret file '{path}': {source}")]
    SecretFile { path: String, source: SecretError },
    #[error("secret environment variable ${name}: {source}")]
    SecretEnv { name: String, source: SecretError },
    #[error("the key files changed while they were read; read again at the next reload")]
    Torn,
}

/// How many times a load is retried when a rotation swaps the files under it.
const SNAPSHOT_ATTEMPTS: usize = 3;

impl SecretSource {
    pub fn load(&self) -> Result<Secret, KeyError> {
        match self {
            SecretSource::File(path) => {
                Secret::from_file(path).map_err(|source| KeyError::SecretFile {
                    path: path.display().to_string(),
                    source,
                })
            }
            SecretSource::Env(name) => {
                Secret::from_env(name).map_err(|source| KeyError::SecretEnv {
                    name: name.clone(),
                    source,
                })
            }
        }
    }
}

impl KeySource {
    /// Reads the key id and the secret from one snapshot of their files.
    ///
    /// A mounted Kubernetes Secret is updated by pointing a `..data` symlink at a new
    /// directory. Both files are resolved to their real paths, read there (those
    /// directories are never modified in place), and the read is retried when the two
    /// resolved into different directories or when a path moved while it was read.
    pub fn load(&self) -> Result<SigningKey, KeyError> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            match self.load_once() {
                Err(KeyError::Torn) => continue,
                result => return result,
            }
        }
        Err(KeyError::Torn)
    }

    fn load_once(&self) -> Result<SigningKey, KeyError> {
        let (KeyIdSource::File(id_path), SecretSource::File(secret_path)) =
            (&self.id, &self.secret)
        else {
            return Ok(SigningKey {
                id: self.load_id(None)?,
                secret: self.secret.load()?,
            });
        };

        let id_real =
            std::fs::canonicalize(id_path).map_err(|error| id_error(id_path, error.to_string()))?;
        let secret_real =
            std::fs::canonicalize(secret_path).map_err(|error| KeyError::SecretFile {
                path: secret_path.display().to_string(),
                source: SecretError::Read(error),
            })?;
        let same_snapshot =
            id_path.parent() != secret_path.parent() || id_real.parent() == secret_real.parent();
        if !same_snapshot {
            return Err(KeyError::Torn);
        }

        let key = SigningKey {
            id: self.load_id(Some(&id_real))?,
            secret: SecretSource::File(secret_real.clone()).load()?,
        };
        // A path that resolves elsewhere now was swapped during the read.
        let still_same = std::fs::canonicalize(id_path).ok() == Some(id_real)
            && std::fs::canonicalize(secret_path).ok() == Some(secret_real);
        if still_same {
            Ok(key)
        } else {
            Err(KeyError::Torn)
        }
    }

    fn load_id(&self, resolved: Option<&Path>) -> Result<String, KeyError> {
        match &self.id {
            KeyIdSource::Inline(id) => Ok(id.clone()),
            KeyIdSource::File(path) => {
                let read_path = resolved.unwrap_or(path);
                let text = std::fs::read_to_string(read_path)
                    .map_err(|error| id_error(path, error.to_string()))?;
                let id = text.trim_end_matches(['\n', '\r']).to_owned();
                crate::config::validate_key_id(&id).map_err(|message| id_error(path, message))?;
                Ok(id)
            }
        }
    }
}

fn id_error(path: &Path, message: String) -> KeyError {
    KeyError::IdFile {
        path: path.display().to_string(),
        message,
    }
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
