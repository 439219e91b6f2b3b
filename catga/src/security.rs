//! How an instance proves who it is to NATS and Redis, and encrypts those
//! connections: for NATS user and password, token, NKey, `.creds` file, TLS
//! (custom CA, client certificate) — [`NatsSecurity`]; for Redis the
//! password or ACL user of the URL and TLS (`rediss://`, custom CA, client
//! certificate) — [`RedisTls`]; and [`Secret`], which keeps passwords,
//! tokens and seeds out of `Debug` output and logs.
//!
//! Set by `CATGA_NATS_*` variables ([`NatsSecurity::from_lookup`]), by
//! [`Builder`](crate::Builder) methods, or in the URL
//! (`nats://user:password@host:4222`, `nats://token@host:4222`; `tls://`
//! requires TLS). The transport applies them when it connects
//! (`transport/connection.rs`).
//!
//! ```
//! use catga::security::{NatsSecurity, Secret};
//! let s = NatsSecurity::from_lookup(|k| match k {
//!     "CATGA_NATS_USER" => Some("orders".into()),
//!     "CATGA_NATS_PASSWORD" => Some("s3cret".into()),
//!     _ => None,
//! })
//! .unwrap();
//! assert_eq!(s.user.as_deref(), Some("orders"));
//! assert!(!format!("{s:?}").contains("s3cret"), "secrets never show in Debug output");
//! ```

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A password, token or seed: shown as `***` by `Debug` and `Display`, so
/// it stays out of logs and error messages; [`expose`](Secret::expose)
/// gives it to the client that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

/// The NATS connection's credentials and TLS settings. At most one way of
/// authenticating is set: user and password, token, NKey seed, or `.creds`
/// file (credentials in `CATGA_NATS_URL` count as the first two).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsSecurity {
    /// User name (`CATGA_NATS_USER`), with [`password`](Self::password).
    pub user: Option<String>,
    /// Its password (`CATGA_NATS_PASSWORD`).
    pub password: Option<Secret>,
    /// A token (`CATGA_NATS_TOKEN`).
    pub token: Option<Secret>,
    /// An NKey seed (`SU…`), read from the file `CATGA_NATS_NKEY` names.
    pub nkey_seed: Option<Secret>,
    /// A `.creds` file: a user JWT and its NKey seed (`CATGA_NATS_CREDS`).
    pub creds_file: Option<PathBuf>,
    /// TLS: the PEM file of the CA(s) that signed the server's certificate
    /// (`CATGA_NATS_TLS_CA`); without it, the system's trusted roots.
    pub tls_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM, `CATGA_NATS_TLS_CERT`), for a
    /// server that verifies clients, with [`tls_key`](Self::tls_key).
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, `CATGA_NATS_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS (`CATGA_NATS_TLS_REQUIRED=true`);
    /// implied by any other TLS setting and by a `tls://` URL.
    pub tls_required: bool,
}

