//! Reading what a token endpoint answers: the token response (RFC 6749 section 5.1, RFC 8693
//! section 2.2.1), the error response (section 5.2), the JWT claims of a token (read, never
//! verified) and the `Retry-After` / `ratelimit-reset` hints of a 429 or 503.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::jiff::Timestamp;
use reqwest::header::{self, HeaderMap};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::error::TokenError;
use super::redact::{Scrubber, error_code};
use super::{Endpoint, IssuedToken, LifetimeSource};

/// Longest `error_description` kept in an error message, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;
/// A server may not park a credential for longer than this with `Retry-After`.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetimes beyond this are clamped, so a bogus `expires_in` cannot overflow the clock.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Values of `ratelimit-reset` at or above this are Unix times, not delays.
const EPOCH_SECONDS_THRESHOLD: u64 = 1_000_000_000;
/// Longest refresh token accepted; longer ones are ignored (the access token still works).
const MAX_REFRESH_TOKEN_BYTES: usize = 16 * 1024;

/// An RFC 6749 section 5.2 error body, already scrubbed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) error: Option<String>,
    pub(crate) description: Option<String>,
}

/// The error body, if it is a JSON object with `error` or `error_description`.
pub(crate) fn parse_oauth_error(body: &[u8], scrubber: &Scrubber) -> Option<OAuthError> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    oauth_error_from(&object, scrubber)
}

fn oauth_error_from(object: &Map<String, Value>, scrubber: &Scrubber) -> Option<OAuthError> {
    let error = object.get("error").and_then(Value::as_str).map(error_code);
    let description = object
        .get("error_description")
        .and_then(Value::as_str)
        .map(|text| scrubber.scrub(text, MAX_DESCRIPTION_CHARS))
        .filter(|text| !text.is_empty());
    (error.is_some() || description.is_some()).then_some(OAuthError { error, description })
}

/// RFC 6749 error codes that mean the request or the credentials are wrong, not the server.
const CREDENTIAL_ERROR_CODES: [&str; 8] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_request",
    "access_denied",
    "invalid_target",
];

/// Classifies a non-2xx, non-429, non-5xx answer (or a 2xx carrying an `error`).
pub(crate) fn classify_error_response(
    status: u16,
    body: Option<OAuthError>,
    endpoint: &Endpoint,
) -> TokenError {
    let OAuthError { error, description } = body.unwrap_or_default();
    let credential_error = error
        .as_deref()
        .is_some_and(|code| CREDENTIAL_ERROR_CODES.contains(&code));
    let rejected = matches!(status, 400 | 401 | 403)
        || (credential_error && ((400..=499).contains(&status) || (200..=299).contains(&status)));
    if rejected {
        TokenError::Rejected {
            url: endpoint.url.clone(),
            status,
            error,
            description,
        }
    } else {
        TokenError::UnexpectedStatus {
            url: endpoint.url.clone(),
            status,
            error,
            description,
        }
    }
}

