//! Stream keys on the command line: `grapevine keygen`, and the
//! `--key-file`, `--encrypt` and `--require-encrypt` flags of every command
//! that joins a stream (PROTOCOL.md §11, docs/design/authenticated-frames.md).
//!
//! A key is never printed, logged nor passed on a command line: `keygen`
//! writes it to a file (or to standard output when asked), and commands
//! read it from a file named by `--key-file` or `GRAPEVINE_KEY_FILE`. Only
//! key ids are shown.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use grapevine::core::auth::{Keyring, Security};
use grapevine::keys::{self, KeyError};

/// The environment variable that gives `--key-file` when the flag is not.
pub(crate) const KEY_FILE_ENV: &str = "GRAPEVINE_KEY_FILE";

/// Flags of `grapevine keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Write the key to this new file, readable by its owner only (mode
    /// 0600). An existing file is never replaced. Without it, the key line
    /// goes to standard output (e.g. `>> FILE` to add it to a key file).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// `grapevine keygen`: one new key line, `grapevine-key 1 <id> <64 hex>`,
/// to `--out` or standard output; its id (never the key) on standard
/// error.
pub(crate) fn keygen(args: &KeygenArgs) -> Result<ExitCode> {
    let key = keys::generate().context("making a key")?;
    match &args.out {
        Some(path) => {
            keys::write_key_file(path, std::slice::from_ref(&key)).map_err(|e| match e {
                KeyError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    anyhow!(
                        "--out {p}: the file exists, and keygen never replaces a key file: \
                         choose another name, or remove {p} first if its keys are to go \
                         (to add a key for a rotation: `grapevine keygen >> {p}`)",
                        p = path.display()
                    )
                }
                KeyError::Io { source, .. } => anyhow!("--out {}: {source}", path.display()),
                other => anyhow!("--out {}: {other}", path.display()),
            })?;
            say!("key id: {}", key.id());
            say!("wrote {}", path.display());
        }
        None => {
            let stdout = std::io::stdout();
            if std::io::IsTerminal::is_terminal(&stdout) {
                say!(
                    "warning: the key is printed on this terminal (and may stay in its \
                     scrollback); `--out FILE` writes it to a file only its owner can read"
                );
            } else if let Some(mode) = loose_mode(&stdout) {
                say!(
                    "warning: standard output is a file others can read (mode {mode:03o}): \
                     run `chmod 600` on it, or key commands will refuse it"
                );
            }
            stdout
                .lock()
                .write_all(keys::format_key(&key).as_bytes())
                .context("writing the key to standard output")?;
            say!("key id: {}", key.id());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The permission bits of the regular file behind `out`, if group or
/// others may read or write it.
fn loose_mode(out: &std::io::Stdout) -> Option<u32> {
    let fd = out.as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    let mode = meta.permissions().mode() & 0o777;
    (meta.is_file() && mode & 0o077 != 0).then_some(mode)
}

/// `--key-file`, `--encrypt` and `--require-encrypt`: part of the flags of
/// every command that sends or receives a stream.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeyArgs {
    /// Key file of the stream (`grapevine keygen --out FILE`): seal every
    /// datagram sent, and accept only datagrams sealed with one of its
    /// keys. Every publisher and subscriber of the stream needs it. The
    /// file must be readable by its owner only.
    #[arg(long, value_name = "PATH", env = KEY_FILE_ENV)]
    pub(crate) key_file: Option<PathBuf>,
    /// Encrypt the messages too (needs `--key-file`). Without it they are
    /// authenticated only: anyone who hears them can read them (but not
    /// forge them).
    #[arg(long)]
    pub(crate) encrypt: bool,
    /// Refuse datagrams that are authenticated but not encrypted (needs
    /// `--key-file`).
    #[arg(long)]
    pub(crate) require_encrypt: bool,
}

impl KeyArgs {
    /// The security the flags ask for: `None` without a key file.
    ///
    /// # Errors
    ///
    /// `--encrypt` or `--require-encrypt` without a key file, or a key
    /// file that cannot be read or is not private, with the fix.
    pub(crate) fn security(&self) -> Result<Option<Security>> {
        let Some(path) = &self.key_file else {
            for (on, flag) in [
                (self.encrypt, "--encrypt"),
                (self.require_encrypt, "--require-encrypt"),
            ] {
                if on {
                    bail!(
                        "{flag} needs a key: add `--key-file PATH` (or set {KEY_FILE_ENV}); \
                         make a key file with `grapevine keygen --out PATH`"
                    );
                }
            }
            return Ok(None);
        };
        let ring = read_keyring(path)?;
        tracing::info!(
            key_id = %ring.sealing_key().id(),
            keys = ring.keys().count(),
            encrypt = self.encrypt,
            require_encrypt = self.require_encrypt,
            "datagrams are sealed and checked with the keys of {}",
            path.display()
        );
        let mut security = Security::new(ring);
        security
            .encrypt(self.encrypt)
            .require_encrypt(self.require_encrypt);
        Ok(Some(security))
    }

    /// With a key file: a `SIGHUP` handler, installed now (before the
    /// publisher or subscriber starts, so that an early `SIGHUP` does not
    /// end the process), for [`Hangup::reload`].
    ///
    /// # Errors
    ///
    /// When the signal handler cannot be installed.
    pub(crate) fn hangup(&self) -> Result<Option<Hangup>> {
        let Some(path) = self.key_file.clone() else {
            return Ok(None);
        };
        use tokio::signal::unix::{signal, SignalKind};
        let signal = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        Ok(Some(Hangup { path, signal }))
    }

    /// These flags as arguments for a child process: the key file's path,
    /// never its keys.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(path) = &self.key_file {
            args.push("--key-file".into());
            args.push(path.as_os_str().to_owned());
        }
        if self.encrypt {
            args.push("--encrypt".into());
        }
        if self.require_encrypt {
            args.push("--require-encrypt".into());
        }
        args
    }

    /// How datagrams are sealed, for a note on standard error: empty
    /// without a key, else `, authenticated with key <id>` or `, encrypted
    /// with key <id>` (the key that seals; never the key itself).
    pub(crate) fn note(&self, security: Option<&Security>) -> String {
        match security {
            None => String::new(),
            Some(s) => format!(
                ", {} with key {}",
                if self.encrypt {
                    "encrypted"
                } else {
                    "authenticated"
                },
                s.keyring().sealing_key().id()
            ),
        }
    }

    /// What the flags ask for, in one word: `none`, `authenticate` or
    /// `encrypt`.
    pub(crate) fn mode(&self) -> &'static str {
        match (&self.key_file, self.encrypt) {
            (None, _) => "none",
            (Some(_), false) => "authenticate",
            (Some(_), true) => "encrypt",
        }
    }
}

