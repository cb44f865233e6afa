//! Who a relay is, and whom it trusts (docs/design/relay.md, "Identity and
//! trust").
//!
//! A relay link is TLS 1.3 (inside QUIC, or over TCP) with the ALPN
//! [`ALPN`]; the dialer is the TLS client. Both ends may hold an
//! [`Identity`], a certificate and its private key: the listener always
//! presents one, a dialing relay (a feeder) presents one so that the
//! listener can tell who writes onto its network, and a unicast subscriber
//! may present none.
//!
//! # Fingerprints and pins
//!
//! An identity is named by its [`Fingerprint`], the SHA-256 of its
//! certificate's DER: 64 lowercase hex digits, what a relay prints on its
//! `fingerprint:` line (and what `openssl x509 -noout -fingerprint -sha256`
//! prints, with colons). A dialer trusts a listener by [`Trust::Pin`] (that
//! one certificate, whatever its names and dates) or [`Trust::Ca`] (any
//! certificate a root of a CA file signed for the name dialed):
//!
//! ```
//! use grapevine::relay::tls::{Fingerprint, Identity, Trust};
//!
//! let listener = Identity::generate()?;
//! let printed = listener.fingerprint().to_string(); // the `fingerprint:` line
//! let pin: Fingerprint = printed.to_uppercase().parse()?;
//! assert_eq!(pin, listener.fingerprint());
//! let trust = Trust::Pin(pin);
//! let config = grapevine::relay::tls::client_config(None, &trust)?;
//! assert_eq!(config.alpn_protocols, [grapevine::relay::tls::ALPN.to_vec()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feeders are checked after the handshake
//!
//! A listener asks every dialer for a client certificate but requires none
//! (unicast subscribers may have none); a certificate offered must still
//! prove its key (its TLS 1.3 handshake signature is verified). After the
//! handshake the application reads [`peer_fingerprint`] (QUIC) or
//! [`tcp_peer_fingerprint`] (TCP) and asks its [`FeederPolicy`].
//!
//! # What is not done
//!
//! No session resumption (tickets or session IDs) and no 0-RTT: every
//! connection is a full handshake, so every verifier runs every time and an
//! early Hello or Nak frame cannot be replayed. No TLS 1.2.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The ALPN protocol of relay links, on QUIC and on TCP (PROTOCOL.md §12.1).
pub const ALPN: &[u8] = b"grapevine-relay/1";

/// The name in a generated identity's certificate (its only SAN), and the
/// server name a dialer sends with [`Trust::Pin`] (where the pin, not the
/// name, decides).
pub const RELAY_NAME: &str = "grapevine-relay";

/// What is wrong with an identity, a CA file or a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An identity file can be read by others than its owner.
    #[error(
        "identity file {path} holds a private key and can be read by others than its owner \
         (mode {mode:03o}): run `chmod 600 {path}`"
    )]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is not valid PEM.
    #[error("{path}: not valid PEM ({source}): expected `-----BEGIN ...-----` blocks")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no certificate.
    #[error("{path}: no certificate in it: expected a PEM `-----BEGIN CERTIFICATE-----` block")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A file holds no private key.
    #[error(
        "{path}: no private key in it: expected a PEM `PRIVATE KEY`, `EC PRIVATE KEY` or \
         `RSA PRIVATE KEY` block"
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind TLS cannot sign with.
    #[error(
        "{path}: the private key cannot be used ({source}): give an ECDSA (P-256, P-384), \
         Ed25519 or RSA key"
    )]
    UnusableKey {
        /// The key's file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The private key is not the certificate's.
    #[error(
        "{path}: the private key does not belong to the certificate in {cert_path}: give the \
         key the certificate was issued for"
    )]
    KeyMismatch {
        /// The key's file.
        path: PathBuf,
        /// The certificate's file.
        cert_path: PathBuf,
    },
    /// A trust root cannot be used.
    #[error("{origin}: certificate {index} cannot be a trust root ({source}): give the CA's own certificate, in PEM")]
    BadRoot {
        /// Where the roots came from (a file, or "the CA roots given").
        origin: String,
        /// Its 0-based position.
        index: usize,
        /// What webpki said.
        #[source]
        source: rustls::Error,
    },
    /// The CA verifier could not be built (no roots, among others).
    #[error("cannot verify listeners by CA: {0}: give `--ca` a file with the root that signed the listener's certificate")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (a bug if it happens: the
    /// identity was checked when it was made).
    #[error("invalid TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// What is wrong with a [`Fingerprint`]'s text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A character that is neither a hex digit nor `:`.
    #[error(
        "{found:?} (character {position}) is not a hex digit: a fingerprint is 64 hex digits \
         (the SHA-256 of the certificate, as on the listener's `fingerprint:` line)"
    )]
    NotHex {
        /// The character.
        found: char,
        /// Its 1-based position.
        position: usize,
    },
    /// Not 64 hex digits.
    #[error(
        "a fingerprint is 64 hex digits (the SHA-256 of the certificate, as on the listener's \
         `fingerprint:` line); this has {digits}"
    )]
    Length {
        /// How many hex digits it has.
        digits: usize,
    },
    /// Colons, but not between pairs of digits.
    #[error(
        "':' must separate every pair of hex digits (AB:CD:..., as `openssl x509 -noout \
         -fingerprint -sha256` prints after the `=`), or be left out"
    )]
    Separators,
}

