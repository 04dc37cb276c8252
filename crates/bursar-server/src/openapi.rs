//! The OpenAPI document of `/openapi.json`: generated from the handlers'
//! annotations, completed with the rules every route shares (validated ids
//! and keys, the auth and overload statuses), and served as OpenAPI 3.0.
//!
//! Why 3.0 and not 3.1: bursar accepts an amount only when it is written as
//! an integer literal (`1000`, never `1000.0` or `1e3`). In the JSON Schema
//! of OpenAPI 3.1, `1000.0` *is* an integer, so a 3.1 document would promise
//! what the server refuses; in OpenAPI 3.0, `integer` means a number without
//! a fraction or an exponent — exactly the rule the server enforces.

use crate::api::json_response;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "bursar", description = "Records what students owe and pay for course enrollments."),
    paths(crate::api::enroll, crate::api::get_enrollment, crate::api::list_enrollments,
        crate::api::payment, crate::api::pay_remaining, crate::api::credit, crate::api::refund,
        crate::api::charge, crate::api::complete, crate::api::cancel, crate::holds::hold,
        crate::holds::capture, crate::holds::void, crate::holds::list_holds, crate::api::ledger,
        crate::batch::batch, crate::api::audit, crate::api::healthz, crate::api::readyz,
        crate::api::metrics, openapi_json),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document `/openapi.json` serves, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document = ApiDoc::openapi();
        document.merge(crate::tokens::TokensDoc::openapi());
        document.merge(crate::events::EventsDoc::openapi());
        document.merge(crate::digest::DigestDoc::openapi());
        document.merge(crate::webhooks::WebhooksDoc::openapi());
        document.merge(crate::intake::IntakeDoc::openapi());
        document.merge(crate::finance::FinanceDoc::openapi());
        document.merge(crate::export::ExportDoc::openapi());
        let mut document = serde_json::to_value(document).expect("the OpenAPI document serializes");
        complete_operations(&mut document);
        close_request_objects(&mut document);
        downgrade_to_openapi_3_0(&mut document);
        document
    })
}

/// This document (OpenAPI 3.0).
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.0")),
    security(("bearer" = [])))]
pub async fn openapi_json() -> Response {
    json_response(StatusCode::OK, document())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// The rules every route shares, stated once here rather than on each
/// handler: path ids and `Idempotency-Key` are validated types, a route
/// behind a token answers 401 and 403, and any route but `/healthz` may
/// answer 503 (a timeout, a full write queue, storage unavailable).
fn complete_operations(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut().filter_map(Value::as_object_mut) {
            for parameter in operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let schema = match parameter["name"].as_str() {
                    Some("user_id") => json!({"$ref": "#/components/schemas/UserId"}),
                    Some("course_id") => json!({"$ref": "#/components/schemas/CourseId"}),
                    Some("Idempotency-Key") => {
                        json!({"$ref": "#/components/schemas/IdempotencyKey"})
                    }
                    Some("hold_seq") => {
                        json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX})
                    }
                    // Comma-separated event type names; an empty item names
                    // none (and an empty value is no filter).
                    Some("type") if path == "/v1/events" => {
                        let names = bursar_core::EventType::ALL
                            .iter()
                            .map(|event_type| event_type.as_str().replace('.', "\\."))
                            .collect::<Vec<_>>()
                            .join("|");
                        json!({"type": "string", "pattern": format!("^({names})?(,({names})?)*$")})
                    }
                    _ => continue,
                };
                parameter["schema"] = schema;
            }
            let secured = operation.contains_key("security");
            let has_body = operation.contains_key("requestBody");
            let responses = operation
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("responses is an object");
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status)
                    .or_insert_with(|| error_response(description));
            };
            if path == "/healthz" {
                continue;
            }
            add(
                "400",
                "INVALID_REQUEST: a malformed path, query, header or body",
            );
            if secured {
                add(
                    "401",
                    "UNAUTHENTICATED: no token, or one that is unknown, revoked or expired",
                );
                add("403", "FORBIDDEN: the token's role may not do this");
            }
            if has_body {
                add(
                    "408",
                    "REQUEST_TIMEOUT: the body stopped arriving; nothing was done",
                );
                add("413", "PAYLOAD_TOO_LARGE: the body is over its limit");
            }
            add(
                "503",
                "OVERLOADED, TIMEOUT, UNAVAILABLE or STORAGE_UNAVAILABLE: retry after `Retry-After` seconds with the same Idempotency-Key",
            );
        }
    }
}

/// What utoipa cannot say from the types: error codes are the closed list of
/// `ERROR_CODES`; the access policy's variants refuse unknown fields (it is
/// read through a struct of its own); a hold's two ways of naming its amount
/// exclude each other.
fn close_request_objects(document: &mut Value) {
    let codes: Vec<&str> = crate::error::ERROR_CODES
        .iter()
        .map(|(code, _, _)| *code)
        .collect();
    document["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"] = json!(codes);
    let schemas = &mut document["components"]["schemas"];
    for variant in schemas["AccessPolicy"]["oneOf"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        variant["additionalProperties"] = json!(false);
    }
    // A hold takes exactly one of `amount` and `"remaining": true`, neither
    // of them null.
    let hold = &mut schemas["HoldBody"];
    hold["properties"]["amount"] = json!({"$ref": "#/components/schemas/Amount"});
    hold["properties"]["remaining"] = json!({"type": "boolean", "enum": [true]});
    hold["oneOf"] = json!([{"required": ["amount"]}, {"required": ["remaining"]}]);
}

