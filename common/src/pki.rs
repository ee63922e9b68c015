//! The cluster certificate authority: every process proves who it is with a certificate the
//! cluster CA signed, and trusts only peers that do the same.
//!
//! A CA directory holds `ca.pem` and `ca-key.pem`. A node directory (one per process or
//! client) holds `ca.pem`, `cert.pem` and `key.pem`. The certificate's common name is
//! `<role>:<name>`; every certificate also names the cluster's shared DNS identity
//! [`CLUSTER_SERVER_NAME`], which is what clients verify servers against (servers move
//! between addresses; the CA signature is what is checked). Only metaserver and
//! chunkserver certificates may authenticate a server. A certificate can be revoked by
//! name or serial: the list lives in the cluster map and every server refuses those peers.
//! A client certificate may also carry the one user its mount acts as
//! ([`crate::mount_user`]), in its organizational unit.

use crate::mount_user::MountUser;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The TLS server name every node certificate carries.
pub const CLUSTER_SERVER_NAME: &str = "latticefs";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Metaserver,
    Chunkserver,
    /// A mount.
    Client,
    /// An operator's command line tool.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Metaserver => "metaserver",
            Role::Chunkserver => "chunkserver",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "metaserver" => Role::Metaserver,
            "chunkserver" => Role::Chunkserver,
            "client" => Role::Client,
            "admin" => Role::Admin,
            _ => return Err(PkiError::Invalid(format!("unknown role {s:?}"))),
        })
    }
}

/// Who a verified peer certificate says it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerName {
    pub role: Role,
    pub name: String,
    /// The certificate's serial number, in lowercase hex: what tells apart two
    /// certificates issued under one name.
    pub serial: String,
    /// Who a client may act as (every other role: trusted).
    pub user: MountUser,
}

/// Certificates the cluster no longer accepts, replicated in the cluster map: by
/// `role:name` (every certificate issued under it) or by serial (one certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub names: BTreeSet<String>,
    pub serials: BTreeSet<String>,
}

/// Revocations the cluster map holds at most (each a name or serial of at most 128 bytes).
pub const MAX_REVOCATIONS: usize = 10_000;

impl Revocations {
    pub fn covers(&self, peer: &PeerName) -> bool {
        self.serials.contains(&peer.serial) || self.names.contains(&peer.to_string())
    }

    pub fn len(&self) -> usize {
        self.names.len() + self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an admin names to revoke: `role:name`, or a serial number (hex, colons allowed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revoke {
    Name(String),
    Serial(String),
}

impl Revoke {
    /// Checks and normalises what an admin typed.
    pub fn parse_name(text: &str) -> Result<Revoke, PkiError> {
        let (role, name) = text.split_once(':').ok_or_else(|| {
            PkiError::Invalid(format!("{text:?} is not role:name (e.g. client:laptop-7)"))
        })?;
        let role: Role = role.parse()?;
        check_name(name)?;
        Ok(Revoke::Name(format!("{role}:{name}")))
    }

    pub fn parse_serial(text: &str) -> Result<Revoke, PkiError> {
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        if hex.is_empty() || hex.len() > 128 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PkiError::Invalid(format!(
                "{text:?} is not a serial number in hex"
            )));
        }
        Ok(Revoke::Serial(
            hex.trim_start_matches('0').to_ascii_lowercase(),
        ))
    }

    /// Whether a replicated command names something well formed (a command is never
    /// trusted: a bad one is refused on every member alike).
    pub fn is_valid(&self) -> bool {
        match self {
            Revoke::Name(n) => Revoke::parse_name(n).is_ok_and(|r| &r == self),
            Revoke::Serial(s) => Revoke::parse_serial(s).is_ok_and(|r| &r == self),
        }
    }
}

impl fmt::Display for Revoke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revoke::Name(n) => f.write_str(n),
            Revoke::Serial(s) => write!(f, "serial {s}"),
        }
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a certificate authority")]
    Exists(PathBuf),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Writes a file readable by its owner only when `secret`: a file that was there keeps
/// no looser mode (the mode of `open` applies only to a file it creates).
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_err(path))
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * years);
}

/// Creates a new cluster CA in `dir` (created if missing). Refuses to replace an existing one:
/// every certificate it signed would stop working.
pub fn init_ca(dir: &Path, cluster: &str) -> Result<(), PkiError> {
    check_name(cluster)?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if cert_path.exists() || key_path.exists() {
        return Err(PkiError::Exists(cert_path));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("LatticeFS CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 20);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)
}

/// Issues a certificate for `role:name`, signed by the CA in `ca_dir`, into `out_dir`
/// (`ca.pem`, `cert.pem`, `key.pem`).
pub fn issue(ca_dir: &Path, role: Role, name: &str, out_dir: &Path) -> Result<(), PkiError> {
    issue_as(ca_dir, role, name, &MountUser::Trusted, out_dir)
}

/// As [`issue`], for a client whose mount acts as `user` only.
pub fn issue_as(
    ca_dir: &Path,
    role: Role,
    name: &str,
    user: &MountUser,
    out_dir: &Path,
) -> Result<(), PkiError> {
    check_name(name)?;
    if role != Role::Client && *user != MountUser::Trusted {
        return Err(PkiError::Invalid(format!(
            "only client certificates carry a user, not {role} ones"
        )));
    }
    let ca_pem = read(&ca_dir.join(CA_CERT_FILE))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY_FILE))?)?;
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{role}:{name}"));
    if let MountUser::Limited(_) = user {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, user.to_string());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = role_usages(role);
    validity(&mut params, 5);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    write(&out_dir.join(KEY_FILE), &key.serialize_pem(), true)?;
    write(&out_dir.join(CERT_FILE), &cert.pem(), false)?;
    write(&out_dir.join(CA_CERT_FILE), &ca_pem, false)
}