/// The SHA-256 of a certificate's DER: what names an identity.
///
/// Displayed as 64 lowercase hex digits; parsed from 64 hex digits in any
/// case, with or without `:` between pairs.
///
/// ```
/// use grapevine::relay::tls::Fingerprint;
///
/// let empty = Fingerprint::of(b"");
/// let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// assert_eq!(empty.to_string(), hex);
/// assert_eq!("E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
///     .parse::<Fingerprint>(), Ok(empty));
/// assert!("e3b0".parse::<Fingerprint>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of the certificate whose DER is `cert_der`.
    #[must_use]
    pub fn of(cert_der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        for (o, b) in out.iter_mut().zip(digest.as_ref()) {
            *o = *b;
        }
        Self(out)
    }

    /// A fingerprint from its 32 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|&(_, c)| c != ':' && !c.is_ascii_hexdigit())
        {
            return Err(FingerprintError::NotHex {
                found: c,
                position: i + 1,
            });
        }
        let digits = s.chars().filter(char::is_ascii_hexdigit).count();
        if digits != 64 {
            return Err(FingerprintError::Length { digits });
        }
        if s.contains(':') && !s.split(':').all(|pair| pair.len() == 2) {
            return Err(FingerprintError::Separators);
        }
        let mut out = [0u8; 32];
        let mut nibbles = s.bytes().filter(u8::is_ascii_hexdigit).map(nibble);
        for o in &mut out {
            let (Some(hi), Some(lo)) = (nibbles.next(), nibbles.next()) else {
                return Err(FingerprintError::Length { digits });
            };
            *o = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

/// The value of an ASCII hex digit (0 for anything else, never reached).
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// A certificate chain (end-entity first) and its private key: what a
/// relay presents.
///
/// Its `Debug` shows the fingerprint, never the key. The key is zeroed
/// when the identity is dropped.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("certificates", &self.chain.len())
            .field("private_key", &"<hidden>")
            .finish()
    }
}

/// Where [`Identity::install`] left the file.
#[derive(Debug)]
enum Installed {
    /// Ours was written.
    Ours,
    /// Another process wrote one first: this is it.
    Theirs(Identity),
}