/// Parses a 2xx token response into a token issued at `now`.
pub(crate) fn parse_success(
    body: &[u8],
    status: u16,
    now: Timestamp,
    default_lifetime: Duration,
    endpoint: &Endpoint,
    scrubber: &Scrubber,
) -> Result<IssuedToken, TokenError> {
    let malformed = |problem: String| TokenError::MalformedResponse {
        host: endpoint.host.clone(),
        problem,
    };
    // serde_json's messages name a position, never the content, so they are safe to show.
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(malformed("the body is JSON but not an object".to_owned())),
        Err(err) => return Err(malformed(format!("the body is not valid JSON ({err})"))),
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        Some(Value::String(_)) => return Err(malformed("access_token is empty".to_owned())),
        Some(_) => return Err(malformed("access_token is not a string".to_owned())),
        None => {
            if let Some(oauth) = oauth_error_from(&object, scrubber).filter(|e| e.error.is_some()) {
                return Err(classify_error_response(status, Some(oauth), endpoint));
            }
            return Err(malformed("access_token is missing".to_owned()));
        }
    };
    // The token ends up in an Authorization header; anything that could split or fold a
    // header line is refused rather than written to a Secret.
    if !access_token.bytes().all(is_header_token_byte) {
        return Err(malformed(
            "access_token contains spaces or control characters".to_owned(),
        ));
    }
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_owned(),
        Some(Value::String(kind)) if !kind.is_empty() && kind.bytes().all(is_header_token_byte) => {
            kind.clone()
        }
        Some(_) => return Err(malformed("token_type is not a single word".to_owned())),
    };
    // RFC 6750: the token goes out as "Bearer <token>". A DPoP, MAC or N_A (RFC 8693) token
    // sent that way would be refused or, worse, accepted without its binding.
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::UnsupportedTokenType {
            host: endpoint.host.clone(),
            token_type: super::redact::truncate_chars(&token_type, 32),
        });
    }
    let claims = decode_jwt_claims(access_token);
    let (expires_at, lifetime_source) = select_expiry(
        object.get("expires_in"),
        claims.as_ref(),
        now,
        default_lifetime,
    )
    .map_err(malformed)?;
    let scope = object
        .get("scope")
        .and_then(Value::as_str)
        .map(|scope| scrubber.scrub(scope, 1024))
        .filter(|scope| !scope.is_empty());
    let refresh_token = match object.get("refresh_token") {
        Some(Value::String(token))
            if !token.is_empty()
                && token.len() <= MAX_REFRESH_TOKEN_BYTES
                && token.bytes().all(is_header_token_byte) =>
        {
            Some(SecretString::from(token.clone()))
        }
        // A refresh token that cannot be used is no reason to refuse a good access token.
        _ => None,
    };
    let refresh_expires_at = object
        .get("refresh_expires_in")
        .and_then(parse_expires_in)
        .and_then(|lifetime| now.checked_add(lifetime.min(MAX_LIFETIME)).ok());
    Ok(IssuedToken {
        access_token: SecretString::from(access_token.clone()),
        token_type,
        issued_at: now,
        expires_at,
        lifetime_source,
        scope,
        claims,
        refresh_token,
        refresh_expires_at,
    })
}

fn is_header_token_byte(byte: u8) -> bool {
    byte.is_ascii_graphic()
}

/// Chooses the expiry: `expires_in`, else the JWT `exp` claim, else the default lifetime.
/// When both are given the earlier one wins: a token that says it expires sooner than the
/// response claims is renewed in time.
pub(crate) fn select_expiry(
    expires_in: Option<&Value>,
    claims: Option<&Map<String, Value>>,
    now: Timestamp,
    default_lifetime: Duration,
) -> Result<(Timestamp, LifetimeSource), String> {
    let after = |lifetime: Duration| -> Result<Timestamp, String> {
        now.checked_add(lifetime.min(MAX_LIFETIME))
            .map_err(|_| "the token lifetime is out of range".to_owned())
    };
    let jwt_expiry = claims.and_then(|claims| claims.get("exp")).map(|exp| {
        let exp = exp
            .as_i64()
            .or_else(|| exp.as_f64().filter(|exp| exp.is_finite()).map(|exp| exp as i64))
            .ok_or_else(|| "the token's exp claim is not a number".to_owned())?;
        let max = now.checked_add(MAX_LIFETIME).unwrap_or(Timestamp::MAX);
        let expires_at = Timestamp::from_second(exp).unwrap_or(Timestamp::MAX).min(max);
        if expires_at <= now {
            return Err(format!(
                "the token's exp claim ({expires_at}) is not in the future; is this machine's clock right?"
            ));
        }
        Ok(expires_at)
    });

    match expires_in {
        None | Some(Value::Null) => {}
        Some(value) => {
            let Some(lifetime) = parse_expires_in(value) else {
                // A broken expires_in is not the same as none: only a JWT exp may stand in.
                return match jwt_expiry {
                    Some(Ok(expires_at)) => Ok((expires_at, LifetimeSource::JwtExpiry)),
                    _ => Err("expires_in is not a positive number of seconds".to_owned()),
                };
            };
            let stated = after(lifetime)?;
            return match jwt_expiry {
                Some(Err(problem)) => Err(problem),
                Some(Ok(exp)) if exp < stated => Ok((exp, LifetimeSource::JwtExpiry)),
                _ => Ok((stated, LifetimeSource::ExpiresIn)),
            };
        }
    }
    match jwt_expiry {
        Some(Ok(expires_at)) => Ok((expires_at, LifetimeSource::JwtExpiry)),
        Some(Err(problem)) => Err(problem),
        None => Ok((after(default_lifetime)?, LifetimeSource::Default)),
    }
}

