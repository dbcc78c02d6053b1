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
        (name = "nodes", description = "The servers sharing this store (admin token)"),
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
/// the layers' errors on every operation, and the links between operations.
pub fn spec(paths: utoipa::openapi::OpenApi) -> serde_json::Value {
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
    let mut spec = serde_json::to_value(&spec).expect("a spec serializes");
    add_links(&mut spec);
    spec
}

/// Where an answer names what other operations take (OpenAPI links): from a created
/// session to its operations, from a created task or link to theirs. A client, and
/// schemathesis's stateful phase, can follow them. (source path, method, status; the
/// operations under a path prefix whose path parameters are all given; the parameters.)
const LINKS: [(&str, &str, &str, &str, &[(&str, &str)]); 4] = [
    ("/api/sessions", "post", "201", "/api/sessions/{id}", &[("id", "$response.body#/id")]),
    (
        "/api/sessions/{id}/tasks",
        "post",
        "201",
        "/api/sessions/{id}/tasks/{task_id}",
        &[("id", "$response.body#/session_id"), ("task_id", "$response.body#/id")],
    ),
    ("/api/sessions/{id}/tasks", "post", "201", "/api/tasks/{id}", &[("id", "$response.body#/id")]),
    (
        "/api/sessions/{id}/links",
        "post",
        "201",
        "/api/sessions/{id}/links/{link_id}",
        &[("id", "$request.path.id"), ("link_id", "$response.body#/id")],
    ),
];

/// (Written into the JSON: utoipa 5.5 serializes a link's `operationId` as `operation_id`.)
fn add_links(spec: &mut serde_json::Value) {
    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];
    for (from, method, status, under, parameters) in LINKS {
        let mut links = serde_json::Map::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let path_parameters = path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'));
            if !path.starts_with(under)
                || !path_parameters.into_iter().all(|p| parameters.iter().any(|(name, _)| *name == p))
            {
                continue;
            }
            for operation in METHODS.iter().filter_map(|m| item.get(*m)) {
                let Some(id) = operation["operationId"].as_str() else { continue };
                let given: serde_json::Map<String, serde_json::Value> = parameters
                    .iter()
                    .filter(|(name, _)| path.contains(&format!("{{{name}}}")))
                    .map(|(name, expression)| (name.to_string(), (*expression).into()))
                    .collect();
                links.insert(id.to_owned(), serde_json::json!({ "operationId": id, "parameters": given }));
            }
        }
        if let Some(response) = spec["paths"][from][method]["responses"].get_mut(status) {
            response["links"] = links.into();
        }
    }
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
