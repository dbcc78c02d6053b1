//! Defences every request passes through, as middleware (see `router.rs` for the order):
//! the response security headers, the cross-site request (CSRF) check, and the limit on
//! the size of a request's headers.

use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::same_site_request;
use crate::error::ApiError;
use crate::proxy::ClientInfo;

/// Who may show our pages in a frame: the CSP `frame-ancestors` sources.
/// `'none'` (the default, also for an empty value), `'self'`, or origins such as
/// `https://portal.example.com` (a `*.` wildcard for subdomains and a port are allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAncestors(Vec<String>);

impl FrameAncestors {
    pub fn is_none(&self) -> bool {
        self.0 == ["'none'"]
    }

    /// The sources, space-separated, as CSP writes them.
    pub fn sources(&self) -> String {
        self.0.join(" ")
    }
}

impl std::fmt::Display for FrameAncestors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sources())
    }
}

impl FromStr for FrameAncestors {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut sources = Vec::new();
        for source in s.split([',', ' ', '\t']).filter(|x| !x.is_empty()) {
            let normalized = match source.to_ascii_lowercase().as_str() {
                "'none'" | "none" => "'none'".to_owned(),
                "'self'" | "self" => "'self'".to_owned(),
                "*" => {
                    return Err(
                        "frame-ancestors '*' would let any site frame the viewer (clickjacking); \
                         list the origins that may embed it"
                            .into(),
                    );
                }
                lower if lower.ends_with(':') && !lower.contains('/') => {
                    return Err(format!(
                        "frame-ancestors {source:?} would let every {lower} site frame the viewer; \
                         list the origins that may embed it"
                    ));
                }
                _ => host_source(source)?,
            };
            if !sources.contains(&normalized) {
                sources.push(normalized);
            }
        }
        if sources.is_empty() {
            // An empty variable is an unset one: the safe default.
            sources.push("'none'".to_owned());
        }
        if sources.len() > 1 && sources.iter().any(|s| s == "'none'") {
            return Err("frame-ancestors 'none' cannot be combined with other sources".into());
        }
        Ok(Self(sources))
    }
}

/// An origin as CSP host-sources write it: `http(s)://host[:port]`, where host may start
/// with `*.`; a trailing `/` is dropped, any other path is refused.
fn host_source(source: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "frame-ancestors source {source:?} {why}; expected 'none', 'self' or an origin such \
             as https://portal.example.com"
        ))
    };
    let Some((scheme, rest)) = source.split_once("://") else {
        return bad("is not an origin");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return bad("must start with https:// or http://");
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '\'', '"', ';', '@']) {
        return bad("must be an origin without a path");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("has an unclosed [");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("has an invalid IPv6 address");
        }
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if let Some(port) = port
        && port != "*"
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return bad("has an invalid port");
    }
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid_name = host.starts_with('[')
        || (!name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !valid_name {
        return bad("has an invalid host");
    }
    Ok(format!(
        "{scheme}://{}{}",
        host.to_ascii_lowercase(),
        port.map(|p| format!(":{p}")).unwrap_or_default()
    ))
}

/// The security headers every response carries, built once at start-up.
pub struct PolicyHeaders {
    csp: HeaderValue,
    deny_framing: bool,
}

/// `Strict-Transport-Security` for responses that went out over TLS: one year. Not
/// `includeSubDomains`: other services under the same domain are not ours to pin.
const HSTS: &str = "max-age=31536000";
/// Features no page of ours uses, turned off for our pages and anything they embed.
const PERMISSIONS_POLICY: &str =
    "camera=(), microphone=(), geolocation=(), payment=(), usb=(), display-capture=()";

impl PolicyHeaders {
    pub fn new(frame_ancestors: &FrameAncestors) -> Self {
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {}",
            frame_ancestors.sources()
        );
        Self {
            // Validated sources are plain ASCII without control characters.
            csp: HeaderValue::from_str(&csp).expect("validated CSP"),
            deny_framing: frame_ancestors.is_none(),
        }
    }
}

