//! The fields a JSON Schema names, as a tree, to find or strip the fields
//! of a document that it does not name.
//!
//! An object's known fields are its schema's `properties` (with those of
//! its `allOf`/`anyOf`/`oneOf` branches); array elements follow `items`. An
//! object schema without `properties`, or one whose `additionalProperties`
//! or `patternProperties` admit more, is open: nothing in it is unknown.
//! `$ref` is not followed, so a referenced sub-schema is open too.

use serde_json::{Map, Value};
use std::collections::HashMap;

/// The fields one (sub-)schema names.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    /// Named properties; `None`: the schema does not constrain names.
    properties: Option<HashMap<String, Fields>>,
    /// Whether properties beyond `properties` are part of the schema.
    open: bool,
    /// Fields of array elements.
    items: Option<Box<Fields>>,
}

/// Deepest sub-schema followed; below it everything is open.
const MAX_DEPTH: usize = 64;

impl Fields {
    /// The fields `schema` names.
    pub fn of(schema: &Value) -> Self {
        Self::at_depth(schema, 0)
    }

    fn at_depth(schema: &Value, depth: usize) -> Self {
        let Some(schema) = schema.as_object() else {
            return Self::default();
        };
        if depth > MAX_DEPTH || schema.contains_key("$ref") {
            return Self::default();
        }
        let mut fields = Self {
            properties: schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(name, sub)| (name.clone(), Self::at_depth(sub, depth + 1)))
                        .collect()
                }),
            open: schema.contains_key("patternProperties")
                || schema
                    .get("additionalProperties")
                    .is_some_and(|a| a != &Value::Bool(false)),
            items: schema
                .get("items")
                .filter(|items| items.is_object())
                .map(|items| Box::new(Self::at_depth(items, depth + 1))),
        };
        for key in ["allOf", "anyOf", "oneOf"] {
            for branch in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                fields.merge(Self::at_depth(branch, depth + 1));
            }
        }
        fields
    }

    fn merge(&mut self, other: Fields) {
        self.open |= other.open;
        if let Some(theirs) = other.properties {
            let ours = self.properties.get_or_insert_with(HashMap::new);
            for (name, sub) in theirs {
                match ours.get_mut(&name) {
                    Some(existing) => existing.merge(sub),
                    None => {
                        ours.insert(name, sub);
                    }
                }
            }
        }
        match (&mut self.items, other.items) {
            (Some(ours), Some(theirs)) => ours.merge(*theirs),
            (None, Some(theirs)) => self.items = Some(theirs),
            _ => {}
        }
    }

    /// Whether names outside `properties` are unknown here.
    fn closed(&self) -> Option<&HashMap<String, Fields>> {
        self.properties.as_ref().filter(|_| !self.open)
    }

    /// Removes the fields of `value` the schema does not name; returns how
    /// many were removed.
    pub fn strip(&self, value: &mut Value) -> usize {
        match value {
            Value::Object(object) => {
                let mut removed = 0;
                if let Some(known) = self.closed() {
                    let before = object.len();
                    object.retain(|name, _| known.contains_key(name));
                    removed += before - object.len();
                }
                if let Some(known) = &self.properties {
                    for (name, sub) in object.iter_mut() {
                        if let Some(fields) = known.get(name) {
                            removed += fields.strip(sub);
                        }
                    }
                }
                removed
            }
            Value::Array(elements) => match &self.items {
                Some(items) => elements.iter_mut().map(|e| items.strip(e)).sum(),
                None => 0,
            },
            _ => 0,
        }
    }

    /// The paths (`a.b.0.c`) of the fields of `value` the schema does not
    /// name, at most `limit` of them.
    pub fn unknown(&self, value: &Value, limit: usize) -> Vec<String> {
        let mut found = Vec::new();
        self.collect(value, &mut Vec::new(), &mut found, limit);
        found
    }

    fn collect(
        &self,
        value: &Value,
        path: &mut Vec<String>,
        found: &mut Vec<String>,
        limit: usize,
    ) {
        match value {
            Value::Object(object) => self.collect_object(object, path, found, limit),
            Value::Array(elements) => {
                if let Some(items) = &self.items {
                    for (i, element) in elements.iter().enumerate() {
                        path.push(i.to_string());
                        items.collect(element, path, found, limit);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }

    fn collect_object(
        &self,
        object: &Map<String, Value>,
        path: &mut Vec<String>,
        found: &mut Vec<String>,
        limit: usize,
    ) {
        let Some(known) = &self.properties else {
            return;
        };
        for (name, sub) in object {
            if found.len() >= limit {
                return;
            }
            path.push(name.clone());
            match known.get(name) {
                Some(fields) => fields.collect(sub, path, found, limit),
                None if !self.open => found.push(path.join(".")),
                None => {}
            }
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "address": {"type": "object", "properties": {"city": {"type": "string"}}},
                "items": {"type": "array", "items": {"type": "object", "properties": {"qty": {}}}},
                "data": {"type": "object"},
                "meta": {"type": "object", "properties": {"a": {}}, "additionalProperties": true}
            }
        })
    }

    #[test]
    fn finds_unknown_fields_at_every_depth() {
        let fields = Fields::of(&schema());
        let doc = json!({
            "name": "x", "extra": 1,
            "address": {"city": "c", "zip": "z"},
            "items": [{"qty": 1}, {"qty": 2, "note": "n"}],
            "data": {"anything": true},
            "meta": {"b": 1}
        });
        let mut unknown = fields.unknown(&doc, 100);
        unknown.sort();
        assert_eq!(unknown, ["address.zip", "extra", "items.1.note"]);
        assert_eq!(fields.unknown(&doc, 1).len(), 1);
    }

    #[test]
    fn strips_unknown_fields_and_keeps_the_rest() {
        let fields = Fields::of(&schema());
        let mut doc = json!({
            "name": "x", "extra": 1,
            "address": {"city": "c", "zip": "z"},
            "items": [{"qty": 1, "note": "n"}],
            "data": {"anything": true},
            "meta": {"b": 1}
        });
        assert_eq!(fields.strip(&mut doc), 3);
        assert_eq!(
            doc,
            json!({
                "name": "x",
                "address": {"city": "c"},
                "items": [{"qty": 1}],
                "data": {"anything": true},
                "meta": {"b": 1}
            })
        );
        assert_eq!(fields.strip(&mut doc), 0);
    }

    #[test]
    fn branches_add_their_properties_and_refs_are_open() {
        let fields = Fields::of(&json!({
            "allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}],
            "properties": {"r": {"$ref": "#/$defs/x"}}
        }));
        let doc = json!({"a": 1, "b": 2, "c": 3, "r": {"free": 1}});
        assert_eq!(fields.unknown(&doc, 10), ["c"]);
        // A schema naming no properties constrains no names.
        assert!(Fields::of(&json!({"type": "object"}))
            .unknown(&json!({"x": 1}), 10)
            .is_empty());
    }
}
