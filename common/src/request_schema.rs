//! Request validation of a route: a JSON Schema for the body and one for
//! the query string, per method, and what becomes of fields the schema does
//! not name.
//!
//! Schemas are compiled here with the options the data plane uses, so a
//! config the control plane accepts is one every data plane can compile.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Body limit of a validated route that sets no `max_body_bytes`: a
/// validated body is held in memory whole, so the general 50 MiB default
/// would let each request pin that much.
pub const DEFAULT_VALIDATED_BODY_LIMIT: u64 = 1024 * 1024;

/// A route's validation policy: method (upper case) -> what is checked.
pub type ValidationConfig = BTreeMap<String, RequestValidation>;

/// What is checked on requests of one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestValidation {
    /// JSON Schema the JSON body must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// JSON Schema (an object schema) for the query parameters; values are
    /// strings, converted to the number, integer or boolean the property's
    /// `type` asks for before validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Value>,
    /// Fields not named in the schema's `properties`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
}

/// What becomes of fields (body properties, at any depth, or query
/// parameters) that the schema's `properties` do not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Removed before forwarding (the seed's `stripUnknown: true`).
    #[default]
    Strip,
    /// The request is refused with 422 naming them.
    Reject,
    /// Forwarded as sent.
    Allow,
}

/// Compiles `schema` as the data plane does: the draft its `$schema` names
/// (2020-12 when absent), formats asserted (`email`, `uuid`, `date-time`,
/// ...), linear-time regular expressions for `pattern`, and no reference
/// fetched from outside the document. The error says what is wrong and
/// where in the schema.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .offline()
        .build(schema)
        .map_err(|e| {
            let at = e.instance_path().as_str();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{e} (at {at})")
            }
        })
}

/// Methods whose requests carry no body to validate.
const BODILESS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "TRACE"];

impl RequestValidation {
    /// Checks the policy of `method` at `at`.
    pub fn validate(&self, method: &str, at: &str, errors: &mut Vec<String>) {
        if self.body.is_none() && self.query.is_none() {
            errors.push(format!("{at}: needs a body or query schema"));
        }
        if let Some(body) = &self.body {
            if BODILESS.contains(&method) {
                errors.push(format!(
                    "{at}.body: {method} requests carry no body to validate"
                ));
            } else if let Err(e) = compile(body) {
                errors.push(format!("{at}.body: invalid JSON Schema: {e}"));
            }
        }
        if let Some(query) = &self.query {
            if let Err(e) = check_query_schema(query) {
                errors.push(format!("{at}.query: {e}"));
            } else if let Err(e) = compile(query) {
                errors.push(format!("{at}.query: invalid JSON Schema: {e}"));
            }
        }
    }
}

/// A query schema describes an object of parameters: its root is an object
/// schema whose `type`, if any, is `object`, and whose `properties` is an
/// object.
fn check_query_schema(schema: &Value) -> Result<(), String> {
    let Some(root) = schema.as_object() else {
        return Err("must be an object schema".into());
    };
    match root.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(_) => return Err("type must be \"object\" (query parameters are named)".into()),
    }
    match root.get("properties") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err("properties must be an object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_schema_compiles_with_formats_asserted() {
        let v = compile(&json!({"type": "string", "format": "email"})).unwrap();
        assert!(v.is_valid(&json!("a@example.com")));
        assert!(!v.is_valid(&json!("not an email")));
    }

    #[test]
    fn an_invalid_schema_is_refused_with_where() {
        let e =
            compile(&json!({"type": "object", "properties": {"price": {"type": 5}}})).unwrap_err();
        assert!(e.contains("/properties/price/type"), "{e}");
        let e = compile(&json!({"minimum": "zero"})).unwrap_err();
        assert!(e.contains("/minimum"), "{e}");
    }

    #[test]
    fn external_references_are_not_fetched() {
        assert!(compile(&json!({"$ref": "https://example.com/schema.json"})).is_err());
        assert!(compile(&json!({"$ref": "file:///etc/passwd"})).is_err());
    }

    #[test]
    fn backtracking_patterns_are_refused() {
        // Lookarounds need a backtracking engine; patterns run in linear time.
        let e = compile(&json!({"type": "string", "pattern": "^(?=a)a$"})).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn policy_rules() {
        let mut errors = Vec::new();
        let empty = RequestValidation {
            body: None,
            query: None,
            unknown_fields: UnknownFields::Strip,
        };
        empty.validate("POST", "v.POST", &mut errors);
        assert_eq!(errors, ["v.POST: needs a body or query schema"]);

        let mut errors = Vec::new();
        let get_body = RequestValidation {
            body: Some(json!({"type": "object"})),
            query: Some(json!({"type": "array"})),
            unknown_fields: UnknownFields::Strip,
        };
        get_body.validate("GET", "v.GET", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("v.GET.body: GET requests carry no body"));
        assert!(errors[1].starts_with("v.GET.query: type must be \"object\""));
    }

    #[test]
    fn unknown_fields_parse_in_lower_case() {
        let v: RequestValidation =
            serde_json::from_value(json!({"body": {}, "unknown_fields": "reject"})).unwrap();
        assert_eq!(v.unknown_fields, UnknownFields::Reject);
        assert!(serde_json::from_value::<RequestValidation>(
            json!({"body": {}, "unknown_fields": "drop"})
        )
        .is_err());
    }
}
