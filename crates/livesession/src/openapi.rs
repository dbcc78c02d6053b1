//! The REST API's OpenAPI description, served at `GET /api/openapi.json`.
//!
//! It is generated, not written: each handler carries its `#[utoipa::path]` (method,
//! path, parameters, body and answers, with the request and response types themselves
//! deriving their schemas), and router.rs registers those handlers with
//! `utoipa_axum::routes!`, which takes the route's path from that same annotation. So an
//! operation is in the spec exactly when it is in the router, at the path it is served
//! on. The WebSockets (`…/vnc`, `…/control` GET, `…/cdp…`) are not REST operations and
//! are described in docs/websocket.md and docs/agents.md instead.
//!
//! Every operation also lists the errors the layers in front of every handler may answer
//! (router.rs: bad query strings, body and header limits, rate limits, cross-site
//! refusals, a store that is unavailable), all with the one error body, [`ErrorBody`].

use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, ResponseBuilder};

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "livesession",
        description = "Live browser sessions an agent works in while a person watches. \
            The contract in words: docs/api.md; WebSockets: docs/websocket.md; agents: docs/agents.md.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "sessions", description = "Sessions (admin token)"),
        (name = "tokens", description = "Access and refresh tokens"),
        (name = "links", description = "Viewer links"),
        (name = "logins", description = "Login capture into a profile"),
        (name = "profiles", description = "Saved browser profiles (admin token)"),
        (name = "checkout", description = "Paid sessions (Stripe Checkout)"),
        (name = "control", description = "Who drives the browser"),
        (name = "files", description = "A session's files"),
        (name = "recordings", description = "Screen recordings"),
        (name = "tasks", description = "Tasks for agents"),
        (name = "workers", description = "External task workers"),
        (name = "server", description = "The server itself"),
    ),
)]
pub struct ApiDoc;

/// The errors any operation may answer from the layers in front of its handler, beyond
/// those its annotation lists.
const LAYER_ERRORS: [(&str, &str); 6] = [
    ("400", "The request is malformed (its query string, body or JSON)"),
    ("403", "Refused: a cross-site request, or a role that may not do this"),
    ("413", "The body is larger than this route takes"),
    ("429", "Rate limited (see Retry-After), or too many connections"),
    ("431", "The request's headers are too large"),
    ("503", "The store is busy or unavailable, or the disk is full; retry later"),
];

/// The finished spec: the router's operations (`paths`) in [`ApiDoc`], the bearer scheme,
/// and the layers' errors on every operation.
pub fn spec(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut spec = ApiDoc::openapi().merge_from(paths);
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token, a session's access or refresh token, or a worker token, as each \
                     operation says. Browsers use the session's cookies instead (docs/api.md).",
                ))
                .build(),
        ),
    );
    for item in spec.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_layer_errors(operation);
        }
    }
    spec
}

fn add_layer_errors(operation: &mut Operation) {
    for (status, description) in LAYER_ERRORS {
        if !operation.responses.responses.contains_key(status) {
            operation.responses.responses.insert(status.to_owned(), error_response(description).into());
        }
    }
}

/// An error answer: the one error body.
pub fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build()
}