/// Only servers' certificates may authenticate a server: TLS refuses a mount's or an
/// admin's certificate offered by a peer that was dialled.
fn role_usages(role: Role) -> Vec<ExtendedKeyUsagePurpose> {
    match role {
        Role::Metaserver | Role::Chunkserver => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "name {name:?} must be 1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Reads `role:name` from the common name of a DER certificate, and a client's identity
/// from its organizational unit.
pub fn peer_name(cert_der: &[u8]) -> Result<PeerName, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Invalid(format!("unparsable peer certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::Invalid("peer certificate has no common name".into()))?;
    let (role, name) = cn
        .split_once(':')
        .ok_or_else(|| PkiError::Invalid(format!("peer common name {cn:?} is not role:name")))?;
    let role: Role = role.parse()?;
    let user = match cert.subject().iter_organizational_unit().next() {
        None => MountUser::Trusted,
        Some(_) if role != Role::Client => {
            return Err(PkiError::Invalid(format!(
                "a {role} certificate carries a user"
            )))
        }
        Some(ou) => ou
            .as_str()
            .map_err(|e| PkiError::Invalid(format!("peer user: {e}")))?
            .parse()
            .map_err(|e| PkiError::Invalid(format!("peer {e}")))?,
    };
    Ok(PeerName {
        role,
        name: name.to_string(),
        serial: serial_hex(cert.tbs_certificate.raw_serial()),
        user,
    })
}

/// A serial number as [`Revoke::parse_serial`] normalises it.
fn serial_hex(raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    hex.trim_start_matches('0').to_string()
}

/// The serial number of the certificate in `dir` (a node directory made by [`issue`]).
pub fn serial_of(dir: &Path) -> Result<String, PkiError> {
    Ok(peer_name(&certificate_der(dir)?)?.serial)
}

/// The certificate in `dir` (a node directory made by [`issue`]), DER-encoded.
pub fn certificate_der(dir: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = read(&dir.join(CERT_FILE))?;
    rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", dir.join(CERT_FILE).display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_that_name_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "test").unwrap();
        assert!(matches!(init_ca(&ca, "test"), Err(PkiError::Exists(_))));
        let node = dir.path().join("cs-1");
        issue(&ca, Role::Chunkserver, "cs-1", &node).unwrap();
        let peer = peer_name(&certificate_der(&node).unwrap()).unwrap();
        assert_eq!((peer.role, peer.name.as_str()), (Role::Chunkserver, "cs-1"));
        assert_eq!(serial_of(&node).unwrap(), peer.serial);
        assert!(!peer.serial.is_empty());
        let mut revoked = Revocations::default();
        assert!(!revoked.covers(&peer));
        revoked.names.insert("chunkserver:cs-1".into());
        assert!(revoked.covers(&peer));
        let Revoke::Serial(serial) = Revoke::parse_serial(&peer.serial.to_uppercase()).unwrap()
        else {
            panic!("not a serial")
        };
        let by_serial = Revocations {
            serials: [serial].into(),
            ..Default::default()
        };
        assert!(by_serial.covers(&peer));
        assert!(Revoke::parse_name("cs-1").is_err());
        assert!(Revoke::parse_name("wizard:cs-1").is_err());
        assert!(Revoke::parse_name("client:../x").is_err());
        assert!(Revoke::parse_serial("xyz").is_err());
        assert!(Revoke::Name("client:a".into()).is_valid());
        assert!(!Revoke::Name("client:a/b".into()).is_valid());
        assert!(!Revoke::Serial("00AB".into()).is_valid());
        assert!(issue(&ca, Role::Client, "../evil", &node).is_err());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&node.join(KEY_FILE)), 0o600);
        // Re-issued over a key file someone had opened up: 0600 again.
        fs::set_permissions(node.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        issue(&ca, Role::Chunkserver, "cs-1", &node).unwrap();
        assert_eq!(mode(&node.join(KEY_FILE)), 0o600);
    }

    #[test]
    fn a_client_certificate_names_the_user_it_acts_as() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "test").unwrap();
        let peer_of = |node: &Path| peer_name(&certificate_der(node).unwrap()).unwrap();
        let alice: MountUser = "uid=1000 gid=1000 groups=100".parse().unwrap();
        let node = dir.path().join("alice");
        issue_as(&ca, Role::Client, "alice", &alice, &node).unwrap();
        assert_eq!(peer_of(&node).user, alice);
        issue(&ca, Role::Client, "host", &node).unwrap();
        assert_eq!(peer_of(&node).user, MountUser::Trusted);
        assert!(issue_as(&ca, Role::Chunkserver, "cs", &alice, &node).is_err());
    }
}