/// Parses `expires_in`: a JSON number or a numeric string of seconds, greater than zero.
fn parse_expires_in(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 1.0)
                .map(|s| s as u64)
        }),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<u64>().ok().or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 1.0)
                    .map(|s| s as u64)
            })
        }
        _ => None,
    }?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Decodes the payload of a JWS compact token without verifying it; `None` if not a JWT.
pub fn decode_jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        // Five parts is a JWE, whose payload is encrypted.
        return None;
    }
    let decode_object = |part: &str| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        match serde_json::from_slice::<Value>(&bytes).ok()? {
            Value::Object(object) => Some(object),
            _ => None,
        }
    };
    decode_object(header)?;
    decode_object(payload)
}

/// Claims that are safe to show: everything but values that look like credentials.
pub fn displayable_claims(claims: &Map<String, Value>) -> Vec<(String, String)> {
    claims
        .iter()
        .map(|(name, value)| {
            let shown = match value {
                Value::String(text) => format!("{:?}", super::redact::scrub_text(text, &[], 200)),
                other => super::redact::scrub_text(&other.to_string(), &[], 200),
            };
            (name.clone(), shown)
        })
        .collect()
}

/// A jiff timestamp as a `SystemTime`, without jiff's `std` feature.
pub(crate) fn system_time(at: Timestamp) -> SystemTime {
    let since_epoch = Duration::from_nanos(
        at.as_nanosecond()
            .unsigned_abs()
            .try_into()
            .unwrap_or(u64::MAX),
    );
    if at.as_second() >= 0 {
        SystemTime::UNIX_EPOCH + since_epoch
    } else {
        SystemTime::UNIX_EPOCH - since_epoch
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `Retry-After` of any answer, relative to `now`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    header_str(headers, header::RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, now))
}

/// How long a 429 asks to wait: `Retry-After`, else `ratelimit-reset`.
pub(crate) fn rate_limit_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after(headers, now).or_else(|| {
        ["ratelimit-reset", "x-ratelimit-reset"]
            .into_iter()
            .find_map(|name| header_str(headers, name))
            .and_then(|value| parse_ratelimit_reset(value, now))
    })
}

