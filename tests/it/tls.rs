//! TLS on both sides: wikigate terminating TLS (h2 and http/1.1 by ALPN), and wikigate
//! reaching an HTTPS upstream that a configured CA vouches for — and refusing one it does not.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wikigate::config::TlsConfig;
use wikigate::fake::FakeConfluence;

use crate::support::{API, Harness, TestClient, alice, basic, config_for};

/// A self-signed certificate for `localhost`, written as PEM files in a fresh directory.
struct TestCert {
    dir: PathBuf,
    cert_pem: String,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!("wikigate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = certified.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        TestCert { dir, cert_pem }
    }

    fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.dir.join("cert.pem"),
            key_file: self.dir.join("key.pem"),
        }
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let der =
            rustls_pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn gateway_terminates_tls_with_h2_and_http1_by_alpn() {
    let cert = TestCert::new("server");
    let tls = cert.tls_config();
    let h = Harness::start_with(|c| c.server.tls = Some(tls)).await;
    let url = format!("https://localhost:{}{API}/current", h.gateway.addr.port());

    for h2 in [true, false] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cert.client_config())
            .https_only();
        let connector = if h2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build(connector);
        let request = Request::get(&url)
            .header("authorization", basic(alice()))
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.version(),
            if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            }
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["accountId"], alice().account_id);
    }
    let seen = h.fake.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn https_upstream_is_trusted_only_through_the_configured_ca() {
    let cert = TestCert::new("upstream");
    let acceptor =
        wikigate::server::tls_acceptor(&cert.dir.join("cert.pem"), &cert.dir.join("key.pem"))
            .unwrap();
    let fake = FakeConfluence::start_on("127.0.0.1:0".parse().unwrap(), Some(acceptor))
        .await
        .unwrap();
    assert!(fake.url().starts_with("https://localhost:"));

    // Without the CA: the self-signed certificate is refused, 502.
    let untrusted = wikigate::start(&config_for(&fake.url()).validate().unwrap())
        .await
        .unwrap();
    let client = TestClient::new(format!("http://{}", untrusted.addr));
    client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await
        .assert_error(502);
    assert_eq!(
        fake.requests(),
        0,
        "no request crossed an untrusted TLS connection"
    );

    // With the CA configured: served.
    let mut config = config_for(&fake.url());
    config.upstream.ca_file = Some(cert.dir.join("cert.pem"));
    let trusted = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = TestClient::new(format!("http://{}", trusted.addr));
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["accountId"], alice().account_id);
}

/// A reload reads the certificate and key again (nginx does): new connections are served with
/// the new certificate, without a restart.
#[tokio::test]
async fn a_reload_serves_new_connections_with_a_rotated_certificate() {
    let (old, new) = (TestCert::new("old"), TestCert::new("new"));
    let h = Harness::start_with(|c| c.server.tls = Some(old.tls_config())).await;
    let url = format!("https://localhost:{}{API}/current", h.gateway.addr.port());
    async fn get(url: &str, trusted: &TestCert) -> Result<u16, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trusted.client_config())
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let request = Request::get(url)
            .header("authorization", basic(alice()))
            .body(Empty::new())
            .unwrap();
        match client.request(request).await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(error) => Err(format!("{error:?}")),
        }
    }
    assert_eq!(get(&url, &old).await, Ok(200));
    assert!(
        get(&url, &new).await.is_err(),
        "not yet the new certificate"
    );

    let mut config = config_for(&h.fake.url());
    config.server.listen = h.gateway.addr;
    config.server.tls = Some(new.tls_config());
    let reloaded = h
        .gateway
        .reload(&config.clone().validate().unwrap())
        .unwrap();
    assert!(
        reloaded
            .applied
            .iter()
            .any(|k| k.starts_with("server.tls.")),
        "{reloaded:?}"
    );
    assert!(
        !reloaded.restart.iter().any(|k| k.starts_with("server.tls")),
        "{reloaded:?}"
    );
    assert_eq!(get(&url, &new).await, Ok(200));
    assert!(
        get(&url, &old).await.is_err(),
        "the old certificate is gone"
    );

    // Rotated in place (cert-manager renews the files at the same paths): no key changed, and
    // the reload says what it read again rather than "nothing reloadable changed".
    let third = TestCert::new("third");
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(third.dir.join(file), new.dir.join(file)).unwrap();
    }
    let reloaded = h.gateway.reload(&config.validate().unwrap()).unwrap();
    assert!(reloaded.applied.is_empty(), "{reloaded:?}");
    assert!(
        reloaded
            .reread
            .iter()
            .any(|r| r.contains("TLS certificate")),
        "{reloaded:?}"
    );
    assert_eq!(get(&url, &third).await, Ok(200));
}