impl Identity {
    /// A new self-signed identity: an ECDSA P-256 key from the operating
    /// system's random generator and a certificate for [`RELAY_NAME`]
    /// (usable as TLS server and client certificate).
    ///
    /// The certificate is valid from 1975 to 4096 (rcgen's defaults, set
    /// explicitly): a pin replaces names and dates, so a date would only
    /// add an outage when it passes (or on a host whose clock is wrong),
    /// as SSH host keys have none.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] if the key or the certificate cannot be
    /// made (the random generator failed).
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self::generate_pem()?.0)
    }

    /// [`Identity::generate`], with its PEM (certificate, then key).
    fn generate_pem() -> Result<(Self, String), TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![RELAY_NAME.to_owned()])?;
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, "grapevine relay");
        params.distinguished_name = name;
        params.not_before = rcgen::date_time_ymd(1975, 1, 1);
        params.not_after = rcgen::date_time_ymd(4096, 1, 1);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key)?;
        let pem = cert.pem() + &key.serialize_pem();
        let chain = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((Self::assemble(chain, key), pem))
    }

    /// The identity in a certificate file (PEM: the end-entity certificate
    /// first, then any intermediates) and a key file (PEM: PKCS#8, SEC1 or
    /// PKCS#1), as `--cert FILE --key FILE` give. The key must be the
    /// certificate's.
    ///
    /// The key file's permissions are not checked (keys issued by a CA are
    /// often readable by a service group); [`Identity::load_or_create`]'s
    /// file is. Blocking file I/O: call it before the runtime starts, or
    /// through `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Io`], [`TlsError::Pem`], [`TlsError::NoCertificate`],
    /// [`TlsError::NoPrivateKey`], [`TlsError::UnusableKey`] or
    /// [`TlsError::KeyMismatch`], naming the file.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Io {
            path: cert.to_owned(),
            source,
        })?;
        let key_pem = std::fs::read(key).map_err(|source| TlsError::Io {
            path: key.to_owned(),
            source,
        })?;
        Self::from_pem(&cert_pem, cert, &key_pem, key)
    }

    /// The identity kept in the PEM file at `path` (certificate and key),
    /// made on first use: so that a restarted listener keeps its
    /// fingerprint (`--identity FILE`).
    ///
    /// * If the file exists, it is read; it is refused if others than its
    ///   owner may read it ([`TlsError::LoosePermissions`], which says
    ///   `chmod 600`).
    /// * If not, a new identity is [generated](Identity::generate) and
    ///   written with mode 0600: first to a temporary file beside it, then
    ///   linked into place, which never replaces a file; if another process
    ///   created `path` meanwhile, its identity is read and returned
    ///   instead. A crash leaves either no file or a whole one.
    ///
    /// Blocking file I/O: call it before the runtime starts, or through
    /// `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// As [`Identity::from_pem_files`], [`TlsError::LoosePermissions`],
    /// and [`TlsError::Generate`].
    pub fn load_or_create(path: &Path) -> Result<Self, TlsError> {
        if let Some(pem) = read_private(path)? {
            return Self::from_pem(&pem, path, &pem, path);
        }
        let (identity, pem) = Self::generate_pem()?;
        match identity.install(path, &pem)? {
            Installed::Ours => Ok(identity),
            Installed::Theirs(theirs) => Ok(theirs),
        }
    }

    /// Its fingerprint: that of the end-entity certificate.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Its certificate chain, end-entity first.
    #[must_use]
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Its private key (for [`transport`](super::transport)'s reset key).
    pub(crate) fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Builds an identity from a chain known not to be empty (checked by
    /// the callers) and its key.
    fn assemble(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        let fingerprint = chain
            .first()
            .map_or(Fingerprint([0; 32]), |c| Fingerprint::of(c));
        Self {
            chain,
            key,
            fingerprint,
        }
    }

    fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: cert_path.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: key_path.to_owned(),
            },
            source => TlsError::Pem {
                path: key_path.to_owned(),
                source,
            },
        })?;
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()) {
            Ok(_) => Ok(Self::assemble(chain, key)),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::KeyMismatch {
                    path: key_path.to_owned(),
                    cert_path: cert_path.to_owned(),
                })
            }
            Err(source) => Err(TlsError::UnusableKey {
                path: key_path.to_owned(),
                source,
            }),
        }
    }

    /// Writes this identity's `pem` to `path` unless a file is there: to a
    /// temporary file (mode 0600) in the same directory, then a hard link
    /// to `path`, which fails rather than replace.
    fn install(&self, path: &Path, pem: &str) -> Result<Installed, TlsError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| TlsError::Io {
            path: path.to_owned(),
            source,
        };
        let name = path.file_name().map_or_else(
            || std::ffi::OsString::from("identity"),
            std::ffi::OsStr::to_owned,
        );
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(&name);
        tmp_name.push(format!(".{}.tmp", self.fingerprint));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        };
        let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
        // The temporary name goes in every case (it may not exist).
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
                Ok(Installed::Ours)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = read_private(path)?.ok_or_else(|| {
                    io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the identity file appeared and disappeared while it was being created",
                    ))
                })?;
                Ok(Installed::Theirs(Self::from_pem(&pem, path, &pem, path)?))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// The contents of a file that must be private: `None` if it does not
