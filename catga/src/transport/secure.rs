//! The NATS connection's credentials and TLS, from [`NatsSecurity`] and
//! the URL: which servers to dial (credentials taken out of their URLs, so
//! the client never logs them), how to authenticate, and a TLS
//! configuration built on rustls with the `ring` crypto provider named
//! explicitly (not the process default, which is ambiguous when another
//! crate of the program compiles in a second provider).

use std::path::Path;
use std::sync::Arc;

use async_nats::{ConnectOptions, ServerAddr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::security::{NatsSecurity, redact_url};

/// The servers of `url` (comma-separated) without credentials, and
/// `options` with the credentials and TLS that `security` and the URL ask for.
pub(crate) async fn apply(
    options: ConnectOptions,
    security: &NatsSecurity,
    url: &str,
) -> Result<(ConnectOptions, Vec<ServerAddr>)> {
    let mut servers = Vec::new();
    let mut in_url: Option<(String, Option<String>)> = None;
    let mut tls_url = false;
    for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let invalid = |e: &dyn std::fmt::Display| {
            Error::Config(format!(
                "NATS URL {} is not valid ({e}); expected nats://host:4222 (or tls://, ws://, wss://), \
                 comma-separated for several servers",
                redact_url(server)
            ))
        };
        let mut address = server.parse::<ServerAddr>().map_err(|e| invalid(&e))?.into_inner();
        if address.scheme() == "tls" {
            tls_url = true;
        }
        if address.username().is_empty() && address.password().is_some() {
            return Err(Error::Config(format!(
                "NATS URL {} has a password but no user: write nats://user:password@host, or a token as \
                 nats://token@host",
                redact_url(server)
            )));
        }
        if !address.username().is_empty() {
            let credentials = (address.username().to_owned(), address.password().map(str::to_owned));
            if in_url.as_ref().is_some_and(|seen| *seen != credentials) {
                return Err(Error::Config(
                    "the NATS URLs carry different credentials; give them once (in each URL alike, or in \
                     CATGA_NATS_USER/CATGA_NATS_PASSWORD)"
                        .into(),
                ));
            }
            in_url = Some(credentials);
            let _ = address.set_username("");
            let _ = address.set_password(None);
        }
        servers.push(ServerAddr::from_url(address).map_err(|e| invalid(&e))?);
    }
    let mut security = match &in_url {
        Some((user, password)) => security.with_url_credentials(user, password.as_deref())?,
        None => security.clone(),
    };
    // A tls:// URL requires TLS for every server, through the same rustls
    // configuration (not one async-nats would build on the process default).
    security.tls_required |= tls_url;
    let mut options = options;
    if let (Some(user), Some(password)) = (&security.user, &security.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &security.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &security.nkey_seed {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(file) = &security.creds_file {
        options = options.credentials_file(file).await.map_err(|e| {
            Error::Config(format!("CATGA_NATS_CREDS={file:?}: cannot read the NATS credentials file: {e}"))
        })?;
    }
    if security.wants_tls() {
        options = options.tls_client_config(tls_config(&security)?).require_tls(true);
    }
    Ok((options, servers))
}

/// The rustls configuration: the CA file's certificates (else the system's
/// trusted roots), and the client certificate when one is set.
fn tls_config(security: &NatsSecurity) -> Result<rustls::ClientConfig> {
    let bad = |var: &str, path: &Path, e: &dyn std::fmt::Display| Error::Config(format!("{var}={path:?}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match &security.tls_ca {
        Some(ca) => {
            let var = "CATGA_NATS_TLS_CA";
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(var, ca, &e))? {
                roots.add(cert.map_err(|e| bad(var, ca, &e))?).map_err(|e| bad(var, ca, &e))?;
            }
            if roots.is_empty() {
                return Err(bad(var, ca, &"no PEM certificate in the file"));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(Error::Config(
                    "NATS TLS is on but this system has no trusted CA certificates; set CATGA_NATS_TLS_CA to the \
                     PEM file of the CA that signed the server's certificate"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("NATS TLS: {e}")))?
        .with_root_certificates(roots);
    match (&security.tls_cert, &security.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad("CATGA_NATS_TLS_CERT", cert, &e))?;
            let secret = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("CATGA_NATS_TLS_KEY", key, &e))?;
            builder
                .with_client_auth_cert(chain, secret)
                .map_err(|e| Error::Config(format!("NATS TLS client certificate {cert:?} with key {key:?}: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A plain NATS client connected to `config`'s servers with its
/// credentials and TLS, as an instance connects — for a tool or a program
/// that also speaks NATS directly (the `catga` CLI asks `$SRV.*` with
/// one). Its connection name is `name`; it gives up after 5 s.
///
/// ```no_run
/// # async fn f() -> catga::Result<()> {
/// let config = catga::Config::from_env()?;
/// let client = catga::transport::connect_client(&config, "my-tool").await?;
/// client.publish("audit.ping", "hi".into()).await.ok();
/// # Ok(()) }
/// ```
pub async fn connect_client(config: &Config, name: &str) -> Result<async_nats::Client> {
    let url = config
        .nats_url
        .as_deref()
        .ok_or_else(|| Error::Config("CATGA_NATS_URL is not set: there is no NATS server to connect to".into()))?;
    let options = ConnectOptions::new().name(name).connection_timeout(std::time::Duration::from_secs(5));
    let (options, servers) = apply(options, &config.nats_security, url).await?;
    async_nats::connect_with_options(servers, options).await.map_err(|e| {
        Error::Config(format!("cannot connect to NATS at {}: {e}; is nats-server running there?", redact_url(url)))
    })
}
