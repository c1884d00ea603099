//! Why a token request failed, in words that say what to fix and never contain a secret.

use std::time::Duration;

use crate::reason::{Failure, Reason};

/// Why a token request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token URL uses plain http and insecure URLs are not allowed.
    #[error(
        "token URL {url} uses plain http, which would expose the client secret; use https \
         (plain http is accepted only when the operator runs with --allow-insecure-token-url, \
         for development)"
    )]
    InsecureUrl {
        /// The URL, without query or user info.
        url: String,
    },
    /// The token URL cannot be used at all.
    #[error("token URL {url} cannot be used: {problem}; fix spec.tokenUrl")]
    UnsupportedUrl {
        /// The URL, without query or user info.
        url: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The client could not be built from its configuration.
    #[error("cannot set up the token client: {detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
    /// The endpoint rejected the request for a reason that retrying will not fix.
    #[error(
        "token endpoint {url} {} ({}): {}",
        rejection_phrase(.status, .error.as_deref()),
        http_summary(.status, .error.as_deref(), .description.as_deref()),
        rejection_hint(.status, .error.as_deref())
    )]
    Rejected {
        /// The token URL, without query or user info.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registered OAuth `error` code, if the body had one.
        error: Option<String>,
        /// The scrubbed, truncated `error_description`, if any.
        description: Option<String>,
    },
    /// The endpoint answered 429.
    #[error(
        "token endpoint {host} is rate limiting requests (HTTP 429); will retry {}",
        retry_phrase(.retry_after)
    )]
    RateLimited {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// How long the endpoint asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered with a 5xx status.
    #[error("token endpoint {host} answered {status}; will retry {}", retry_phrase(.retry_after))]
    ServerError {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The HTTP status code.
        status: u16,
        /// How long the endpoint asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered with a status a token endpoint should not send.
    #[error(
        "token endpoint {url} answered with unexpected {}: {}; will retry",
        http_summary(.status, .error.as_deref(), .description.as_deref()),
        unexpected_status_hint(.status)
    )]
    UnexpectedStatus {
        /// The token URL, without query or user info.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registered OAuth `error` code, if the body had one.
        error: Option<String>,
        /// The scrubbed, truncated `error_description`, if any.
        description: Option<String>,
    },
    /// No answer within the configured time.
    #[error(
        "timed out after {} {} the token endpoint {host}; will retry",
        format_duration(.after),
        if *.connecting { "connecting to" } else { "waiting for" }
    )]
    Timeout {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The time limit that ran out.
        after: Duration,
        /// Whether the time ran out while connecting.
        connecting: bool,
    },
    /// The TCP connection could not be made (this includes a host name that does not resolve).
    #[error("could not connect to the token endpoint {host}: {detail}; will retry")]
    Connect {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The underlying error.
        detail: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// What the TLS layer reported.
        detail: String,
    },
    /// The connection broke while sending or receiving.
    #[error("request to the token endpoint {host} failed: {detail}; will retry")]
    Transport {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The underlying error.
        detail: String,
    },
    /// The response body was larger than allowed.
    #[error("token endpoint {host} answered with more than {limit} bytes")]
    ResponseTooLarge {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A successful answer that does not hold a usable token.
    #[error("token endpoint {host} sent an unusable token response: {problem}; will retry")]
    MalformedResponse {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// What is wrong with it (never the body itself).
        problem: String,
    },
    /// The endpoint issued a token that is not a bearer token.
    #[error(
        "token endpoint {host} issued a token of type {token_type}; only Bearer tokens can be \
         written as an Authorization header: check the client's configuration at the identity \
         provider"
    )]
    UnsupportedTokenType {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The `token_type` it sent (a single visible word; anything else was refused earlier).
        token_type: String,
    },
}

impl TokenError {
    /// The condition reason of this failure; it also says how it is retried.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InsecureUrl { .. } | Self::UnsupportedUrl { .. } | Self::InvalidConfig { .. } => {
                Reason::InvalidSpec
            }
            Self::Rejected { .. } => Reason::InvalidClientCredentials,
            Self::UnsupportedTokenType { .. } => Reason::UnsupportedTokenType,
            Self::RateLimited { .. } => Reason::RateLimited,
            Self::ServerError { .. }
            | Self::UnexpectedStatus { .. }
            | Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Tls { .. }
            | Self::Transport { .. }
            | Self::ResponseTooLarge { .. }
            | Self::MalformedResponse { .. } => Reason::TokenEndpointUnavailable,
        }
    }

    /// How long the endpoint asked the client to wait before the next request, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether the whole host should be paused: a 429, or a 503 that said for how long.
    pub fn pauses_host(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(retry_after.unwrap_or_default()),
            Self::ServerError {
                status: 503,
                retry_after: Some(wait),
                ..
            } => Some(*wait),
            _ => None,
        }
    }

    /// Whether the endpoint said the grant (a refresh token, a subject token) is no longer
    /// valid, which calls for a fresh client-credentials request rather than a retry.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Rejected { error: Some(code), .. } if code == "invalid_grant")
    }

    /// The HTTP status the endpoint answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. }
            | Self::ServerError { status, .. }
            | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// The failure as the planner records it.
    pub fn to_failure(&self) -> Failure {
        Failure {
            reason: self.reason(),
            message: self.to_string(),
            retry_after: self.retry_after(),
        }
    }
}

fn rejection_phrase(status: &u16, error: Option<&str>) -> &'static str {
    match (error, *status) {
        (Some("unauthorized_client"), _) => "refused the grant for this client",
        (Some("invalid_scope"), _) => "rejected the requested scopes",
        (Some("unsupported_grant_type"), _) => "does not support the grant",
        (Some("invalid_request"), _) => "rejected the request as malformed",
        (Some("invalid_grant"), _) => "rejected the grant (refresh or subject token)",
        (Some("access_denied"), _) => "denied the request",
        (Some("invalid_target"), _) => "rejected the requested audience",
        (None, 403) => "refused the request",
        _ => "rejected the client credentials",
    }
}

