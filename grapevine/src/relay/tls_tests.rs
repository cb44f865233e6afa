//! Tests of [`super`]: fingerprints, identities, feeder policy.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use super::*;

/// A fresh directory of its own for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "grapevine-relay-tls-{test}-{}-{}",
        std::process::id(),
        Identity::generate().unwrap().fingerprint()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- fingerprints

#[test]
fn fingerprints_print_as_lowercase_hex_and_parse_back_in_every_accepted_form() {
    let empty = Fingerprint::of(b"");
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(empty.to_string(), hex);
    assert_eq!(format!("{empty:?}"), format!("Fingerprint({hex})"));
    assert_eq!(hex.parse::<Fingerprint>(), Ok(empty));
    assert_eq!(hex.to_uppercase().parse::<Fingerprint>(), Ok(empty));
    // What `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(colons.len(), 95);
    assert_eq!(colons.parse::<Fingerprint>(), Ok(empty));
    assert_eq!(format!(" {hex}\n").parse::<Fingerprint>(), Ok(empty));

    // Every byte goes both ways.
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
    let fp = Fingerprint::from_bytes(bytes);
    assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
    assert_eq!(fp.as_bytes(), &bytes);
}

#[test]
fn malformed_fingerprints_are_refused_with_the_expected_form() {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let err = |s: &str| s.parse::<Fingerprint>().unwrap_err();

    assert_eq!(err(&hex[..63]), FingerprintError::Length { digits: 63 });
    assert_eq!(
        err(&format!("{hex}0")),
        FingerprintError::Length { digits: 65 }
    );
    assert_eq!(err(""), FingerprintError::Length { digits: 0 });
    let msg = err(&hex[..62]).to_string();
    assert!(msg.contains("64 hex digits") && msg.contains("62"), "{msg}");

    let bad = format!("{}g{}", &hex[..10], &hex[11..]);
    assert_eq!(
        err(&bad),
        FingerprintError::NotHex {
            found: 'g',
            position: 11
        }
    );
    assert!(err(&bad).to_string().contains("64 hex digits"));
    // A whole openssl line is not a fingerprint (only what follows `=`).
    assert!(matches!(
        err(&format!("sha256 Fingerprint={hex}")),
        FingerprintError::NotHex { .. }
    ));

    // Colons anywhere but between pairs.
    let shifted = format!("e:3{}", &hex[2..]);
    assert_eq!(err(&shifted), FingerprintError::Separators);
    assert_eq!(err(&format!("{hex}:")), FingerprintError::Separators);
    assert!(err(&shifted).to_string().contains("openssl x509"));
}

// ------------------------------------------------------------------ identities

#[test]
fn load_or_create_makes_a_private_file_and_keeps_its_fingerprint() {
    let d = dir("identity");
    let path = d.join("relay.pem");
    let made = Identity::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");
    assert!(text.contains("-----BEGIN PRIVATE KEY-----"), "{text}");

    let again = Identity::load_or_create(&path).unwrap();
    assert_eq!(again.fingerprint(), made.fingerprint());
    assert_eq!(again.cert_chain(), made.cert_chain());
    assert_eq!(again.key.secret_der(), made.key.secret_der());
    // Nothing but the identity file in the directory (no temporary left).
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("relay.pem")]);

    // The same file through --cert/--key.
    let both = Identity::from_pem_files(&path, &path).unwrap();
    assert_eq!(both.fingerprint(), made.fingerprint());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Identity::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, TlsError::LoosePermissions { mode: 0o640, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", path.display())),
        "{msg}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(matches!(
        Identity::load_or_create(&path),
        Err(TlsError::LoosePermissions { mode: 0o604, .. })
    ));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn an_identity_file_that_appears_meanwhile_is_not_replaced_but_used() {
    let d = dir("race");
    let path = d.join("relay.pem");
    let first = Identity::load_or_create(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A second process had generated its own before the file appeared.
    let (late, pem) = Identity::generate_pem().unwrap();
    assert_ne!(late.fingerprint(), first.fingerprint());
    match late.install(&path, &pem).unwrap() {
        Installed::Theirs(theirs) => assert_eq!(theirs.fingerprint(), first.fingerprint()),
        Installed::Ours => panic!("an existing identity file was replaced"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn debug_never_shows_the_private_key() {
    let identity = Identity::generate().unwrap();
    let shown = format!("{identity:?} {identity:#?}");
    assert!(
        shown.contains(&identity.fingerprint().to_string()),
        "{shown}"
    );
    assert!(shown.contains("<hidden>"), "{shown}");
    let der = identity.key.secret_der();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let decimal = format!("{:?}", der);
    // No run of the key's bytes, in any form Debug could print them in.
    let probe: String = hex.chars().skip(40).take(32).collect();
    assert!(!shown.contains(&probe), "{shown}");
    assert!(!shown.contains(&decimal[1..40]), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let d = dir("mismatch");
    let (a, b) = (d.join("a.pem"), d.join("b.pem"));
    Identity::load_or_create(&a).unwrap();
    Identity::load_or_create(&b).unwrap();
    let err = Identity::from_pem_files(&a, &b).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("does not belong"), "{err}");

    let cert_only = d.join("cert.pem");
    let text = std::fs::read_to_string(&a).unwrap();
    let end = text.find("-----BEGIN PRIVATE KEY").unwrap();
    std::fs::write(&cert_only, &text[..end]).unwrap();
    assert!(matches!(
        Identity::from_pem_files(&cert_only, &cert_only),
        Err(TlsError::NoPrivateKey { .. })
    ));
    assert!(matches!(
        Trust::ca_file(&d.join("absent.pem")),
        Err(TlsError::Io { .. })
    ));
    std::fs::write(d.join("empty.pem"), "").unwrap();
    assert!(matches!(
        Trust::ca_file(&d.join("empty.pem")),
        Err(TlsError::NoCertificate { .. })
    ));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn feeder_policy() {
    let mine = Identity::generate().unwrap().fingerprint();
    let other = Identity::generate().unwrap().fingerprint();
    let allow = FeederPolicy::Allow(vec![mine]);
    assert!(allow.admits(Some(&mine)));
    assert!(!allow.admits(Some(&other)));
    assert!(!allow.admits(None));
    assert!(!FeederPolicy::Allow(vec![]).admits(Some(&mine)));
    assert!(FeederPolicy::Any.admits(None));
    assert!(FeederPolicy::Any.admits(Some(&other)));
    assert_eq!(allow.check(None), Err(FeederRefused::NoCertificate));
    let refused = allow.check(Some(&other)).unwrap_err().to_string();
    assert!(refused.contains(&format!("--allow {other}")), "{refused}");
}
