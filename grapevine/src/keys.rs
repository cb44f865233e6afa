//! Key files for authenticated streams (PROTOCOL.md §11).
//!
//! A key file holds one key per line, `grapevine-key 1 <id> <key>`: the
//! format version, the key's [`KeyId`] (8 hex digits, which checks the key),
//! and its 32 bytes as 64 hex digits. Blank lines and lines starting with
//! `#` are ignored. The first key seals; every key opens, which is how keys
//! rotate without a restart. A key file must be readable by its owner only.
//!
//! ```
//! use grapevine::keys;
//!
//! let key = keys::generate()?;
//! let text = keys::format_key(&key);
//! assert_eq!(keys::parse_keys(&text)?, vec![key]);
//! # Ok::<(), keys::KeyError>(())
//! ```
//!
//! [`read_keyring`] reads a file into the [`Keyring`] that
//! [`Security`](grapevine_core::auth::Security) takes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use grapevine_core::auth::{KeyId, Keyring, KeyringError, StreamKey, KEY_LEN};

/// What is wrong with a key or a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random generator failed: no key was made.
    #[error("the operating system's random generator failed: no key was made")]
    Random,
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The key file can be read by others than its owner.
    #[error(
        "key file {path} can be read by others than its owner (mode {mode:03o}): \
         run `chmod 600 {path}`"
    )]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not a key.
    #[error("line {line}: {what} (expected `grapevine-key 1 <8 hex digits> <64 hex digits>`)")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A line's id does not match its key: a damaged or mistyped line.
    #[error("line {line}: the id {said} does not match the key (its id is {actual}): the line is damaged")]
    WrongId {
        /// 1-based line number.
        line: usize,
        /// The id written.
        said: String,
        /// The key's id.
        actual: KeyId,
    },
    /// Two lines hold the same key.
    #[error("line {line}: key {id} is already on line {first}")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The line it first appears on.
        first: usize,
        /// Its id.
        id: KeyId,
    },
    /// No key in the file.
    #[error("no key in it: make one with `grapevine keygen`")]
    Empty,
    /// The keys cannot make a keyring (two different keys with one id).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// The keys of the key file at `path`, as a [`Keyring`] (the first seals):
/// [`read_key_file`], then [`Keyring::new`].
///
/// # Errors
///
/// As [`read_key_file`], and [`KeyError::Keyring`].
pub fn read_keyring(path: &Path) -> Result<Keyring, KeyError> {
    Ok(Keyring::new(read_key_file(path)?)?)
}

/// A new key from the operating system's random generator (never a
/// fallback: an error if it fails).
///
/// # Errors
///
/// [`KeyError::Random`] if the generator fails.
pub fn generate() -> Result<StreamKey, KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(StreamKey::from_bytes(bytes))
}

/// The line of a key file that holds `key` (with its newline).
#[must_use]
pub fn format_key(key: &StreamKey) -> String {
    let hex: String = key
        .expose_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("grapevine-key 1 {} {hex}\n", key.id())
}

/// The keys of a key file's text, in order.
///
/// # Errors
///
/// [`KeyError::Malformed`], [`KeyError::WrongId`], [`KeyError::Duplicate`]
/// naming the line, or [`KeyError::Empty`].
pub fn parse_keys(text: &str) -> Result<Vec<StreamKey>, KeyError> {
    let mut keys: Vec<(usize, StreamKey)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |what: &str| KeyError::Malformed {
            line,
            what: what.to_owned(),
        };
        let fields: Vec<&str> = l.split_whitespace().collect();
        let [tag, version, id, hex] = fields[..] else {
            return Err(bad("not four fields"));
        };
        if tag != "grapevine-key" {
            return Err(bad("does not start with `grapevine-key`"));
        }
        if version != "1" {
            return Err(bad(&format!("format version {version:?} is not 1")));
        }
        let bytes = unhex(hex).ok_or_else(|| bad("the key is not 64 hex digits"))?;
        let key = StreamKey::from_bytes(bytes);
        if u32::from_str_radix(id, 16).ok().filter(|_| id.len() == 8) != Some(key.id().0) {
            return Err(KeyError::WrongId {
                line,
                said: id.to_owned(),
                actual: key.id(),
            });
        }
        if let Some((first, _)) = keys.iter().find(|(_, k)| k.id() == key.id()) {
            return Err(KeyError::Duplicate {
                line,
                first: *first,
                id: key.id(),
            });
        }
        keys.push((line, key));
    }
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

fn unhex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Reads a key file: refused if others than its owner may read it.
///
/// # Errors
///
/// [`KeyError::Io`], [`KeyError::LoosePermissions`], or what
/// [`parse_keys`] says, with the path.
pub fn read_key_file(path: &Path) -> Result<Vec<StreamKey>, KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_keys(&text)
}

/// Writes `keys` to a new key file readable by its owner only; an
/// existing file is not replaced.
///
/// # Errors
///
/// [`KeyError::Io`] (an existing file among them).
pub fn write_key_file(path: &Path, keys: &[StreamKey]) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for k in keys {
        f.write_all(format_key(k).as_bytes()).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "grapevine-keys-{}-{}",
            std::process::id(),
            generate().unwrap().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_written_file_reads_back_and_is_private() {
        let d = dir();
        let path = d.join("stream.key");
        let keys = [generate().unwrap(), generate().unwrap()];
        write_key_file(&path, &keys).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key_file(&path).unwrap(), keys);
        assert!(matches!(
            write_key_file(&path, &keys),
            Err(KeyError::Io { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_key_file(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyError::LoosePermissions { mode: 0o640, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_bad_line_is_named() {
        let good = format_key(&StreamKey::from_bytes([0x42; 32]));
        assert_eq!(
            good,
            format!("grapevine-key 1 80fa9f89 {}\n", "42".repeat(32))
        );
        let line_of = |text: &str| match parse_keys(text) {
            Err(KeyError::Malformed { line, .. } | KeyError::WrongId { line, .. }) => line,
            other => panic!("{other:?}"),
        };
        assert_eq!(line_of("# comment\n\nnope\n"), 3);
        assert_eq!(
            line_of(&good.replace("grapevine-key 1", "grapevine-key 2")),
            1
        );
        assert_eq!(line_of(&good.replace("grapevine-key", "other-key")), 1);
        assert_eq!(line_of(&good.replace("80fa9f89", "80fa9f88")), 1);
        assert_eq!(line_of(&good.replace("80fa9f89", "80FA9F89 x")), 1);
        assert_eq!(
            line_of(&format!("{good}{}", good.replace("4242", "42zz"))),
            2
        );
        assert_eq!(line_of(&good.replacen("42", "", 1)), 1);
        assert!(matches!(
            parse_keys(&format!("{good}{good}")),
            Err(KeyError::Duplicate {
                line: 2,
                first: 1,
                ..
            })
        ));
        assert!(matches!(parse_keys("# none\n"), Err(KeyError::Empty)));
        // Upper-case hex is the same key.
        let upper = good
            .to_uppercase()
            .replace("GRAPEVINE-KEY", "grapevine-key");
        assert_eq!(parse_keys(&upper).unwrap()[0].id(), KeyId(0x80fa_9f89));
    }

    #[test]
    fn generated_keys_differ() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        assert_ne!(a.id(), b.id());
    }
}
