//! Keeping secrets out of anything a server sends back: error codes, descriptions, transport
//! errors. Everything the token client puts into an error message passes through here.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// The placeholder for anything scrubbed from server-provided text.
pub(crate) const REDACTED: &str = "<redacted>";
/// Unbroken runs of token characters at least this long are treated as possible tokens.
const TOKEN_LIKE_MIN_CHARS: usize = 40;

/// The error codes of RFC 6749 (sections 4.1.2.1 and 5.2), RFC 6750 (3.1), RFC 7009 (2.2.1)
/// and RFC 8693 (2.2.2). A server's `error` is kept only when it is one of these: any other
/// string could be anything, the client secret included.
const KNOWN_ERROR_CODES: [&str; 13] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
    "invalid_token",
    "unsupported_token_type",
    "invalid_target",
];

/// What an `error` code that is not a registered one is reported as.
pub(crate) const UNRECOGNISED_ERROR_CODE: &str = "unrecognised_error_code";

/// The registered OAuth error code `code`, or [`UNRECOGNISED_ERROR_CODE`].
pub(crate) fn error_code(code: &str) -> String {
    let code = code.trim();
    KNOWN_ERROR_CODES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(code))
        .map_or(UNRECOGNISED_ERROR_CODE, |known| known)
        .to_owned()
}

/// Removes known secrets, token-like strings and control characters from text a server sent.
pub(crate) struct Scrubber {
    /// The secrets in every form a server might echo them, lowercased for a case-insensitive
    /// search: raw, form-encoded, percent-encoded, and inside an HTTP Basic credential.
    patterns: Vec<String>,
}

impl Scrubber {
    /// A scrubber for the client `secret` of `client_id` and any further `secrets` sent in the
    /// request (a refresh token, a subject token).
    pub(crate) fn new(client_id: &str, secret: Option<&str>, secrets: &[&str]) -> Self {
        let mut patterns = Vec::new();
        let mut add = |text: String| {
            if text.len() >= 3 && !patterns.contains(&text.to_ascii_lowercase()) {
                patterns.push(text.to_ascii_lowercase());
            }
        };
        for value in secret.into_iter().chain(secrets.iter().copied()) {
            if value.is_empty() {
                continue;
            }
            add(value.to_owned());
            add(form_urlencode(value));
            add(percent_encode(value));
        }
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            let pairs = [
                format!("{client_id}:{secret}"),
                format!("{}:{}", form_urlencode(client_id), form_urlencode(secret)),
            ];
            for pair in pairs {
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    add(engine.encode(&pair));
                }
            }
        }
        // Longest first, so that a form containing another is removed whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self { patterns }
    }

    /// `text` without secrets, token-like words and control characters, cut to `max_chars`.
    pub(crate) fn scrub(&self, text: &str, max_chars: usize) -> String {
        scrub_text(text, &self.patterns, max_chars)
    }
}

/// `application/x-www-form-urlencoded` encoding (spaces as `+`), as RFC 6749 prescribes.
pub(crate) fn form_urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Percent-encoding of everything but unreserved characters (spaces as `%20`).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Replaces every case-insensitive occurrence of each (lowercase) pattern in `text`.
fn redact_patterns(text: &str, patterns: &[String]) -> String {
    let mut text = text.to_owned();
    for pattern in patterns {
        loop {
            let lowered = text.to_ascii_lowercase();
            let Some(start) = lowered.find(pattern.as_str()) else {
                break;
            };
            // ASCII lowercasing keeps byte offsets, so the range is valid in `text`.
            text.replace_range(start..start + pattern.len(), REDACTED);
        }
    }
    text
}

/// Redacts `patterns` and anything that looks like a credential, drops control characters,
/// and truncates to `max_chars`. Redaction happens before truncation so that a cut can never
/// leave half a secret behind.
pub(crate) fn scrub_text(text: &str, patterns: &[String], max_chars: usize) -> String {
    let text = redact_patterns(text, patterns);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut words: Vec<String> = Vec::new();
    let mut redact_next = false;
    for word in text.split_whitespace() {
        let bare = word.trim_matches(|c: char| !is_token_char(c));
        let already = word.contains(REDACTED);
        if !bare.is_empty() && !already && (redact_next || looks_like_token(bare)) {
            words.push(word.replace(bare, REDACTED));
        } else {
            words.push(word.to_owned());
        }
        let lowered = bare.to_ascii_lowercase();
        redact_next = matches!(lowered.as_str(), "bearer" | "basic");
    }
    truncate_chars(&words.join(" "), max_chars)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=' | '%')
}