/// Rewrites utoipa's OpenAPI 3.1 output as OpenAPI 3.0.3 (see the module
/// documentation for why): nullable types, `$ref` with siblings, `const`.
fn downgrade_to_openapi_3_0(document: &mut Value) {
    document["openapi"] = json!("3.0.3");
    downgrade_schemas(document);
}

fn downgrade_schemas(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(downgrade_schemas),
        Value::Object(object) => {
            object.values_mut().for_each(downgrade_schemas);
            downgrade_schema(object);
        }
        _ => {}
    }
}

fn is_null_type(schema: &Value) -> bool {
    schema.get("type") == Some(&json!("null"))
}

fn downgrade_schema(object: &mut Map<String, Value>) {
    // `"type": ["string", "null"]` → `"type": "string", "nullable": true`.
    if let Some(Value::Array(types)) = object.get("type") {
        let nullable = types.iter().any(|kind| kind == "null");
        let others: Vec<Value> = types
            .iter()
            .filter(|kind| *kind != "null")
            .cloned()
            .collect();
        if others.len() == 1 {
            object.insert("type".into(), others[0].clone());
        } else {
            object.remove("type");
        }
        if nullable {
            object.insert("nullable".into(), json!(true));
        }
    }
    // `oneOf: [{"type": "null"}, X]` → X, nullable.
    for combinator in ["oneOf", "anyOf"] {
        let Some(Value::Array(branches)) = object.get(combinator) else {
            continue;
        };
        if !branches.iter().any(is_null_type) {
            continue;
        }
        let rest: Vec<Value> = branches
            .iter()
            .filter(|branch| !is_null_type(branch))
            .cloned()
            .collect();
        object.remove(combinator);
        object.insert("nullable".into(), json!(true));
        match <[Value; 1]>::try_from(rest) {
            Ok([Value::Object(only)]) => {
                for (key, value) in only {
                    object.entry(key).or_insert(value);
                }
            }
            Ok([other]) => {
                object.insert("allOf".into(), json!([other]));
            }
            Err(rest) => {
                object.insert(combinator.into(), Value::Array(rest));
            }
        }
    }
    // In 3.0 the siblings of a `$ref` are ignored: keep them by wrapping the
    // reference in `allOf`.
    if object.contains_key("$ref") && object.len() > 1 {
        let reference = object.remove("$ref").expect("checked");
        object.insert("allOf".into(), json!([{ "$ref": reference }]));
    }
    if let Some(constant) = object.remove("const") {
        object.insert("enum".into(), json!([constant]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
        found.push(value);
        match value {
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            Value::Object(object) => object.values().for_each(|item| walk(item, found)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_0() {
        let document = document();
        assert_eq!(document["openapi"], "3.0.3");
        let mut values = Vec::new();
        walk(document, &mut values);
        for value in values {
            let Some(object) = value.as_object() else {
                continue;
            };
            assert!(
                !matches!(object.get("type"), Some(Value::Array(_))),
                "a type list is 3.1 only: {value}"
            );
            assert!(!is_null_type(value), "type null is 3.1 only: {value}");
            assert!(
                !object.contains_key("$ref") || object.len() == 1,
                "a $ref with siblings: {value}"
            );
            assert!(!object.contains_key("const"), "const is 3.1 only");
        }
    }

    #[test]
    fn every_route_states_the_shared_rules() {
        let document = document();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                if path != "/healthz" {
                    assert!(responses.contains_key("503"), "{method} {path}");
                }
                // The intake is authenticated by its signature, not a token.
                let tokenless = ["/healthz", "/v1/intake/stripe"];
                assert_eq!(
                    responses.contains_key("401"),
                    !tokenless.contains(&path.as_str()),
                    "{method} {path}"
                );
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    // A token id is looked up as given (an unknown one is
                    // 404), so it is the one path parameter without a rule.
                    if parameter["in"] == "path" && parameter["name"] != "id" {
                        assert!(
                            parameter["schema"].get("$ref").is_some()
                                || parameter["schema"].get("pattern").is_some()
                                || parameter["schema"]["type"] == "integer",
                            "{method} {path}: {parameter}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nullable_references_keep_their_target() {
        let mut schema =
            json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Reference"}]});
        downgrade_schemas(&mut schema);
        assert_eq!(
            schema,
            json!({"nullable": true, "allOf": [{"$ref": "#/components/schemas/Reference"}]})
        );
        let mut schema = json!({"type": ["integer", "null"], "minimum": 0});
        downgrade_schemas(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "integer", "nullable": true, "minimum": 0})
        );
    }
}