/// exist, refused if others than its owner may read it. The mode is
/// checked on the opened file, so the file read is the file checked.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(io)?;
    Ok(Some(pem))
}

/// How a dialer trusts a listener.
#[derive(Clone)]
pub enum Trust {
    /// Exactly the end-entity certificate with this fingerprint (`--pin`);
    /// names and dates are not checked, the pin replaces them. The dialer
    /// sends the server name [`RELAY_NAME`].
    Pin(Fingerprint),
    /// Any certificate these roots vouch for, for the name dialed (`--ca`):
    /// rustls' WebPKI verifier, names and dates checked.
    Ca(Vec<CertificateDer<'static>>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pin(fp) => f.debug_tuple("Pin").field(fp).finish(),
            Self::Ca(roots) => f
                .debug_tuple("Ca")
                .field(&roots.iter().map(|r| Fingerprint::of(r)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Trust {
    /// Trust the roots in the PEM file at `path` (`--ca FILE`).
    ///
    /// # Errors
    ///
    /// [`TlsError::Io`], [`TlsError::Pem`], [`TlsError::NoCertificate`],
    /// or [`TlsError::BadRoot`] for a certificate that cannot be a root.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })?;
        let roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: path.to_owned(),
                source,
            })?;
        if roots.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        root_store(&roots, &path.display().to_string())?;
        Ok(Self::Ca(roots))
    }

    /// The server name to dial `host` with: [`RELAY_NAME`] for a pin (the
    /// certificate's names do not matter), `host` itself for a CA (it must
    /// be among the certificate's names: the `--to` host or
    /// `--server-name`).
    #[must_use]
    pub fn server_name<'a>(&self, host: &'a str) -> &'a str {
        match self {
            Self::Pin(_) => RELAY_NAME,
            Self::Ca(_) => host,
        }
    }
}

fn root_store(roots: &[CertificateDer<'static>], origin: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (index, root) in roots.iter().enumerate() {
        store
            .add(root.clone())
            .map_err(|source| TlsError::BadRoot {
                origin: origin.to_owned(),
                index,
                source,
            })?;
    }
    Ok(store)
}

/// The crypto of every relay link: aws-lc-rs, as the rest of the crate.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS configuration of a dialer: TLS 1.3 only, ALPN [`ALPN`], the
/// listener verified by `trust`, `identity` presented as client certificate
/// when given (a feeder presents one; a unicast subscriber may not), no
/// early data, no resumption.
///
/// # Errors
///
/// [`TlsError::BadRoot`] or [`TlsError::Verifier`] for unusable
/// [`Trust::Ca`] roots; [`TlsError::Config`] if rustls refuses the identity.
pub fn client_config(identity: Option<&Identity>, trust: &Trust) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?;
    let builder = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier::new(*pin, &provider))),
        Trust::Ca(roots) => {
            let store = root_store(roots, "the CA roots given")?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(TlsError::Verifier)?;
            builder.with_webpki_verifier(verifier)
        }
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(TlsError::Config)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The TLS configuration of a listener: TLS 1.3 only, ALPN [`ALPN`],
/// `identity` presented; a client certificate asked for but optional, and
/// when offered its handshake signature verified (who it is, the
/// application decides after the handshake: [`peer_fingerprint`],
/// [`FeederPolicy`]). No early data, no tickets, no session cache.
///
/// # Errors
///
/// [`TlsError::Config`] if rustls refuses the identity.
pub fn server_config(identity: &Identity) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(OptionalClientCert {
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// The listener's certificate is not the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the listener presented the certificate with fingerprint {presented}, but the pin is \
     {expected}: check `--pin` against the listener's `fingerprint:` line (a listener without \
     `--identity FILE` gets a new fingerprint at every start)"
)]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// The fingerprint of the certificate the listener presented.
    pub presented: Fingerprint,
}

/// [`Trust::Pin`]'s verifier: exactly one end-entity certificate, and the
/// TLS 1.3 handshake signature checked against it.
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    /// The last mismatching fingerprint logged (one warning per change).
    last_mismatch: Mutex<Option<Fingerprint>>,
}

