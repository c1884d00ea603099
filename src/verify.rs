//! The verify probe: one cheap call to the DSCC API that tells whether a new token is
//! accepted, before it replaces the old one.

use secrecy::{ExposeSecret, SecretString};

use crate::reason::{Failure, Reason};

/// The probe: one audit event, the cheapest authenticated call DSCC has.
pub const PROBE_PATH: &str = "/api/v1/audit-events?limit=1";

/// What the DSCC API said about a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// It accepted the token (2xx).
    Accepted,
    /// The token is valid but the client may not read audit events (403).
    Forbidden,
}

impl Verification {
    /// The name stored on the target Secret.
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Accepted => "Accepted",
            Verification::Forbidden => "Forbidden",
        }
    }

    /// Parses a name written by [`Verification::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Accepted" => Some(Verification::Accepted),
            "Forbidden" => Some(Verification::Forbidden),
            _ => None,
        }
    }
}

/// Why a token could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// 401: the DSCC API does not accept the token.
    #[error(
        "the DSCC API at {api_url} rejected the new token (HTTP 401); the old token stays in \
         place: check that the API client has access to this DSCC region or set spec.apiUrl"
    )]
    Rejected {
        /// The API base URL.
        api_url: String,
    },
    /// The probe could not be made or gave an unexpected answer.
    #[error("could not verify the new token at the DSCC API {api_url}: {detail}; will retry")]
    Unavailable {
        /// The API base URL.
        api_url: String,
        /// What went wrong (never the token).
        detail: String,
    },
}

impl VerifyError {
    /// The failure as the planner records it.
    pub fn to_failure(&self) -> Failure {
        let reason = match self {
            VerifyError::Rejected { .. } => Reason::VerifyFailed,
            VerifyError::Unavailable { .. } => Reason::VerifyUnavailable,
        };
        Failure::new(reason, self.to_string())
    }
}

/// Probes `api_url` with `token`. Plain http is refused unless `allow_insecure_http`: the
/// probe sends the token as a bearer credential.
pub async fn verify(
    http: &reqwest::Client,
    api_url: &str,
    token: &SecretString,
    allow_insecure_http: bool,
) -> Result<Verification, VerifyError> {
    let base = api_url.trim_end_matches('/');
    let unavailable = |detail: String| VerifyError::Unavailable {
        api_url: base.to_owned(),
        detail,
    };
    if base.starts_with("http://") && !allow_insecure_http {
        return Err(unavailable(
            "plain http would expose the token; use https (http only with --allow-insecure-token-url)"
                .to_owned(),
        ));
    }
    let response = http
        .get(format!("{base}{PROBE_PATH}"))
        .bearer_auth(token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| unavailable(describe(&error)))?;
    // The answer's body is never read: only its status matters, and a hostile API could send
    // anything.
    match response.status().as_u16() {
        200..=299 => Ok(Verification::Accepted),
        401 => Err(VerifyError::Rejected {
            api_url: base.to_owned(),
        }),
        403 => Ok(Verification::Forbidden),
        status => Err(unavailable(format!("it answered HTTP {status}"))),
    }
}

/// A transport error in words, without its URL (which is known) or any header.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        let mut error = error.to_string();
        if let Some(start) = error.find(" for url (") {
            error.truncate(start);
        }
        error
    }
}
