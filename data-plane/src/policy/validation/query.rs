//! Query parameters as the JSON object a query schema validates.
//!
//! Query values are strings. A parameter whose property schema's `type` is
//! (or includes) `integer`, `number` or `boolean` is converted to that type
//! when its text is one (`"20"` -> `20`, `"true"` -> `true`); otherwise it
//! stays a string and the schema reports the wrong type. A parameter whose
//! type is `array` takes every occurrence, each converted by its `items`
//! type; any other parameter given more than once becomes an array, which
//! its schema then refuses.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use url::form_urlencoded;

/// What a parameter's text is converted to.
#[derive(Debug, Clone, Copy, Default)]
struct Conversion {
    integer: bool,
    number: bool,
    boolean: bool,
}

impl Conversion {
    fn of(schema: &Value) -> Self {
        let mut conversion = Self::default();
        for t in types(schema) {
            match t {
                "integer" => conversion.integer = true,
                "number" => conversion.number = true,
                "boolean" => conversion.boolean = true,
                _ => {}
            }
        }
        conversion
    }

    fn apply(self, text: &str) -> Value {
        if self.integer {
            if let Ok(n) = text.parse::<i64>() {
                return Value::Number(n.into());
            }
        }
        if self.number {
            if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
                return Value::Number(n);
            }
        }
        if self.boolean {
            match text {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            }
        }
        Value::String(text.to_string())
    }
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// How one named parameter is read.
#[derive(Debug, Clone, Copy)]
struct Param {
    /// Every occurrence goes into an array.
    array: bool,
    /// Conversion of each value.
    conversion: Conversion,
}

/// The parameters a query schema names, with their conversions.
#[derive(Debug, Default)]
pub struct QueryParams {
    params: HashMap<String, Param>,
}

/// A query read against a [`QueryParams`].
#[derive(Debug)]
pub struct ReadQuery {
    /// The object to validate.
    pub object: Value,
    /// Names of the parameters the schema does not name, in order, once each.
    pub unknown: Vec<String>,
}

impl QueryParams {
    /// The parameters `schema`'s `properties` name.
    pub fn of(schema: &Value) -> Self {
        let params = schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, sub)| {
                let array = types(sub).contains(&"array");
                let conversion = if array {
                    sub.get("items").map(Conversion::of).unwrap_or_default()
                } else {
                    Conversion::of(sub)
                };
                (name.clone(), Param { array, conversion })
            })
            .collect();
        Self { params }
    }

    /// Reads `query` (absent: empty). Unknown parameters are in the object
    /// only when `keep_unknown`, as strings.
    pub fn read(&self, query: Option<&str>, keep_unknown: bool) -> ReadQuery {
        let mut object = Map::new();
        let mut unknown: Vec<String> = Vec::new();
        for (name, text) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let param = self.params.get(name.as_ref());
            if param.is_none() {
                if !unknown.iter().any(|u| u == name.as_ref()) {
                    unknown.push(name.to_string());
                }
                if !keep_unknown {
                    continue;
                }
            }
            let value = param.map_or(Value::String(text.to_string()), |p| {
                p.conversion.apply(&text)
            });
            let as_array = param.is_some_and(|p| p.array);
            match object.get_mut(name.as_ref()) {
                Some(Value::Array(values)) if as_array => values.push(value),
                Some(existing) => {
                    // Repeated: every occurrence is kept, so that the schema
                    // sees the request as sent.
                    let first = existing.take();
                    *existing = match first {
                        Value::Array(mut values) => {
                            values.push(value);
                            Value::Array(values)
                        }
                        first => Value::Array(vec![first, value]),
                    };
                }
                None if as_array => {
                    object.insert(name.into_owned(), Value::Array(vec![value]));
                }
                None => {
                    object.insert(name.into_owned(), value);
                }
            }
        }
        ReadQuery {
            object: Value::Object(object),
            unknown,
        }
    }

    /// `query` without the parameters the schema does not name (the others
    /// keep their encoding); `None` when nothing is removed.
    pub fn strip(&self, query: &str) -> Option<String> {
        let mut removed = false;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                if pair.is_empty() {
                    return false;
                }
                let known = form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .is_some_and(|(name, _)| self.params.contains_key(name.as_ref()));
                removed |= !known;
                known
            })
            .collect();
        removed.then(|| kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> QueryParams {
        QueryParams::of(&json!({
            "type": "object",
            "properties": {
                "page": {"type": "integer"},
                "price": {"type": "number"},
                "active": {"type": "boolean"},
                "q": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "integer"}}
            }
        }))
    }

    #[test]
    fn converts_by_property_type() {
        let read = params().read(
            Some("page=2&price=9.5&active=true&q=10&tags=1&tags=x&other=y"),
            false,
        );
        assert_eq!(
            read.object,
            json!({"page": 2, "price": 9.5, "active": true, "q": "10", "tags": [1, "x"]})
        );
        assert_eq!(read.unknown, ["other"]);
    }

    #[test]
    fn text_that_does_not_convert_stays_a_string() {
        let read = params().read(Some("page=two&active=yes&q=a%20b"), false);
        assert_eq!(
            read.object,
            json!({"page": "two", "active": "yes", "q": "a b"})
        );
    }

    #[test]
    fn repeated_scalars_become_arrays_and_unknown_are_kept_on_request() {
        let read = params().read(Some("page=1&page=2&x=1&x=2"), true);
        assert_eq!(read.object, json!({"page": [1, 2], "x": ["1", "2"]}));
        assert_eq!(read.unknown, ["x"]);
        assert_eq!(params().read(None, false).object, json!({}));
    }

    #[test]
    fn strip_keeps_known_parameters_as_encoded() {
        let p = params();
        assert_eq!(
            p.strip("q=a%20b&x=1&page=2&y").as_deref(),
            Some("q=a%20b&page=2")
        );
        assert_eq!(p.strip("q=a&page=2"), None);
        assert_eq!(p.strip("x=1").as_deref(), Some(""));
    }
}