/// Parses `Retry-After`: delay seconds or an HTTP date (relative to `now`).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses `ratelimit-reset`: delay seconds, or (as some servers send) a Unix time.
fn parse_ratelimit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let seconds = value.trim().parse::<u64>().ok()?;
    let delay = if seconds >= EPOCH_SECONDS_THRESHOLD {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        Duration::from_secs(seconds)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use url::Url;

    fn endpoint() -> Endpoint {
        let url = Url::parse("https://sso.example.com/as/token.oauth2?debug=1").expect("url");
        Endpoint::of(&url)
    }

    pub(crate) fn jwt(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("timestamp")
    }

    fn system(at: Timestamp) -> SystemTime {
        system_time(at)
    }

    #[test]
    fn retry_after_accepts_delay_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after("30", system(now())),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(" 0 ", system(now())),
            Some(Duration::ZERO)
        );
        let later = httpdate::fmt_http_date(system(now()) + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, system(now())),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(system(now()) - Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&past, system(now())),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_ignores_garbage_and_caps_huge_delays() {
        assert_eq!(parse_retry_after("soon", system(now())), None);
        assert_eq!(parse_retry_after("-5", system(now())), None);
        assert_eq!(
            parse_retry_after("99999999", system(now())),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn ratelimit_reset_accepts_seconds_and_unix_times() {
        assert_eq!(
            parse_ratelimit_reset("12", system(now())),
            Some(Duration::from_secs(12))
        );
        let unix = (now().as_second() + 40).to_string();
        assert_eq!(
            parse_ratelimit_reset(&unix, system(now())),
            Some(Duration::from_secs(40))
        );
        assert_eq!(parse_ratelimit_reset("x", system(now())), None);
    }

    #[test]
    fn retry_after_wins_over_ratelimit_reset() {
        use reqwest::header::HeaderValue;
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-reset", HeaderValue::from_static("20"));
        assert_eq!(
            rate_limit_delay(&headers, system(now())),
            Some(Duration::from_secs(20))
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        assert_eq!(
            rate_limit_delay(&headers, system(now())),
            Some(Duration::from_secs(5))
        );
        assert_eq!(rate_limit_delay(&HeaderMap::new(), system(now())), None);
    }

    fn oauth(error: &str) -> Option<OAuthError> {
        Some(OAuthError {
            error: Some(error.to_owned()),
            description: None,
        })
    }

    #[test]
    fn classifies_error_responses() {
        use crate::reason::Reason::{
            InvalidClientCredentials as Rejected, TokenEndpointUnavailable as Down,
        };
        let cases = [
            (401, oauth("invalid_client"), Rejected),
            (400, oauth("invalid_client"), Rejected),
            (400, oauth("unauthorized_client"), Rejected),
            (400, oauth("invalid_grant"), Rejected),
            (400, oauth("unsupported_grant_type"), Rejected),
            (400, oauth("invalid_scope"), Rejected),
            (400, oauth("invalid_request"), Rejected),
            (400, oauth("access_denied"), Rejected),
            (400, None, Rejected),
            (401, None, Rejected),
            (403, None, Rejected),
            (422, oauth("invalid_client"), Rejected),
            (200, oauth("invalid_client"), Rejected),
            (404, None, Down),
            (302, None, Down),
            (
                409,
                oauth(super::super::redact::UNRECOGNISED_ERROR_CODE),
                Down,
            ),
        ];
        for (status, body, reason) in cases {
            let err = classify_error_response(status, body, &endpoint());
            assert_eq!(err.reason(), reason, "HTTP {status}: {err}");
            assert_eq!(err.status(), Some(status));
        }
    }

    #[test]
    fn an_error_code_shaped_like_a_secret_never_reaches_the_message() {
        let scrubber = Scrubber::new("id", Some("unrelated"), &[]);
        let body = br#"{"error":"Zk3_Secret-Value.42","error_description":"nope"}"#;
        let err = classify_error_response(401, parse_oauth_error(body, &scrubber), &endpoint());
        let text = err.to_string();
        assert!(!text.contains("Zk3_Secret-Value.42"), "{text}");
        assert!(text.contains("unrecognised_error_code"), "{text}");
    }

    #[test]
    fn decodes_jwt_claims_without_verifying() {
        let token =
            jwt(&serde_json::json!({"sub": "abc", "exp": 1_700_000_100, "client_id": "id"}));
        let claims = decode_jwt_claims(&token).expect("claims");
        assert_eq!(claims["sub"], "abc");
        assert_eq!(claims["exp"], 1_700_000_100);
        assert_eq!(decode_jwt_claims("opaque-token-value"), None);
        assert_eq!(decode_jwt_claims("a.b.c"), None);
        assert_eq!(decode_jwt_claims("a.b.c.d.e"), None);
        let padded = format!(
            "{}.{}.sig",
            base64::engine::general_purpose::URL_SAFE.encode(br#"{"alg":"HS256"}"#),
            base64::engine::general_purpose::URL_SAFE.encode(br#"{"a":1}"#)
        );
        assert_eq!(decode_jwt_claims(&padded).expect("claims")["a"], 1);
    }

    fn claims(payload: Value) -> Map<String, Value> {
        decode_jwt_claims(&jwt(&payload)).expect("claims")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn lifetime_comes_from_expires_in_unless_the_jwt_expires_sooner() {
        let later = claims(serde_json::json!({"exp": now().as_second() + 7200}));
        let (at, source) = select_expiry(Some(&serde_json::json!(7199)), Some(&later), now(), HOUR)
            .expect("expiry");
        assert_eq!(
            (at.as_second(), source),
            (now().as_second() + 7199, LifetimeSource::ExpiresIn)
        );
        let sooner = claims(serde_json::json!({"exp": now().as_second() + 100}));
        let (at, source) =
            select_expiry(Some(&serde_json::json!(7199)), Some(&sooner), now(), HOUR)
                .expect("expiry");
        assert_eq!(
            (at.as_second(), source),
            (now().as_second() + 100, LifetimeSource::JwtExpiry)
        );
    }

    #[test]
    fn an_exp_already_past_is_refused_even_with_expires_in() {
        let past = claims(serde_json::json!({"exp": now().as_second() - 10}));
        let err = select_expiry(Some(&serde_json::json!(7199)), Some(&past), now(), HOUR)
            .expect_err("a token that is already expired");
        assert!(err.contains("clock"), "{err}");
    }

    #[test]
    fn lifetime_falls_back_to_the_jwt_exp_claim_then_the_default() {
        let exp = claims(serde_json::json!({"exp": now().as_second() + 120}));
        let (at, source) = select_expiry(None, Some(&exp), now(), HOUR).expect("expiry");
        assert_eq!(
            (at.as_second(), source),
            (now().as_second() + 120, LifetimeSource::JwtExpiry)
        );
        let (at, source) =
            select_expiry(Some(&serde_json::json!("900")), None, now(), HOUR).expect("expiry");
        assert_eq!(
            (at.as_second(), source),
            (now().as_second() + 900, LifetimeSource::ExpiresIn)
        );
        let none = claims(serde_json::json!({"sub": "x"}));
        let (at, source) = select_expiry(None, Some(&none), now(), HOUR).expect("expiry");
        assert_eq!(
            (at.as_second(), source),
            (now().as_second() + 3600, LifetimeSource::Default)
        );
    }

    #[test]
    fn unusable_lifetimes_are_errors_not_defaults() {
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!("soon"),
            serde_json::json!(true),
        ] {
            assert!(
                select_expiry(Some(&bad), None, now(), HOUR).is_err(),
                "{bad}"
            );
        }
        let (at, _) =
            select_expiry(Some(&serde_json::json!(u64::MAX)), None, now(), HOUR).expect("expiry");
        assert_eq!(at, now().checked_add(MAX_LIFETIME).expect("in range"));
    }

    fn parse(body: &str) -> Result<IssuedToken, TokenError> {
        parse_success(
            body.as_bytes(),
            200,
            now(),
            HOUR,
            &endpoint(),
            &Scrubber::new("id", Some("secret"), &[]),
        )
    }

    #[test]
    fn parses_a_greenlake_token_response() {
        let token = jwt(&serde_json::json!({"client_id": "id", "exp": now().as_second() + 7200}));
        let issued = parse(&format!(
            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":7199}}"#
        ))
        .expect("token");
        assert_eq!(issued.access_token.expose_secret(), token);
        assert_eq!(issued.token_type, "Bearer");
        assert_eq!(issued.issued_at, now());
        assert_eq!(issued.lifetime(), Duration::from_secs(7199));
        assert_eq!(issued.claims.expect("claims")["client_id"], "id");
        assert!(issued.refresh_token.is_none());
    }

    #[test]
    fn keeps_a_refresh_token_and_its_lifetime_when_offered() {
        let issued = parse(
            r#"{"access_token":"abc","token_type":"bearer","expires_in":300,
                "refresh_token":"rt-1","refresh_expires_in":1800}"#,
        )
        .expect("token");
        assert_eq!(
            issued
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            Some("rt-1".to_owned())
        );
        assert_eq!(
            issued.refresh_expires_at.map(|t| t.as_second()),
            Some(now().as_second() + 1800)
        );
        let odd = parse(r#"{"access_token":"abc","refresh_token":"has space"}"#).expect("token");
        assert!(
            odd.refresh_token.is_none(),
            "an unusable refresh token is dropped"
        );
    }

    #[test]
    fn only_bearer_tokens_are_accepted_in_any_case() {
        for kind in ["Bearer", "bearer", "BEARER"] {
            let body = format!(r#"{{"access_token":"abc","token_type":"{kind}"}}"#);
            assert!(parse(&body).is_ok(), "{kind}");
        }
        for kind in ["DPoP", "mac", "N_A"] {
            let body = format!(r#"{{"access_token":"abc","token_type":"{kind}"}}"#);
            let err = parse(&body).expect_err(kind);
            assert!(
                matches!(err, TokenError::UnsupportedTokenType { .. }),
                "{kind}: {err:?}"
            );
        }
    }

    #[test]
    fn unusable_success_bodies_are_malformed_responses() {
        for body in [
            "not json",
            "[1]",
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":42}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a\r\nX-Injected: 1"}"#,
            r#"{"access_token":"abc","token_type":"Bearer x"}"#,
            r#"{"access_token":"abc","expires_in":"tomorrow"}"#,
        ] {
            let err = parse(body).expect_err(body);
            assert!(
                matches!(err, TokenError::MalformedResponse { .. }),
                "{body}: {err:?}"
            );
            assert!(!err.reason().is_permanent());
        }
    }

    #[test]
    fn a_success_status_carrying_an_oauth_error_is_classified_by_its_code() {
        let err =
            parse(r#"{"error":"invalid_client","error_description":"nope"}"#).expect_err("error");
        assert_eq!(
            err.reason(),
            crate::reason::Reason::InvalidClientCredentials
        );
    }
}
