//! A stand-in for the DSCC API: answers the verify probe with a chosen status and records
//! the bearer tokens it was shown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

#[derive(Default)]
struct Shared {
    status: Mutex<u16>,
    tokens: Mutex<Vec<String>>,
}

/// A running stand-in on 127.0.0.1.
pub struct DsccApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl DsccApi {
    /// Starts it answering 200.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        *shared.status.lock().unwrap() = 200;
        let router = Router::new()
            .route("/api/v1/audit-events", get(audit_events))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the DSCC API stand-in");
        let addr = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// Its base URL, for `spec.apiUrl`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the probe answer `status` from now on.
    pub fn answer(&self, status: u16) {
        *self.shared.status.lock().unwrap() = status;
    }

    /// The bearer tokens it was shown, in order.
    pub fn tokens_seen(&self) -> Vec<String> {
        self.shared.tokens.lock().unwrap().clone()
    }
}

impl Drop for DsccApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn audit_events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    shared.tokens.lock().unwrap().push(token);
    let status = *shared.status.lock().unwrap();
    let body = if status == 200 {
        r#"{"items":[],"count":0,"offset":0,"total":0}"#.to_owned()
    } else {
        format!(r#"{{"httpStatusCode":{status},"message":"stand-in answer"}}"#)
    };
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body)
}
