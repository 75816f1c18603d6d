//! WireGuard keys and the files that hold them.
//!
//! Secrets (`PrivateKey`, `PresharedKey`) have no `Display`, no `Serialize` and a `Debug` that
//! prints `<redacted>`, and are wiped from memory when dropped. Their files are created with
//! mode 0600 from the first byte (never world-readable, even briefly) and replaced atomically.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    str::FromStr,
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Result, TunnelError};

pub const KEY_LEN: usize = 32;

/// An x25519 private key.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

/// An x25519 public key. Shown and parsed as base64, as `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

/// A 256-bit symmetric key mixed into the handshake (post-quantum hedge).
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(Zeroizing<[u8; KEY_LEN]>);

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> PrivateKey {
        PrivateKey(StaticSecret::random_from_rng(OsRng))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(StaticSecret::from(bytes))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The x25519 shared secret with `other` (the same from `other`'s private key and this
    /// key's public one).
    pub fn shared_secret(&self, other: &PublicKey) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(
            self.0
                .diffie_hellman(&x25519_dalek::PublicKey::from(other.0))
                .to_bytes(),
        )
    }

    /// Raw bytes, for the backends only.
    pub(crate) fn expose(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Reads a key file (base64, as `wg genkey` writes it), refusing files others can read.
    pub fn load(path: &Path) -> Result<PrivateKey> {
        let bytes = read_key_file(path)?;
        Ok(PrivateKey::from_bytes(*bytes))
    }

    /// Writes the key to `path` (mode 0600, atomically).
    pub fn store(&self, path: &Path) -> Result<()> {
        let mut text = Zeroizing::new(BASE64.encode(self.expose().as_slice()));
        text.push('\n');
        write_secret_file(path, text.as_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

impl PresharedKey {
    pub fn generate() -> PresharedKey {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(k.as_mut_slice());
        PresharedKey(k)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PresharedKey {
        PresharedKey(Zeroizing::new(bytes))
    }

    /// The all-zero key WireGuard uses for "no preshared key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn load(path: &Path) -> Result<PresharedKey> {
        Ok(PresharedKey(read_key_file(path)?))
    }

    pub fn store(&self, path: &Path) -> Result<()> {
        let mut text = Zeroizing::new(BASE64.encode(self.0.as_slice()));
        text.push('\n');
        write_secret_file(path, text.as_bytes())
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub(crate) fn from_hex(s: &str) -> Option<PublicKey> {
        parse_hex(s).map(|b| PublicKey(*b))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        decode_key(s.trim())
            .map(|b| PublicKey(*b))
            .ok_or_else(|| format!("`{s}` is not a base64 WireGuard key (44 characters)"))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn decode_key(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let bytes = Zeroizing::new(BASE64.decode(s).ok()?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn parse_hex(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Reads a base64 key file, refusing one that group or others may read.
fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let meta = fs::metadata(path).map_err(|e| TunnelError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TunnelError::BadFile {
            path: path.to_path_buf(),
            detail: format!("key file has mode {mode:o}; others must not read it (chmod 600)"),
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| TunnelError::io(path, e))?);
    decode_key(text.trim()).ok_or_else(|| TunnelError::BadFile {
        path: path.to_path_buf(),
        detail: "not a base64 WireGuard key (44 characters)".into(),
    })
}

/// Creates `path` with `contents`, mode 0600, atomically: a temporary file created with mode
/// 0600 (O_EXCL) in the same directory, synced, then renamed over `path`.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        TunnelError::io(path, e)
    })
}

/// Overwrites a secret file with zeros before unlinking it, so the key does not linger in the
/// page cache of a freed inode longer than needed. Missing files are fine.
pub fn remove_secret_file(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mut zeros = vec![0u8; meta.len() as usize];
            if let Ok(mut f) = OpenOptions::new().write(true).open(path) {
                let _ = f.write_all(&zeros);
                let _ = f.sync_all();
            }
            zeros.zeroize();
            fs::remove_file(path).map_err(|e| TunnelError::io(path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TunnelError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_wg_test_vector() {
        // From RFC 7748 section 6.1 (Alice).
        let sk =
            parse_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let pk = PrivateKey::from_bytes(*sk).public_key();
        assert_eq!(
            pk.to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let round: PublicKey = pk.to_string().parse().unwrap();
        assert_eq!(round, pk);
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let sk = PrivateKey::generate();
        let psk = PresharedKey::generate();
        let secret_hex = hex(sk.expose().as_slice());
        let secret_b64 = BASE64.encode(sk.expose().as_slice());
        let shown = format!("{sk:?} {psk:?} {:?}", psk.clone());
        assert!(
            !shown.contains(&secret_hex) && !shown.contains(&secret_b64),
            "{shown}"
        );
        assert!(!shown.contains(&hex(psk.expose())));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn key_files_are_0600_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let sk = PrivateKey::generate();
        sk.store(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            PrivateKey::load(&path).unwrap().public_key(),
            sk.public_key()
        );
        // Replacing keeps the mode and leaves no temporary file behind.
        PrivateKey::generate().store(&path).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove_secret_file(&path).unwrap();
        assert!(!path.exists());
        remove_secret_file(&path).unwrap();
    }

    #[test]
    fn readable_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        PresharedKey::generate().store(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = PresharedKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("644") && err.contains("psk"), "{err}");
    }

    #[test]
    fn bad_public_keys_are_named() {
        let err = "abc".parse::<PublicKey>().unwrap_err();
        assert!(err.contains("abc"));
    }
}
