//! Authenticated and encrypted NATS connections against real nats-server
//! processes: user and password (in the URL, percent-encoded, and by
//! variables), token, NKey, TLS with a CA and a client certificate made in
//! the test (rcgen) — and the secrets never shown: not in errors, not in
//! `Debug` output, not in a service's logs.

use std::path::{Path, PathBuf};

use catga::prelude::*;
use catga::security::NatsSecurity;
use catga_suite::{NatsServer, ServiceProcess, temp_dir};

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "sec.whoami", reply = String)]
struct WhoAmI;

#[catga::command]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

const PASSWORD: &str = "s3cr@t/pw";

/// Start an instance with `b`, send one command through it, stop it.
async fn round_trip(b: catga::Builder) -> catga::Result<String> {
    let app = b.service("sec").instance_id("sec-1").start().await?;
    let reply = app.send(WhoAmI).await;
    app.shutdown().await;
    reply
}

fn lookup(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn from_env(pairs: &[(&str, String)]) -> catga::Builder {
    catga::Builder::config(catga::Config::from_lookup(lookup(pairs)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_in_the_url_or_in_variables_and_never_shown() {
    let nats = NatsServer::with_args(&["--user", "alice", "--pass", PASSWORD]);
    let port = nats.port;
    // In the URL, percent-encoded as URLs require ('@' and '/' are reserved).
    let url = format!("nats://alice:s3cr%40t%2Fpw@127.0.0.1:{port}");
    assert_eq!(round_trip(Catga::builder().nats_url(&url)).await.unwrap(), "sec-1");
    // By variables, with a plain URL.
    let env = [
        ("CATGA_NATS_URL", format!("nats://127.0.0.1:{port}")),
        ("CATGA_NATS_USER", "alice".to_owned()),
        ("CATGA_NATS_PASSWORD", PASSWORD.to_owned()),
    ];
    assert_eq!(round_trip(from_env(&env)).await.unwrap(), "sec-1");
    let config = catga::Config::from_lookup(lookup(&env)).unwrap();
    assert!(!format!("{config:?}").contains(PASSWORD), "Debug output hides the password: {config:?}");
    // By the builder.
    let b = Catga::builder().nats_url(format!("nats://127.0.0.1:{port}")).nats_user_password("alice", PASSWORD);
    assert_eq!(round_trip(b).await.unwrap(), "sec-1");

    // A wrong password is refused, and the error names the server, not the secret.
    let wrong = format!("nats://alice:wr0ng-pw@127.0.0.1:{port}");
    let err = round_trip(Catga::builder().nats_url(&wrong)).await.unwrap_err().to_string();
    assert!(err.contains("authorization") && err.contains("nats://alice:***@127.0.0.1"), "{err}");
    assert!(!err.contains("wr0ng"), "{err}");
    // Credentials both in the URL and in variables: which one is meant?
    let both = Catga::builder().nats_url(&url).nats_token("t");
    let err = round_trip(both).await.unwrap_err().to_string();
    assert!(err.contains("both in CATGA_NATS_URL"), "{err}");
}

#[test]
fn a_service_process_logs_no_secret_even_at_debug() {
    let nats = NatsServer::with_args(&["--user", "alice", "--pass", PASSWORD]);
    let url = format!("nats://alice:s3cr%40t%2Fpw@127.0.0.1:{}", nats.port);
    let mut service = ServiceProcess::start(
        env!("CARGO_BIN_EXE_catga-test-service"),
        &[("CATGA_NATS_URL", &url), ("CATGA_SERVICE", "svc"), ("RUST_LOG", "debug")],
    );
    service.wait_for("catga instance started");
    service.signal("TERM");
    assert_eq!(service.exit_code(), Some(0));
    let lines = service.seen().join("\n");
    assert!(!lines.contains("s3cr"), "a log line shows the password:\n{lines}");
    assert!(lines.contains("nats: connected"), "the log is at debug level:\n{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_or_in_a_variable() {
    let nats = NatsServer::with_args(&["--auth", "t0ken"]);
    let port = nats.port;
    assert_eq!(round_trip(Catga::builder().nats_url(format!("nats://t0ken@127.0.0.1:{port}"))).await.unwrap(), "sec-1");
    let env = [("CATGA_NATS_URL", format!("nats://127.0.0.1:{port}")), ("CATGA_NATS_TOKEN", "t0ken".to_owned())];
    assert_eq!(round_trip(from_env(&env)).await.unwrap(), "sec-1");
    let err = round_trip(Catga::builder().nats_url(format!("nats://127.0.0.1:{port}"))).await.unwrap_err();
    assert!(err.to_string().contains("authorization"), "no token: refused ({err})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_from_a_file() {
    let dir = temp_dir("catga-nkey");
    let user = nkeys::KeyPair::new_user();
    let conf =
        write(&dir, "nats.conf", &format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key()));
    let nats = NatsServer::with_args(&["-c", conf.to_str().unwrap()]);
    let seed = write(&dir, "user.nk", &user.seed().unwrap());
    let env = [
        ("CATGA_NATS_URL", format!("nats://127.0.0.1:{}", nats.port)),
        ("CATGA_NATS_NKEY", seed.to_string_lossy().into_owned()),
    ];
    assert_eq!(round_trip(from_env(&env)).await.unwrap(), "sec-1");
    let other = nkeys::KeyPair::new_user();
    let b = Catga::builder().nats_url(nats.url()).nats_nkey_seed(other.seed().unwrap());
    let err = round_trip(b).await.unwrap_err().to_string();
    assert!(err.contains("authorization"), "an unknown NKey is refused: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a client
/// certificate signed by it, written as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["catga-client".into()]);
    Pki {
        ca: write(dir, "ca.pem", &ca.pem()),
        server_cert: write(dir, "server.pem", &server_cert),
        server_key: write(dir, "server-key.pem", &server_key),
        client_cert: write(dir, "client.pem", &client_cert),
        client_key: write(dir, "client-key.pem", &client_key),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_and_a_client_certificate() {
    let dir = temp_dir("catga-tls");
    let pki = pki(&dir);
    let tls = |verify: bool| {
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: {verify} }}\n",
            pki.server_cert, pki.server_key, pki.ca
        )
    };
    // A server that verifies clients: the CA and a client certificate.
    let verifying = NatsServer::with_args(&["-c", write(&dir, "verify.conf", &tls(true)).to_str().unwrap()]);
    let env = [
        ("CATGA_NATS_URL", format!("tls://127.0.0.1:{}", verifying.port)),
        ("CATGA_NATS_TLS_CA", pki.ca.to_string_lossy().into_owned()),
        ("CATGA_NATS_TLS_CERT", pki.client_cert.to_string_lossy().into_owned()),
        ("CATGA_NATS_TLS_KEY", pki.client_key.to_string_lossy().into_owned()),
    ];
    assert_eq!(round_trip(from_env(&env)).await.unwrap(), "sec-1");
    // Without the client certificate that server refuses the connection.
    let b = Catga::builder().nats_url(verifying.url()).nats_tls_ca(&pki.ca);
    assert!(round_trip(b).await.is_err(), "no client certificate: refused");

    // A server that does not verify clients: the CA is enough; without it
    // the server's certificate is not trusted.
    let plain = NatsServer::with_args(&["-c", write(&dir, "plain.conf", &tls(false)).to_str().unwrap()]);
    let b = Catga::builder().nats_url(plain.url()).nats_tls_ca(&pki.ca).nats_tls_required(true);
    assert_eq!(round_trip(b).await.unwrap(), "sec-1");
    let err = round_trip(Catga::builder().nats_url(plain.url()).nats_tls_required(true)).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect to NATS"), "{err}");

    // A CA file that is not PEM is a clear error naming the variable.
    let junk = write(&dir, "junk.pem", "not a certificate");
    let env = [("CATGA_NATS_URL", plain.url()), ("CATGA_NATS_TLS_CA", junk.to_string_lossy().into_owned())];
    let err = round_trip(from_env(&env)).await.unwrap_err().to_string();
    assert!(err.contains("CATGA_NATS_TLS_CA"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn settings_that_cannot_work_are_refused_before_connecting() {
    let twice =
        NatsSecurity::from_lookup(lookup(&[("CATGA_NATS_TOKEN", "t".into()), ("CATGA_NATS_CREDS", "/x.creds".into())]))
            .unwrap();
    assert!(twice.validate().unwrap_err().to_string().contains("set twice"));
    let err = catga::Config::from_lookup(lookup(&[("CATGA_NATS_USER", "alice".into())])).unwrap_err();
    assert!(err.to_string().contains("CATGA_NATS_PASSWORD"), "{err}");
}
