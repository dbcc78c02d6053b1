//! Access tokens, where requests carry them, and the admin bearer token.
//!
//! An access token is a JWT (HS256) bound to one session and one role. It may arrive as
//! `Authorization: Bearer`, as a `token` query parameter (noVNC cannot set headers on its
//! WebSocket) or in the viewer's cookie `ls_<session id>`. Tokens are never logged.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

const AUDIENCE: &str = "livesession";
/// The audience of checkout claim credentials: no other token is signed for it, and a
/// claim credential is signed for nothing else, so neither verifies as the other.
const CLAIM_AUDIENCE: &str = "livesession-claim";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the screen and sends keyboard and mouse input.
    Interactive,
    /// Sees the screen only.
    View,
    /// A program that drives the browser over the DevTools protocol: CDP and the screen,
    /// no VNC input.
    Agent,
}

impl Role {
    /// Whether the role may open the session's DevTools (CDP) endpoint.
    pub fn may_use_cdp(self) -> bool {
        matches!(self, Role::Interactive | Role::Agent)
    }

    /// Whether the role's VNC connections may send input.
    pub fn may_send_vnc_input(self) -> bool {
        self == Role::Interactive
    }
}

impl From<livesession_session::LinkRole> for Role {
    fn from(role: livesession_session::LinkRole) -> Self {
        match role {
            livesession_session::LinkRole::Interactive => Role::Interactive,
            livesession_session::LinkRole::View => Role::View,
        }
    }
}

/// Access tokens open a session's WebSockets for minutes; refresh tokens, kept by
/// browsers in an HttpOnly cookie scoped to the token endpoint, get new access tokens
/// for as long as the session lives. A claim credential is minted only for the browser
/// that claimed a paid session (`lsc_<id>`, scoped to the claim endpoint): it lets that
/// browser claim again (a reload of the success page) and does nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
    Claim,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The session this token opens, and no other.
    pub sid: String,
    pub role: Role,
    pub typ: TokenKind,
    pub iat: i64,
    pub exp: i64,
    pub aud: String,
    /// The viewer link this token was issued through, if any: revoking the link ends
    /// the token (and every connection opened with it) before its `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lnk: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    claim_validation: Validation,
    access_ttl: time::Duration,
}