/// Where the key file's name came from, to name it in a message: the flag,
/// or the environment variable when the flag was not given.
fn source_of(path: &Path) -> String {
    let flag_given = std::env::args_os().any(|a| a.to_string_lossy().starts_with("--key-file"));
    let from_env = std::env::var_os(KEY_FILE_ENV).is_some_and(|v| Path::new(&v) == path);
    if from_env && !flag_given {
        format!("{KEY_FILE_ENV}={}", path.display())
    } else {
        format!("--key-file {}", path.display())
    }
}

/// Reads the keys of `path`, with an error that names the flag (or the
/// environment variable), the file and the fix.
///
/// # Errors
///
/// When the file is missing, unreadable, readable by others, or not a key
/// file.
pub(crate) fn read_keyring(path: &Path) -> Result<Keyring> {
    let from = source_of(path);
    keys::read_keyring(path).map_err(|e| match e {
        KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => anyhow!(
            "{from}: no such file: make one with `grapevine keygen --out {}`, \
             or give the stream's key file",
            path.display()
        ),
        KeyError::Io { source, .. } => anyhow!("{from}: {source}"),
        // It names the file and says `chmod 600`.
        e @ KeyError::LoosePermissions { .. } => anyhow!("{}: {e}", from_flag(&from)),
        other => anyhow!("{from}: {other}"),
    })
}

/// A `SIGHUP` handler and the key file it re-reads ([`KeyArgs::hangup`]).
pub(crate) struct Hangup {
    path: PathBuf,
    signal: tokio::signal::unix::Signal,
}

impl Hangup {
    /// Re-reads the key file on every `SIGHUP` and rotates to its keys
    /// (PROTOCOL.md §11.3: the first seals, every one opens), so keys
    /// rotate without a restart. A file that cannot be read is reported and
    /// the keys in use are kept.
    pub(crate) fn reload(self, rekeyer: grapevine::Rekeyer) {
        let Self { path, mut signal } = self;
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                match read_keyring(&path) {
                    Ok(ring) => {
                        let ids: Vec<String> = ring.keys().map(|k| k.id().to_string()).collect();
                        match rekeyer.set_keys(ring) {
                            Ok(()) => tracing::info!(
                                keys = %ids.join(","),
                                "SIGHUP: keys reloaded from {}; {} seals",
                                path.display(),
                                ids.first().map_or("", String::as_str)
                            ),
                            Err(e) => tracing::warn!("SIGHUP: keys not reloaded: {e}"),
                        }
                    }
                    Err(e) => tracing::warn!("SIGHUP: keys not reloaded, the old ones stay: {e:#}"),
                }
            }
        });
    }
}

/// `--key-file` or `GRAPEVINE_KEY_FILE`, without the value.
fn from_flag(from: &str) -> &str {
    from.split([' ', '=']).next().unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key_file: Option<&str>, encrypt: bool, require: bool) -> KeyArgs {
        KeyArgs {
            key_file: key_file.map(PathBuf::from),
            encrypt,
            require_encrypt: require,
        }
    }

    #[test]
    fn encryption_without_a_key_file_says_to_add_one() {
        for (e, r, flag) in [
            (true, false, "--encrypt"),
            (false, true, "--require-encrypt"),
        ] {
            let err = args(None, e, r).security().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
            assert!(err.contains("add `--key-file PATH`"), "{err}");
        }
        assert!(args(None, false, false).security().unwrap().is_none());
    }

    #[test]
    fn child_arguments_carry_the_path_and_never_a_key() {
        let a = args(Some("/tmp/stream.key"), true, true);
        let got: Vec<String> = a
            .to_args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "--key-file",
                "/tmp/stream.key",
                "--encrypt",
                "--require-encrypt"
            ]
        );
        assert!(args(None, false, false).to_args().is_empty());
        assert_eq!(args(None, false, false).mode(), "none");
        assert_eq!(args(Some("/k"), false, true).mode(), "authenticate");
        assert_eq!(args(Some("/k"), true, false).mode(), "encrypt");
    }

    #[test]
    fn a_missing_file_is_named_with_the_fix() {
        let err = args(Some("/nonexistent/grapevine.key"), false, false)
            .security()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--key-file /nonexistent/grapevine.key: no such file"),
            "{err}"
        );
        assert!(err.contains("grapevine keygen --out"), "{err}");
        assert_eq!(from_flag("--key-file /a b"), "--key-file");
        assert_eq!(from_flag("GRAPEVINE_KEY_FILE=/a"), "GRAPEVINE_KEY_FILE");
    }
}
