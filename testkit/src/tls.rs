//! TLS for test servers on 127.0.0.1: a CA and a server certificate made with openssl (as
//! `testenv/oauth-server/start.sh` does), an acceptor, and a TLS front that relays to a plain
//! local server and can switch to a certificate the operator does not trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A CA and a server certificate for 127.0.0.1 it signed, made with openssl like
/// testenv/oauth-server/start.sh does.
pub struct Pki {
    /// The CA certificate file (PEM), to trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub server_cert: Vec<u8>,
    /// The server key (PEM).
    pub server_key: Vec<u8>,
}

/// Makes a CA and a server certificate for 127.0.0.1 in `dir`, named after `name`.
pub fn make_pki(dir: &Path, name: &str) -> Pki {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl (a prerequisite of the tests)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let (ca, ca_key, key, csr, cert, ext) = (
        path("ca.crt"),
        path("ca.key"),
        path("server.key"),
        path("server.csr"),
        path("server.crt"),
        path("server.ext"),
    );
    let text = |p: &PathBuf| p.to_str().expect("a UTF-8 path").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        &text(&ca_key),
        "-out",
        &text(&ca),
        "-days",
        "2",
        "-sha256",
        "-subj",
        &format!("/CN={name} test CA"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "subjectKeyIdentifier=hash",
    ]);
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        &text(&key),
        "-out",
        &text(&csr),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write the extensions file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &text(&csr),
        "-CA",
        &text(&ca),
        "-CAkey",
        &text(&ca_key),
        "-set_serial",
        "2",
        "-out",
        &text(&cert),
        "-days",
        "2",
        "-sha256",
        "-extfile",
        &text(&ext),
    ]);
    Pki {
        server_cert: std::fs::read(&cert).expect("read the server certificate"),
        server_key: std::fs::read(&key).expect("read the server key"),
        ca,
    }
}

/// An acceptor presenting the server certificate of `pki`.
pub fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certificates =
        vec![CertificateDer::from_pem_slice(&pki.server_cert).expect("a server certificate")];
    let key = PrivateKeyDer::from_pem_slice(&pki.server_key).expect("a server key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("a server TLS config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// TLS in front of the token endpoint on its own loopback port, presenting the certificate
/// the operator trusts or, as a fault, one from a CA it does not know. Switching drops every
/// open connection, so a pooled one cannot hide the change.
pub struct TlsFront {
    /// The front's token URL.
    pub url: String,
    trusted: Arc<AtomicBool>,
    epoch: watch::Sender<u64>,
    server: JoinHandle<()>,
}

impl TlsFront {
    /// Starts a front relaying to `backend`, presenting `trusted`'s certificate.
    pub async fn start(backend: std::net::SocketAddr, trusted: &Pki, rogue: &Pki) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front");
        let url = format!(
            "https://{}/as/token.oauth2",
            listener.local_addr().expect("its address")
        );
        let acceptors = (tls_acceptor(trusted), tls_acceptor(rogue));
        let presenting_trusted = Arc::new(AtomicBool::new(true));
        let (epoch, _) = watch::channel(0u64);
        let flag = presenting_trusted.clone();
        let epochs = epoch.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = if flag.load(Ordering::SeqCst) {
                    acceptors.0.clone()
                } else {
                    acceptors.1.clone()
                };
                let mut switched = epochs.subscribe();
                tokio::spawn(async move {
                    let relay = async move {
                        // A refused handshake is the fault itself; it just ends the relay.
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    };
                    tokio::select! {
                        () = relay => {}
                        _ = switched.changed() => {}
                    }
                });
            }
        });
        Self {
            url,
            trusted: presenting_trusted,
            epoch,
            server,
        }
    }

    /// Presents the trusted certificate, or the rogue one.
    pub fn present_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::SeqCst);
        self.epoch.send_modify(|epoch| *epoch += 1);
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.server.abort();
    }
}