impl Tokens {
    pub fn new(key: &[u8], access_ttl: time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 0;
        let mut claim_validation = validation.clone();
        claim_validation.set_audience(&[CLAIM_AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            claim_validation,
            access_ttl,
        }
    }

    fn validation(&self, kind: TokenKind) -> &Validation {
        match kind {
            TokenKind::Claim => &self.claim_validation,
            TokenKind::Access | TokenKind::Refresh => &self.validation,
        }
    }

    fn sign(
        &self,
        session_id: &str,
        role: Role,
        link: Option<&str>,
        typ: TokenKind,
        expires_at: OffsetDateTime,
    ) -> String {
        let claims = AccessClaims {
            sid: session_id.to_owned(),
            role,
            typ,
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            aud: match typ {
                TokenKind::Claim => CLAIM_AUDIENCE,
                TokenKind::Access | TokenKind::Refresh => AUDIENCE,
            }
            .to_owned(),
            lnk: link.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// A short-lived access token; it never outlives the session.
    pub fn access(
        &self,
        session_id: &str,
        role: Role,
        session_expires_at: OffsetDateTime,
    ) -> (String, OffsetDateTime) {
        self.access_for(session_id, role, None, session_expires_at)
    }

    /// An access token issued through a viewer link (`link`), or directly (`None`).
    pub fn access_for(
        &self,
        session_id: &str,
        role: Role,
        link: Option<&str>,
        session_expires_at: OffsetDateTime,
    ) -> (String, OffsetDateTime) {
        let expires_at = (OffsetDateTime::now_utc() + self.access_ttl).min(session_expires_at);
        // JWT times are whole seconds: report the time the token really ends.
        let expires_at =
            OffsetDateTime::from_unix_timestamp(expires_at.unix_timestamp()).expect("in range");
        (
            self.sign(session_id, role, link, TokenKind::Access, expires_at),
            expires_at,
        )
    }

    /// A refresh token, valid until the session's current deadline.
    pub fn refresh(
        &self,
        session_id: &str,
        role: Role,
        session_expires_at: OffsetDateTime,
    ) -> String {
        self.refresh_for(session_id, role, None, session_expires_at)
    }

    /// A refresh token issued through a viewer link (`link`), or directly (`None`).
    pub fn refresh_for(
        &self,
        session_id: &str,
        role: Role,
        link: Option<&str>,
        session_expires_at: OffsetDateTime,
    ) -> String {
        self.sign(
            session_id,
            role,
            link,
            TokenKind::Refresh,
            session_expires_at,
        )
    }

    /// The claim credential of the browser that claimed a paid session: interactive, no
    /// viewer link, its own kind and audience. Valid until the session's deadline at the
    /// time of the claim.
    pub fn claim(&self, session_id: &str, session_expires_at: OffsetDateTime) -> String {
        self.sign(
            session_id,
            Role::Interactive,
            None,
            TokenKind::Claim,
            session_expires_at,
        )
    }

    /// The claims of a genuine token of the given kind, even if it has expired: proof that
    /// this browser was given the session once (a reload of the claim page).
    pub fn verify_ignoring_expiry(
        &self,
        token: &str,
        kind: TokenKind,
    ) -> Result<AccessClaims, TokenError> {
        let mut validation = self.validation(kind).clone();
        validation.validate_exp = false;
        match jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation) {
            Ok(data) if data.claims.typ == kind => Ok(data.claims),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Verifies a token of the given kind: a refresh token never opens a WebSocket, and an
    /// access token is not a refresh credential.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<AccessClaims, TokenError> {
        match jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, self.validation(kind)) {
            Ok(data) if data.claims.typ == kind => Ok(data.claims),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

impl Tokens {
    /// Whether `token` was signed by this server (any kind, any audience, expired or
    /// not). A bearer that is not is a guess: at the admin token, or at a token.
    pub fn signed_here(&self, token: &str) -> bool {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation).is_ok()
    }
}

/// The audience of worker tokens: they claim tasks and nothing else, and no session token
/// is signed for it.
const WORKER_AUDIENCE: &str = "livesession-worker";

/// A worker token's claims: which worker (its name, chosen by the operator) may claim
/// tasks until `exp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerClaims {
    /// The worker's name, as the queue records it (`worker` of a lease).
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub aud: String,
}

impl Tokens {
    /// A worker token for `name`, valid until `expires_at`.
    pub fn worker(&self, name: &str, expires_at: OffsetDateTime) -> String {
        let claims = WorkerClaims {
            sub: name.to_owned(),
            iat: OffsetDateTime::now_utc().unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            aud: WORKER_AUDIENCE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify_worker(&self, token: &str) -> Result<WorkerClaims, TokenError> {
        let mut validation = self.validation.clone();
        validation.set_audience(&[WORKER_AUDIENCE]);
        match jsonwebtoken::decode::<WorkerClaims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Where a token was found. Cookie-borne tokens are sent by browsers on their own, so
/// requests that use them need an Origin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// The access-token cookie, sent with the session's WebSocket upgrades.
pub fn cookie_name(session_id: &str) -> String {
    format!("ls_{session_id}")
}

/// The refresh-token cookie, sent only to the session's token endpoint.
pub fn refresh_cookie_name(session_id: &str) -> String {
    format!("lsr_{session_id}")
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The access token of a request for `session_id`: header first, then query, then cookie.
pub fn find_access_token(
    headers: &HeaderMap,
    query_token: Option<&str>,
    session_id: &str,
) -> Option<(String, TokenSource)> {
    if let Some(t) = bearer(headers) {
        return Some((t.to_owned(), TokenSource::Header));
    }
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Some((t.to_owned(), TokenSource::Query));
    }
    cookie(headers, &cookie_name(session_id)).map(|t| (t.to_owned(), TokenSource::Cookie))
}

/// A `Set-Cookie` value: HttpOnly (page scripts never see it), SameSite=Lax, Secure when
/// served over TLS, kept until `until`.
pub fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    until: OffsetDateTime,
    secure: bool,
) -> String {
    let max_age = (until - OffsetDateTime::now_utc()).whole_seconds().max(0);
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// Appends `Set-Cookie` headers.
pub fn set_cookies(headers: &mut HeaderMap, cookies: &[String]) {
    // Names are hex ids and values base64url tokens: always valid header values.
    for cookie in cookies
        .iter()
        .filter_map(|c| axum::http::HeaderValue::from_str(c).ok())
    {
        headers.append(axum::http::header::SET_COOKIE, cookie);
    }
}

/// The two cookies that give a browser a session: the access token for its WebSockets
/// (`Path=/api/sessions/<id>`) and the refresh token for its token endpoint only. Both
/// live as long as the session: an expired access token inside is answered with "token
/// expired", which tells the client to refresh.
pub fn session_cookies(
    tokens: &Tokens,
    session_id: &str,
    role: Role,
    session_expires_at: OffsetDateTime,
    secure: bool,
) -> Vec<String> {
    session_cookies_for(tokens, session_id, role, None, session_expires_at, secure)
}

/// [`session_cookies`] for tokens issued through a viewer link (`link`), or directly.
pub fn session_cookies_for(
    tokens: &Tokens,
    session_id: &str,
    role: Role,
    link: Option<&str>,
    session_expires_at: OffsetDateTime,
    secure: bool,
) -> Vec<String> {
    let (access, _) = tokens.access_for(session_id, role, link, session_expires_at);
    let refresh = tokens.refresh_for(session_id, role, link, session_expires_at);
    vec![
        cookie_header(
            &cookie_name(session_id),
            &access,
            &format!("/api/sessions/{session_id}"),
            session_expires_at,
            secure,
        ),
        cookie_header(
            &refresh_cookie_name(session_id),
            &refresh,
            &format!("/api/sessions/{session_id}/token"),
            session_expires_at,
            secure,
        ),
    ]
}

/// Whether a cookie-authenticated or state-changing browser request comes from one of
/// our own pages (the CSRF check; `security::csrf` applies it to every route).
/// `Sec-Fetch-Site` is set by the browser and cannot be forged by a page: `same-origin`
/// or `none` (typed in the address bar) pass. Otherwise the Origin must be one we allow
/// (`null`, as sandboxed frames and some redirects send, never is). A request with
/// neither header is not a browser's (curl, Stripe, an agent) and passes.
pub fn same_site_request(
    headers: &HeaderMap,
    origin_allowed: impl Fn(&str, Option<&str>) -> bool,
) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
    };
    let site = header("sec-fetch-site");
    if matches!(site, Some("same-origin" | "none")) {
        return true;
    }
    match header("origin") {
        Some(origin) => origin != "null" && origin_allowed(origin, header("host")),
        // A browser that says cross-site or same-site always sends an Origin on a
        // state-changing request; without one, refuse rather than guess.
        None => site.is_none(),
    }
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_are_bound_to_their_session_kind_and_time() {
        let tokens = Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            time::Duration::minutes(15),
        );
        let session_end = OffsetDateTime::now_utc() + time::Duration::hours(24);
        let (t, expires) = tokens.access("s1", Role::Interactive, session_end);
        assert!(
            expires <= OffsetDateTime::now_utc() + time::Duration::minutes(15),
            "access tokens are short-lived"
        );
        let claims = tokens.verify(&t, TokenKind::Access).unwrap();
        assert_eq!(
            (claims.sid.as_str(), claims.role),
            ("s1", Role::Interactive)
        );
        assert_eq!(
            tokens.verify(&t, TokenKind::Refresh).unwrap_err(),
            TokenError::Invalid
        );
        let r = tokens.refresh("s1", Role::Interactive, session_end);
        assert_eq!(
            tokens.verify(&r, TokenKind::Refresh).unwrap().exp,
            session_end.unix_timestamp()
        );
        assert_eq!(
            tokens.verify(&r, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );

        // Never beyond the session's end.
        let soon = OffsetDateTime::now_utc() + time::Duration::seconds(30);
        assert_eq!(
            tokens.access("s1", Role::View, soon).1.unix_timestamp(),
            soon.unix_timestamp()
        );
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(5);
        assert_eq!(
            tokens
                .verify(&tokens.access("s1", Role::View, past).0, TokenKind::Access)
                .unwrap_err(),
            TokenError::Expired
        );
        let other_key = Tokens::new(
            b"another key, another server......",
            time::Duration::minutes(15),
        );
        assert_eq!(
            other_key.verify(&t, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            tokens.verify("not.a.token", TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
        let mut tampered = t.clone();
        tampered.pop();
        assert_eq!(
            tokens.verify(&tampered, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn a_viewer_link_travels_in_both_tokens_and_old_tokens_have_none() {
        let tokens = Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            time::Duration::minutes(15),
        );
        let end = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let (a, _) = tokens.access_for("s1", Role::View, Some("l1"), end);
        let claims = tokens.verify(&a, TokenKind::Access).unwrap();
        assert_eq!(
            (claims.role, claims.lnk.as_deref()),
            (Role::View, Some("l1"))
        );
        let r = tokens.refresh_for("s1", Role::View, Some("l1"), end);
        assert_eq!(
            tokens
                .verify(&r, TokenKind::Refresh)
                .unwrap()
                .lnk
                .as_deref(),
            Some("l1")
        );
        let (plain, _) = tokens.access("s1", Role::Interactive, end);
        assert_eq!(tokens.verify(&plain, TokenKind::Access).unwrap().lnk, None);
    }

    #[test]
    fn a_claim_credential_is_its_own_kind_and_nothing_else_verifies_as_one() {
        let tokens = Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            time::Duration::minutes(15),
        );
        let end = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let claim = tokens.claim("s1", end);
        let claims = tokens.verify(&claim, TokenKind::Claim).unwrap();
        assert_eq!(
            (claims.sid.as_str(), claims.role, claims.lnk),
            ("s1", Role::Interactive, None)
        );
        assert_eq!(claims.aud, "livesession-claim");
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            assert_eq!(
                tokens.verify(&claim, kind).unwrap_err(),
                TokenError::Invalid
            );
            assert!(tokens.verify_ignoring_expiry(&claim, kind).is_err());
        }
        let others = [
            tokens.refresh("s1", Role::Interactive, end),
            tokens.refresh_for("s1", Role::View, Some("l1"), end),
            tokens.access("s1", Role::Interactive, end).0,
        ];
        for other in &others {
            assert!(
                tokens
                    .verify_ignoring_expiry(other, TokenKind::Claim)
                    .is_err()
            );
            assert!(tokens.signed_here(other));
        }
        assert!(tokens.signed_here(&claim));
        assert!(!tokens.signed_here("test-admin-token"));
        let other_key = Tokens::new(
            b"another key, another server......",
            time::Duration::minutes(15),
        );
        assert!(!other_key.signed_here(&claim));
    }

    #[test]
    fn tokens_are_found_in_header_query_and_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(find_access_token(&h, None, "s1"), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=b; ls_s1=fromcookie; ls_s2=other"),
        );
        assert_eq!(
            find_access_token(&h, None, "s1"),
            Some(("fromcookie".into(), TokenSource::Cookie))
        );
        assert_eq!(find_access_token(&h, None, "s3"), None);
        assert_eq!(
            find_access_token(&h, Some("q"), "s1"),
            Some(("q".into(), TokenSource::Query))
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer hdr"));
        assert_eq!(
            find_access_token(&h, Some("q"), "s1"),
            Some(("hdr".into(), TokenSource::Header))
        );
    }

    #[test]
    fn same_site_requests_are_told_by_fetch_metadata_then_origin() {
        let ours = |o: &str, _: Option<&str>| o == "https://ours.example";
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            same_site_request(&h, ours)
        };
        assert!(check(&[]), "not a browser: curl, Stripe");
        assert!(check(&[("sec-fetch-site", "same-origin")]));
        assert!(check(&[("sec-fetch-site", "none")]));
        assert!(check(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "null")
        ]));
        assert!(check(&[("origin", "https://ours.example")]));
        assert!(check(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://ours.example")
        ]));
        assert!(!check(&[("sec-fetch-site", "cross-site")]));
        assert!(!check(&[("sec-fetch-site", "same-site")]));
        assert!(!check(&[("origin", "https://evil.example")]));
        assert!(!check(&[("origin", "null")]));
        assert!(!check(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example")
        ]));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