impl NatsSecurity {
    /// Read the `CATGA_NATS_*` security variables through `lookup`. The
    /// NKey seed is read from its file here: an unreadable file is an
    /// error naming the variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<NatsSecurity> {
        let set = |key: &str| lookup(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let path = |key: &str| set(key).map(PathBuf::from);
        let nkey_seed = match set("CATGA_NATS_NKEY") {
            Some(file) => {
                let seed = std::fs::read_to_string(&file).map_err(|e| {
                    Error::Config(format!("CATGA_NATS_NKEY={file:?}: cannot read the NKey seed file: {e}"))
                })?;
                Some(Secret::new(seed.trim()))
            }
            None => None,
        };
        let tls_required = match set("CATGA_NATS_TLS_REQUIRED").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => return Err(Error::Config(format!("CATGA_NATS_TLS_REQUIRED={v:?} is not true or false"))),
        };
        Ok(NatsSecurity {
            user: set("CATGA_NATS_USER"),
            password: set("CATGA_NATS_PASSWORD").map(Secret::new),
            token: set("CATGA_NATS_TOKEN").map(Secret::new),
            nkey_seed,
            creds_file: path("CATGA_NATS_CREDS"),
            tls_ca: path("CATGA_NATS_TLS_CA"),
            tls_cert: path("CATGA_NATS_TLS_CERT"),
            tls_key: path("CATGA_NATS_TLS_KEY"),
            tls_required,
        })
    }

    /// The ways of authenticating that are set, by their variables.
    fn methods(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.user.is_some() || self.password.is_some() {
            set.push("CATGA_NATS_USER/CATGA_NATS_PASSWORD");
        }
        if self.token.is_some() {
            set.push("CATGA_NATS_TOKEN");
        }
        if self.nkey_seed.is_some() {
            set.push("CATGA_NATS_NKEY");
        }
        if self.creds_file.is_some() {
            set.push("CATGA_NATS_CREDS");
        }
        set
    }

    /// Whether TLS is asked for by any setting.
    pub fn wants_tls(&self) -> bool {
        self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }

    /// Refuse what cannot work: two ways of authenticating, a user without
    /// a password (or the reverse), a certificate without its key.
    pub fn validate(&self) -> Result<()> {
        if let [first, second, ..] = self.methods()[..] {
            return Err(Error::Config(format!(
                "NATS credentials are set twice ({first} and {second}); set one way of authenticating"
            )));
        }
        match (&self.user, &self.password) {
            (Some(user), None) => {
                return Err(Error::Config(format!("NATS user {user:?} has no password: set CATGA_NATS_PASSWORD")));
            }
            (None, Some(_)) => {
                return Err(Error::Config("a NATS password is set without a user: set CATGA_NATS_USER".into()));
            }
            _ => {}
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Config(
                "a TLS client certificate needs its key and the key its certificate: set both CATGA_NATS_TLS_CERT \
                 and CATGA_NATS_TLS_KEY"
                    .into(),
            ));
        }
        Ok(())
    }

    /// These settings with the credentials of a server URL
    /// (`user:password@` or `token@`, percent-decoded) added: an error if
    /// others are set too.
    pub(crate) fn with_url_credentials(&self, user: &str, password: Option<&str>) -> Result<NatsSecurity> {
        if let Some(set) = self.methods().first() {
            return Err(Error::Config(format!(
                "NATS credentials are both in CATGA_NATS_URL and in {set}; set them in one place"
            )));
        }
        let mut with = self.clone();
        match password {
            Some(password) => {
                with.user = Some(percent_decode(user));
                with.password = Some(Secret::new(percent_decode(password)));
            }
            None => with.token = Some(Secret::new(percent_decode(user))),
        }
        Ok(with)
    }
}

/// TLS to Redis, for `rediss://` URLs (a password or ACL user goes in the
/// URL: `rediss://user:password@host:6380`). Without a CA file the
/// system's trusted roots are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// The PEM file of the CA(s) that signed the server's certificate
    /// (`CATGA_REDIS_TLS_CA`).
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM, `CATGA_REDIS_TLS_CERT`), for a
    /// server that verifies clients (`tls-auth-clients yes`), with
    /// [`key`](Self::key).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM, `CATGA_REDIS_TLS_KEY`).
    pub key: Option<PathBuf>,
}

impl RedisTls {
    /// Read `CATGA_REDIS_TLS_CA`, `_CERT` and `_KEY` through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> RedisTls {
        let path = |key: &str| lookup(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(PathBuf::from);
        RedisTls {
            ca: path("CATGA_REDIS_TLS_CA"),
            cert: path("CATGA_REDIS_TLS_CERT"),
            key: path("CATGA_REDIS_TLS_KEY"),
        }
    }

    /// Whether any TLS file is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Refuse a certificate without its key (or the reverse), and TLS
    /// files for a URL that does not ask for TLS.
    pub fn validate(&self, redis_url: Option<&str>) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::Config(
                "a Redis TLS client certificate needs its key and the key its certificate: set both \
                 CATGA_REDIS_TLS_CERT and CATGA_REDIS_TLS_KEY"
                    .into(),
            ));
        }
        if let Some(url) = redis_url
            && self.is_set()
            && url.split(',').any(|node| !node.trim().starts_with("rediss://"))
        {
            return Err(Error::Config(format!(
                "Redis TLS files are set (CATGA_REDIS_TLS_*) but the Redis URL {} does not ask for TLS: use \
                 rediss://host:port for every node",
                redact_url(url)
            )));
        }
        Ok(())
    }
}