impl PinVerifier {
    fn new(pin: Fingerprint, provider: &CryptoProvider) -> Self {
        Self {
            pin,
            algorithms: provider.signature_verification_algorithms,
            last_mismatch: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            expected: self.pin,
            presented,
        };
        let mut last = self
            .last_mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *last != Some(presented) {
            *last = Some(presented);
            tracing::warn!(
                expected = %mismatch.expected,
                presented = %mismatch.presented,
                "pin mismatch: {mismatch}"
            );
        }
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(mismatch))))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("relay links are TLS 1.3 only".to_owned())
}

/// The listener's client-certificate verifier: asks for one, requires
/// none, and checks that one offered is a certificate whose key signed the
/// handshake. Who it is, the application decides ([`FeederPolicy`]).
#[derive(Debug)]
struct OptionalClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The fingerprint of the certificate the peer of a QUIC connection
/// presented (after the handshake): the listener's, seen from a dialer; a
/// dialer's client certificate, seen from a listener, or `None` if it
/// presented none.
#[must_use]
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|c| Fingerprint::of(c))
}

/// The fingerprint of the certificate a TLS-over-TCP dialer presented, as
/// [`peer_fingerprint`] for QUIC; `None` if it presented none.
#[must_use]
pub fn tcp_peer_fingerprint<IO>(
    stream: &tokio_rustls::server::TlsStream<IO>,
) -> Option<Fingerprint> {
    tls_peer_fingerprint(stream.get_ref().1)
}

/// The fingerprint of the peer's end-entity certificate on any rustls
/// connection (`stream.get_ref().1` of a tokio-rustls client or server
/// stream).
#[must_use]
pub fn tls_peer_fingerprint(conn: &rustls::CommonState) -> Option<Fingerprint> {
    conn.peer_certificates()?
        .first()
        .map(|c| Fingerprint::of(c))
}

/// Which dialers a listener accepts as feeders (they write onto its
/// network), by the fingerprint of their client certificate.
///
/// ```
/// use grapevine::relay::tls::{FeederPolicy, Identity};
///
/// let feeder = Identity::generate()?.fingerprint();
/// let stranger = Identity::generate()?.fingerprint();
/// let policy = FeederPolicy::Allow(vec![feeder]);
/// assert!(policy.admits(Some(&feeder)));
/// assert!(!policy.admits(Some(&stranger)));
/// assert!(!policy.admits(None));
/// assert!(policy.check(Some(&stranger)).unwrap_err().to_string().contains(&format!("--allow {stranger}")));
/// # Ok::<(), grapevine::relay::tls::TlsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeederPolicy {
    /// Only dialers presenting one of these (`--allow HEX`, repeatable).
    Allow(Vec<Fingerprint>),
    /// Anyone, with a certificate or without (`--allow-any-feeder`, for
    /// tests: anyone who reaches the port can inject datagrams).
    Any,
}

/// Why [`FeederPolicy::check`] refused a feeder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeederRefused {
    /// The dialer presented no certificate.
    #[error(
        "the feeder presented no certificate: give the dialing relay an identity \
         (`--identity FILE`) and add the fingerprint it prints to the listener's `--allow`"
    )]
    NoCertificate,
    /// The dialer's certificate is not on the list.
    #[error(
        "the feeder's certificate {0} is not allowed: if it is yours, add `--allow {0}` to the \
         listener"
    )]
    NotAllowed(Fingerprint),
}

impl FeederPolicy {
    /// Whether a dialer that presented `peer` (`None`: no certificate) may
    /// feed.
    #[must_use]
    pub fn admits(&self, peer: Option<&Fingerprint>) -> bool {
        self.check(peer).is_ok()
    }

    /// As [`FeederPolicy::admits`], with the reason to log (it names the
    /// `--allow` to add).
    ///
    /// # Errors
    ///
    /// [`FeederRefused`] if the dialer may not feed.
    pub fn check(&self, peer: Option<&Fingerprint>) -> Result<(), FeederRefused> {
        match (self, peer) {
            (Self::Any, _) => Ok(()),
            (Self::Allow(_), None) => Err(FeederRefused::NoCertificate),
            (Self::Allow(list), Some(fp)) if list.contains(fp) => Ok(()),
            (Self::Allow(_), Some(fp)) => Err(FeederRefused::NotAllowed(*fp)),
        }
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