fn rejection_hint(status: &u16, error: Option<&str>) -> &'static str {
    match (error, *status) {
        (Some("unauthorized_client"), _) => {
            "check that the API client is allowed to use this grant (client_credentials, refresh_token or token exchange)"
        }
        (Some("invalid_scope"), _) => "check spec.scopes",
        (Some("unsupported_grant_type"), _) => "check spec.tokenUrl",
        (Some("invalid_request"), _) => "check spec.tokenUrl and spec.authMethod",
        (Some("invalid_grant"), _) => {
            "the operator falls back to client credentials where it can; check the client Secret"
        }
        (Some("access_denied") | Some("invalid_target"), _) => {
            "check that the client may exchange the subject's token for this audience (spec.tokenExchange)"
        }
        (None, 403) => {
            "check client_id and client_secret in the client Secret, and that the API client may use this endpoint"
        }
        _ => "check client_id and client_secret in the client Secret",
    }
}

fn unexpected_status_hint(status: &u16) -> &'static str {
    match *status {
        300..=399 => "redirects are not followed; check spec.tokenUrl",
        404 | 405 => "check spec.tokenUrl",
        _ => "the endpoint may be misbehaving",
    }
}

fn http_summary(status: &u16, error: Option<&str>, description: Option<&str>) -> String {
    let mut summary = format!("HTTP {status}");
    if let Some(error) = error {
        summary.push(' ');
        summary.push_str(error);
    }
    if let Some(description) = description {
        summary.push_str(": ");
        summary.push_str(description);
    }
    summary
}

fn retry_phrase(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("after {}", format_duration(wait)),
        None => "with backoff".to_owned(),
    }
}

/// Formats a duration the way people write timeouts: `30s`, `300ms`, `1.5s`.
pub(crate) fn format_duration(duration: &Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_reason_and_retry_hint() {
        let host = "h".to_owned();
        let transient = [
            TokenError::ServerError {
                host: host.clone(),
                status: 503,
                retry_after: None,
            },
            TokenError::Timeout {
                host: host.clone(),
                after: Duration::from_secs(1),
                connecting: false,
            },
            TokenError::Connect {
                host: host.clone(),
                detail: "refused".into(),
            },
            TokenError::Tls {
                host: host.clone(),
                detail: "bad".into(),
            },
            TokenError::Transport {
                host: host.clone(),
                detail: "reset".into(),
            },
            TokenError::ResponseTooLarge {
                host: host.clone(),
                limit: 1,
            },
            TokenError::MalformedResponse {
                host: host.clone(),
                problem: "x".into(),
            },
        ];
        for err in transient {
            assert_eq!(err.reason(), Reason::TokenEndpointUnavailable, "{err}");
            assert!(!err.reason().is_permanent(), "{err}");
        }
        let limited = TokenError::RateLimited {
            host: host.clone(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(limited.reason(), Reason::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(limited.pauses_host(), Some(Duration::from_secs(3)));
        for err in [
            TokenError::InsecureUrl {
                url: "http://h/".into(),
            },
            TokenError::UnsupportedUrl {
                url: "ftp://h/".into(),
                problem: "p",
            },
            TokenError::InvalidConfig { detail: "d".into() },
        ] {
            assert_eq!(err.reason(), Reason::InvalidSpec, "{err}");
        }
        let odd_type = TokenError::UnsupportedTokenType {
            host,
            token_type: "DPoP".into(),
        };
        assert_eq!(odd_type.reason(), Reason::UnsupportedTokenType);
        assert!(odd_type.reason().is_permanent());
    }

    #[test]
    fn a_503_pauses_the_host_only_when_it_says_for_how_long() {
        let quiet = TokenError::ServerError {
            host: "h".into(),
            status: 503,
            retry_after: None,
        };
        assert_eq!(quiet.pauses_host(), None);
        let told = TokenError::ServerError {
            host: "h".into(),
            status: 503,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(told.pauses_host(), Some(Duration::from_secs(7)));
        let other = TokenError::ServerError {
            host: "h".into(),
            status: 500,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(other.pauses_host(), None);
    }

    #[test]
    fn messages_say_what_to_fix() {
        let err = TokenError::Rejected {
            url: "https://sso.example.com/as/token.oauth2".into(),
            status: 401,
            error: Some("invalid_client".into()),
            description: Some("Bad client credentials".into()),
        };
        assert_eq!(
            err.to_string(),
            "token endpoint https://sso.example.com/as/token.oauth2 rejected the client credentials \
             (HTTP 401 invalid_client: Bad client credentials): check client_id and client_secret in the client Secret"
        );
        let err = TokenError::ServerError {
            host: "sso.example.com".into(),
            status: 503,
            retry_after: None,
        };
        assert_eq!(
            err.to_string(),
            "token endpoint sso.example.com answered 503; will retry with backoff"
        );
        let err = TokenError::Timeout {
            host: "h".into(),
            after: Duration::from_millis(300),
            connecting: true,
        };
        assert_eq!(
            err.to_string(),
            "timed out after 300ms connecting to the token endpoint h; will retry"
        );
        let grant = TokenError::Rejected {
            url: "https://h/t".into(),
            status: 400,
            error: Some("invalid_grant".into()),
            description: None,
        };
        assert!(grant.is_invalid_grant());
        assert!(
            grant
                .to_string()
                .contains("falls back to client credentials"),
            "{grant}"
        );
    }
}