/// `%40` → `@`: how a URL carries characters its syntax reserves.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` (or a comma-separated list of URLs) without its password or
/// token, for logs and errors: `redis://app:secret@h:1` → `redis://app:***@h:1`,
/// `nats://token@h` → `nats://:***@h`.
///
/// ```
/// assert_eq!(catga::security::redact_url("nats://alice:pw@h:4222,nats://h2"), "nats://alice:***@h:4222,nats://h2");
/// ```
pub fn redact_url(url: &str) -> String {
    // Nodes are comma-separated; a piece without a scheme belongs to the
    // node before it (a comma inside its secret: `nats://u:pa,ss@h`).
    let mut nodes: Vec<String> = Vec::new();
    for piece in url.split(',').map(str::trim) {
        match nodes.last_mut() {
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => nodes.push(piece.to_owned()),
        }
    }
    nodes
        .iter()
        .map(|node| {
            let rest = node.find("://").map_or(0, |i| i + 3);
            match node[rest..].rfind('@').map(|at| rest + at) {
                Some(at) => {
                    let user = &node[rest..at];
                    let user = user.split_once(':').map_or("", |(name, _)| name);
                    format!("{}{user}:***{}", &node[..rest], &node[at..])
                }
                None => node.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://app:secret@h:1, redis://h2:2"), "redis://app:***@h:1,redis://h2:2");
        assert_eq!(redact_url("nats://s3cret@h"), "nats://:***@h");
        assert_eq!(redact_url("nats://app:pa,ss@h,nats://h2"), "nats://app:***@h,nats://h2", "a comma in a password");
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "***");
    }

    #[test]
    fn one_way_of_authenticating_and_complete_pairs() {
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| (*v).to_owned())
        };
        let twice = NatsSecurity::from_lookup(lookup(&[
            ("CATGA_NATS_USER", "a"),
            ("CATGA_NATS_PASSWORD", "b"),
            ("CATGA_NATS_TOKEN", "t"),
        ]))
        .unwrap();
        assert!(twice.validate().unwrap_err().to_string().contains("set twice"));
        let half = NatsSecurity::from_lookup(lookup(&[("CATGA_NATS_USER", "a")])).unwrap();
        assert!(half.validate().unwrap_err().to_string().contains("CATGA_NATS_PASSWORD"));
        let cert = NatsSecurity::from_lookup(lookup(&[("CATGA_NATS_TLS_CERT", "c.pem")])).unwrap();
        assert!(cert.validate().unwrap_err().to_string().contains("CATGA_NATS_TLS_KEY"));
        assert!(cert.wants_tls());
        let err = NatsSecurity::from_lookup(lookup(&[("CATGA_NATS_NKEY", "/nonexistent/seed")])).unwrap_err();
        assert!(err.to_string().contains("CATGA_NATS_NKEY"), "{err}");
        let bad = NatsSecurity::from_lookup(lookup(&[("CATGA_NATS_TLS_REQUIRED", "maybe")])).unwrap_err();
        assert!(bad.to_string().contains("CATGA_NATS_TLS_REQUIRED"));
    }

    #[test]
    fn url_credentials_are_decoded_and_never_mixed_with_others() {
        let none = NatsSecurity::default();
        let s = none.with_url_credentials("alice", Some("p%40ss")).unwrap();
        assert_eq!((s.user.as_deref(), s.password.as_ref().map(Secret::expose)), (Some("alice"), Some("p@ss")));
        let t = none.with_url_credentials("tok%2Fen", None).unwrap();
        assert_eq!(t.token.as_ref().map(Secret::expose), Some("tok/en"));
        let err = t.with_url_credentials("x", None).unwrap_err();
        assert!(err.to_string().contains("both in CATGA_NATS_URL"), "{err}");
    }
}
