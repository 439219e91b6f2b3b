//! Authenticated and encrypted connections against real servers: NATS
//! with user and password (in the URL, percent-encoded, and by variables),
//! token, NKey, TLS with a CA and a client certificate made in the test
//! (rcgen); Redis with a password, an ACL user and TLS — and the secrets
//! never shown: not in errors, not in `Debug` output, not in a service's
//! logs.

use std::path::{Path, PathBuf};

use catga::prelude::*;
use catga::security::NatsSecurity;
use catga::store::Key;
use catga_suite::redis::tls_args;
use catga_suite::{NatsServer, RedisCluster, RedisServer, ServiceProcess, free_port, temp_dir};

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "sec.whoami", reply = String)]
struct WhoAmI;

#[catga::command]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "sec.noted")]
struct Noted;

static NOTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[catga::event]
async fn noted(_: Noted) -> Result<(), HandlerError> {
    NOTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// A command nobody may send (the client's user lacks the permission).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "sec.forbidden", reply = ())]
struct Forbidden;

/// A durable command: JetStream between the client and the service.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "sec.charge", reply = u64, durable)]
struct DurableCharge {
    cents: u64,
}

#[catga::command]
async fn durable_charge(cmd: DurableCharge) -> Result<u64, HandlerError> {
    Ok(cmd.cents * 2)
}

/// A durable command the client may not publish.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "sec.refused", reply = (), durable)]
struct DurableRefused;

const PASSWORD: &str = "s3cr@t/pw";

/// Start an instance with `b`, send one command through it, stop it.
async fn round_trip(b: catga::Builder) -> catga::Result<String> {
    let app = b.service("sec").instance_id("sec-1").handlers_where(|h| h.subject == "sec.whoami").start().await?;
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
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    // Distinct names: a leaf whose subject equals its issuer's would look
    // self-signed to OpenSSL (redis-server).
    let named = |names: Vec<String>, common_name: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = named(Vec::new(), "catga test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, common_name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = named(names, common_name).signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "catga test server");
    let (client_cert, client_key) = leaf(vec!["catga-client".into()], "catga test client");
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

/// Start an instance on the store `b` names, write and read a set, stop.
async fn store_round_trip(b: catga::Builder) -> catga::Result<Vec<String>> {
    let app = b.service("sec").start().await?;
    let key = Key::new("sec", "members");
    let written = app.store().set_add(&key, "m-1").await;
    let read = app.store().set_members(&key).await;
    app.shutdown().await;
    written?;
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_and_with_an_acl_user() {
    let redis = RedisServer::with_args(&["--requirepass", "r3dis-pw"]);
    let url = format!("redis://:r3dis-pw@127.0.0.1:{}", redis.port);
    assert_eq!(store_round_trip(Catga::builder().redis_url(&url)).await.unwrap(), ["m-1"]);
    let wrong = format!("redis://:wr0ng@127.0.0.1:{}", redis.port);
    let err = store_round_trip(Catga::builder().redis_url(&wrong)).await.unwrap_err().to_string();
    assert!(err.contains("redis://:***@127.0.0.1") && !err.contains("wr0ng"), "{err}");

    // An ACL user, with the default user off: only alice gets in.
    let acl = RedisServer::with_args(&[
        "--user",
        "default",
        "off",
        "--user",
        "alice",
        "on",
        ">al1ce-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://alice:al1ce-pw@127.0.0.1:{}", acl.port);
    assert_eq!(store_round_trip(Catga::builder().redis_url(&url)).await.unwrap(), ["m-1"]);
    let err = store_round_trip(Catga::builder().redis_url(acl.url())).await.unwrap_err().to_string();
    assert!(err.contains("store unavailable"), "no user: refused ({err})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_custom_ca_and_a_client_certificate() {
    let dir = temp_dir("catga-redis-tls");
    let pki = pki(&dir);
    let tls_port = free_port().to_string();
    let (cert, key, ca) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.ca.to_str().unwrap());
    let mut args = tls_args(cert, key, ca, true);
    args.extend(["--tls-port".to_owned(), tls_port.clone()]);
    let redis = RedisServer::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let env = [
        ("CATGA_REDIS_URL", url.clone()),
        ("CATGA_REDIS_TLS_CA", pki.ca.to_string_lossy().into_owned()),
        ("CATGA_REDIS_TLS_CERT", pki.client_cert.to_string_lossy().into_owned()),
        ("CATGA_REDIS_TLS_KEY", pki.client_key.to_string_lossy().into_owned()),
    ];
    assert_eq!(store_round_trip(from_env(&env)).await.unwrap(), ["m-1"]);
    // Without a client certificate the server refuses; without the CA the
    // server's certificate is not trusted.
    assert!(store_round_trip(Catga::builder().redis_url(&url).redis_tls_ca(&pki.ca)).await.is_err());
    let b = Catga::builder().redis_url(&url).redis_tls_client_cert(&pki.client_cert, &pki.client_key);
    assert!(store_round_trip(b).await.is_err(), "an unknown CA: refused");
    // TLS files with a plain redis:// URL: which was meant?
    let plain = [("CATGA_REDIS_URL", redis.url()), ("CATGA_REDIS_TLS_CA", pki.ca.to_string_lossy().into_owned())];
    let err = catga::Config::from_lookup(lookup(&plain)).unwrap_err().to_string();
    assert!(err.contains("rediss://"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The minimal permissions of docs/SECURITY.md, exactly: a service may
/// receive its subjects and publish replies; a client may publish what it
/// sends and read only its own replies. Both work; a send the client may
/// not publish fails with a permission error, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_and_a_client_work_under_least_privilege() {
    let dir = temp_dir("catga-perm");
    let conf = r#"
authorization {
  users = [
    { user: svc, password: svc-pw, permissions: {
        publish: { allow: ["_INBOX.>"] },
        subscribe: { allow: ["sec.whoami", "sec.noted", "_INBOX.svc.>", "$SRV.>"] } } },
    { user: client, password: client-pw, permissions: {
        publish: { allow: ["sec.whoami", "sec.noted", "_INBOX.>"] },
        subscribe: { allow: ["_INBOX.client.>", "$SRV.>"] } } },
    { user: narrow, password: narrow-pw, permissions: {
        publish: { allow: ["_INBOX.>"] },
        subscribe: { allow: ["_INBOX.narrow.>", "$SRV.>"] } } }
  ]
}
"#;
    let nats = NatsServer::with_args(&["-c", write(&dir, "perm.conf", conf).to_str().unwrap()]);
    let url = |user: &str| format!("nats://{user}:{user}-pw@127.0.0.1:{}", nats.port);
    let service = Catga::builder()
        .service("svc")
        .nats_url(url("svc"))
        .handlers_where(|h| h.subject == "sec.whoami" || h.subject == "sec.noted")
        .start()
        .await
        .unwrap();
    let client = Catga::builder().service("client").nats_url(url("client")).client_only().start().await.unwrap();

    assert_eq!(client.send(WhoAmI).await.unwrap(), service.instance_id());
    client.publish(Noted).await.unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while NOTED.load(std::sync::atomic::Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(NOTED.load(std::sync::atomic::Ordering::SeqCst), 1, "the event reached the service");

    let started = std::time::Instant::now();
    let err = client.send(Forbidden).await.unwrap_err();
    println!("a send without publish permission failed after {:?}: {err}", started.elapsed());
    assert!(matches!(err, catga::Error::PermissionDenied { subject: "sec.forbidden", .. }), "{err:?}");
    assert!(err.to_string().contains("Permissions Violation"), "{err}");
    let err = HandlerError::from(err);
    assert_eq!(err.code(), HandlerError::PERMISSION_DENIED);
    assert!(!HandlerError::is_transient_code(err.code()), "not retried by saga steps");

    // A service whose user may not subscribe to its handler's subject does
    // not start (instead of starting deaf).
    let deaf = Catga::builder()
        .service("narrow")
        .nats_url(url("narrow"))
        .handlers_where(|h| h.subject == "sec.whoami")
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(deaf.contains("may not subscribe to \"sec.whoami\""), "{deaf}");
    client.shutdown().await;
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A Redis Cluster whose `default` user may not write: the ACL user of the
/// node list reaches every shard (the set's key lives on one of three
/// primaries, found through the cluster's slot map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_with_an_acl_user() {
    let cluster = RedisCluster::start_with(&[
        "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-@write", "--user", "catga", "on", ">cl-pw", "~*",
        "&*", "+@all",
    ]);
    let with_user = cluster.url().replace("redis://", "redis://catga:cl-pw@");
    assert_eq!(store_round_trip(Catga::builder().redis_url(&with_user)).await.unwrap(), ["m-1"]);
    let err = store_round_trip(Catga::builder().redis_url(cluster.url())).await.unwrap_err().to_string();
    assert!(err.contains("can't run this command"), "the default user may not write: {err}");
    let wrong = cluster.url().replace("redis://", "redis://catga:wr0ng@");
    let err = store_round_trip(Catga::builder().redis_url(&wrong)).await.unwrap_err().to_string();
    assert!(!err.contains("wr0ng"), "{err}");
}

/// A JWT as nats-server reads it (ed25519-nkey, claims v2), signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "jti": format!("{:032X}", fastrand_u128()), "iat": iat, "iss": issuer.public_key(), "name": name,
        "sub": subject, "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    format!("{body}.{}", b64(&issuer.sign(body.as_bytes()).unwrap()))
}

fn fastrand_u128() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ^ u128::from(std::process::id())
}

/// Decentralized auth: an operator, an account and a user JWT (signed in
/// the test), the server in operator mode with the account preloaded, and
/// the user's `.creds` file given to Catga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_in_operator_mode() {
    let dir = temp_dir("catga-creds");
    let (operator, account, user) =
        (nkeys::KeyPair::new_operator(), nkeys::KeyPair::new_account(), nkeys::KeyPair::new_user());
    let op_jwt = jwt(&operator, &operator.public_key(), "op", serde_json::json!({"type": "operator", "version": 2}));
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1});
    let acc_jwt = jwt(
        &operator,
        &account.public_key(),
        "acc",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "svc",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let op_file = write(&dir, "op.jwt", &op_jwt);
    let conf = format!(
        "operator: {op_file:?}\nresolver: MEMORY\nresolver_preload: {{ {}: \"{acc_jwt}\" }}\n",
        account.public_key()
    );
    let nats = NatsServer::with_args(&["-c", write(&dir, "op.conf", &conf).to_str().unwrap()]);
    let creds = write(
        &dir,
        "svc.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    );
    let env = [("CATGA_NATS_URL", nats.url()), ("CATGA_NATS_CREDS", creds.to_string_lossy().into_owned())];
    assert_eq!(round_trip(from_env(&env)).await.unwrap(), "sec-1");
    let err = round_trip(Catga::builder().nats_url(nats.url())).await.unwrap_err().to_string();
    assert!(err.contains("authorization"), "no credentials: refused ({err})");
    let missing = [("CATGA_NATS_URL", nats.url()), ("CATGA_NATS_CREDS", "/nonexistent.creds".to_owned())];
    let err = round_trip(from_env(&missing)).await.unwrap_err().to_string();
    assert!(err.contains("CATGA_NATS_CREDS"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The durable permissions of docs/SECURITY.md, exactly: the service
/// creates its stream and consumer, pulls, acknowledges, replies and
/// dead-letters; the client only publishes the command and reads its inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_delivery_works_under_least_privilege() {
    let dir = temp_dir("catga-perm-js");
    let conf = format!(
        r#"
jetstream {{ store_dir: {:?} }}
authorization {{
  users = [
    {{ user: svc, password: svc-pw, permissions: {{
        publish: {{ allow: ["_INBOX.>", "$JS.API.>", "$JS.ACK.>", "catga.dlq.>"] }},
        subscribe: {{ allow: ["_INBOX.svc.>", "$SRV.>"] }} }} }},
    {{ user: client, password: client-pw, permissions: {{
        publish: {{ allow: ["sec.charge", "_INBOX.>"] }},
        subscribe: {{ allow: ["_INBOX.client.>", "$SRV.>"] }} }} }}
  ]
}}
"#,
        dir.join("js")
    );
    let nats = NatsServer::with_args(&["-c", write(&dir, "js.conf", &conf).to_str().unwrap()]);
    let url = |user: &str| format!("nats://{user}:{user}-pw@127.0.0.1:{}", nats.port);
    let service = Catga::builder()
        .service("svc")
        .nats_url(url("svc"))
        .handlers_where(|h| h.subject == "sec.charge")
        .start()
        .await
        .unwrap();
    let client = Catga::builder().service("client").nats_url(url("client")).client_only().start().await.unwrap();
    assert_eq!(client.send(DurableCharge { cents: 21 }).await.unwrap(), 42);
    // A durable send the user may not publish: refused at once, not after
    // the PubAck's timeouts.
    let err = client.send(DurableRefused).await.unwrap_err();
    assert!(matches!(err, catga::Error::PermissionDenied { subject: "sec.refused", .. }), "{err:?}");

    // Garbage in the stream is dead-lettered by the service (it may
    // publish to catga.dlq.>) and listed (it may use the JetStream API).
    // (A plain async-nats client ignores credentials in its URL; Catga's
    // connect_client reads them as an instance does.)
    let mut config = catga::Config::default();
    config.nats_url = Some(url("client"));
    let raw = catga::transport::connect_client(&config, "raw").await.unwrap();
    raw.publish("sec.charge", "{oops".into()).await.unwrap();
    raw.flush().await.unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let letters = loop {
        let letters = service.dead_letters("sec.charge").await.unwrap();
        if !letters.is_empty() || std::time::Instant::now() > until {
            break letters;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].code, "invalid");
    client.shutdown().await;
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A Redis Cluster over TLS: the node list as `rediss://` URLs and the CA;
/// the client follows the slot map to every shard over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls() {
    let dir = temp_dir("catga-cluster-tls");
    let pki = pki(&dir);
    let (cert, key, ca) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.ca.to_str().unwrap());
    let cluster = RedisCluster::start_tls(cert, key, ca);
    let b = Catga::builder().redis_url(cluster.tls_url()).redis_tls_ca(&pki.ca);
    assert_eq!(store_round_trip(b).await.unwrap(), ["m-1"]);
    assert!(store_round_trip(Catga::builder().redis_url(cluster.tls_url())).await.is_err(), "an unknown CA: refused");
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}