/// Adds the security headers to every response. Same-origin everything: scripts, styles,
/// WebSockets; framing only by the configured `frame-ancestors`.
pub async fn security_headers(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let https = request
        .extensions()
        .get::<ClientInfo>()
        .is_some_and(|c| c.https);
    let mut response = next.run(request).await;
    let policy = &app.policy_headers;
    let h = response.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, policy.csp.clone());
    if policy.deny_framing {
        // For browsers that predate CSP's frame-ancestors.
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` Chromium sends `Origin: null`
    // on our own form posts, which the CSRF check must then refuse.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Our pages share no window with another origin's (a popup cannot script back).
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static(PERMISSIONS_POLICY),
    );
    if https {
        h.insert(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    response
}

/// Refuses cross-site state-changing browser requests (CSRF), for every route at once.
///
/// Safe methods pass (they change nothing; WebSocket upgrades check their Origin
/// themselves, closing with 4004). So do requests with an `Authorization` header: a page
/// of another site cannot send one without a CORS preflight, which this server never
/// grants, so they are not a browser's ambient credentials. Everything else — the
/// requests a cookie can authorise, and unauthenticated ones such as the start form —
/// must look same-origin (see [`same_site_request`]): `Sec-Fetch-Site: same-origin` or
/// `none`, or an allowed `Origin`; a request that says neither (curl, Stripe) is not a
/// browser's and passes.
pub async fn csrf(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if safe
        || request.headers().contains_key(AUTHORIZATION)
        || same_site_request(request.headers(), |o, h| app.origin_allowed(o, h))
    {
        return next.run(request).await;
    }
    tracing::warn!(method = %request.method(), path = %request.uri().path(), "cross-site request refused");
    ApiError::cross_site().into_response()
}

/// The size of a request's head as this check counts it: the path and query, and each
/// header's name and value plus four bytes (`: ` and CRLF).
fn head_size(request: &Request) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    target
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// Refuses requests whose target and headers together exceed `--max-header-bytes` with
/// `431` and a JSON error (hyper's own limit is far larger and answers without a body).
pub async fn header_limit(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let max = app.config.max_header_bytes;
    if head_size(&request) > max {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's URL and headers are over {max} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, String> {
        s.parse::<FrameAncestors>().map(|f| f.sources())
    }

    #[test]
    fn frame_ancestors_accept_keywords_and_origins() {
        assert_eq!(parse("'none'").unwrap(), "'none'");
        assert_eq!(parse("none").unwrap(), "'none'");
        assert_eq!(parse("").unwrap(), "'none'", "empty is the default");
        assert!(
            parse("'none'")
                .unwrap()
                .parse::<FrameAncestors>()
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse("self, https://Portal.Example.com/ https://*.example.org:8443").unwrap(),
            "'self' https://portal.example.com https://*.example.org:8443"
        );
        assert_eq!(
            parse("http://127.0.0.1:3000,http://[::1]:3000").unwrap(),
            "http://127.0.0.1:3000 http://[::1]:3000"
        );
        assert!(
            !parse("'self'")
                .unwrap()
                .parse::<FrameAncestors>()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn frame_ancestors_refuse_what_would_frame_anything_or_break_the_header() {
        for bad in [
            "*",
            "https:",
            "'none' 'self'",
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://example.com;script-src *",
            "https://exa mple.com",
            "https://example.com:99999",
            "https://ex_ample.com",
            "'unsafe-inline'",
            "https://[zz]",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("frame-ancestors"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_csp_carries_the_configured_frame_ancestors() {
        let p = PolicyHeaders::new(&"https://portal.example.com".parse().unwrap());
        assert!(
            p.csp
                .to_str()
                .unwrap()
                .ends_with("frame-ancestors https://portal.example.com")
        );
        assert!(!p.deny_framing);
        assert!(PolicyHeaders::new(&"'none'".parse().unwrap()).deny_framing);
    }
}