/// A JWT, or a long unbroken run of base64/token characters.
fn looks_like_token(word: &str) -> bool {
    if word.is_empty() || !word.chars().all(is_token_char) {
        return false;
    }
    let jwt = word.starts_with("eyJ") && word.matches('.').count() >= 2;
    jwt || word.len() >= TOKEN_LIKE_MIN_CHARS
}

/// `text` cut to `max_chars` characters, with an ellipsis when it was cut.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    #[test]
    fn only_registered_error_codes_are_kept() {
        assert_eq!(error_code("invalid_client"), "invalid_client");
        assert_eq!(error_code(" Invalid_Grant "), "invalid_grant");
        assert_eq!(error_code("invalid_target"), "invalid_target");
        // A client secret has exactly the shape of an error code: it must not survive.
        assert_eq!(error_code("Zk3_secret-value.42"), UNRECOGNISED_ERROR_CODE);
        assert_eq!(error_code("secret is hunter2"), UNRECOGNISED_ERROR_CODE);
    }

    #[test]
    fn the_secret_is_removed_in_every_form_a_server_might_echo() {
        let secret = "p@ss wörd/+=";
        let scrubber = Scrubber::new("my-client", Some(secret), &[]);
        let forms = [
            secret.to_owned(),
            form_urlencode(secret),
            form_urlencode(secret).to_ascii_lowercase(),
            percent_encode(secret),
            percent_encode(secret).to_ascii_lowercase(),
            STANDARD.encode(format!("my-client:{secret}")),
            STANDARD.encode(format!("my-client:{}", form_urlencode(secret))),
            URL_SAFE_NO_PAD.encode(format!("my-client:{}", form_urlencode(secret))),
        ];
        for form in forms {
            let scrubbed = scrubber.scrub(&format!("bad credentials ({form}) given"), 500);
            assert_eq!(
                scrubbed,
                format!("bad credentials ({REDACTED}) given"),
                "{form}"
            );
        }
    }

    #[test]
    fn other_secrets_of_the_request_are_removed_too() {
        let scrubber = Scrubber::new("id", None, &["refresh-token-value"]);
        let scrubbed = scrubber.scrub("token refresh-token-value is expired", 200);
        assert!(!scrubbed.contains("refresh-token-value"), "{scrubbed}");
    }

    #[test]
    fn scrubbing_removes_tokens_headers_and_control_characters() {
        let scrubber = Scrubber::new("id", Some("p@ss word"), &[]);
        let token = jwt();
        let text = format!(
            "bad secret p@ss word (p%40ss+word)\nAuthorization: Basic abc123 token {token}\u{7}; Bearer xyz"
        );
        let scrubbed = scrubber.scrub(&text, 500);
        for leaked in ["p@ss", "p%40ss", "abc123", token.as_str(), "xyz"] {
            assert!(!scrubbed.contains(leaked), "{leaked} in {scrubbed}");
        }
        assert!(!scrubbed.chars().any(char::is_control), "{scrubbed}");
        assert!(scrubbed.starts_with("bad secret <redacted>"), "{scrubbed}");
    }

    #[test]
    fn a_redacted_basic_credential_is_redacted_once() {
        let scrubber = Scrubber::new("id", Some("secret-1"), &[]);
        let header = format!("Basic {}", STANDARD.encode("id:secret-1"));
        assert_eq!(
            scrubber.scrub(&format!("sent {header} twice"), 200),
            "sent Basic <redacted> twice"
        );
    }

    #[test]
    fn scrubbing_keeps_client_ids_and_truncates_long_descriptions() {
        let id = "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f";
        assert_eq!(
            scrub_text(&format!("unknown client {id}"), &[], 200),
            format!("unknown client {id}")
        );
        let scrubbed = scrub_text(&"x ".repeat(300), &[], 200);
        assert_eq!(scrubbed.chars().count(), 201);
        assert!(scrubbed.ends_with('…'));
    }
}
