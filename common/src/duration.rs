//! Serde helpers for durations written as `250ms`, `5s`, `1m30s` (or a bare
//! number of milliseconds) in config files.

use serde::{de, Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Parses `250ms`, `5s`, `1m` or a bare integer (milliseconds).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Formats a duration the way [`parse`] reads it back (`1s`, `250ms`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Millis(u64),
    Text(String),
}

fn from_raw<E: de::Error>(raw: Raw) -> Result<Duration, E> {
    match raw {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(t) => parse(&t).map_err(E::custom),
    }
}

/// `#[serde(with = "gateway_common::duration")]` for `Duration` fields.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// See [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_raw(Raw::deserialize(d)?)
}

/// `#[serde(with = "gateway_common::duration::option")]` for `Option<Duration>`.
pub mod option {
    use super::*;

    /// Serializes `Some(d)` as a duration string and `None` as null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            Some(raw) => from_raw(raw).map(Some),
            None => Ok(None),
        }
    }
}

/// `#[serde(with = "gateway_common::duration::map")]` for maps of durations
/// (per-endpoint timeouts).
pub mod map {
    use super::*;
    use serde::ser::SerializeMap;
    use std::collections::BTreeMap;

    /// Serializes every value as a duration string.
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &format(*v))?;
        }
        map.end()
    }

    /// Reads a map of durations.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, Raw>::deserialize(d)?
            .into_iter()
            .map(|(k, raw)| from_raw(raw).map(|v| (k, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        for (text, ms) in [("250ms", 250), ("5s", 5000), ("1m", 60_000), ("1500", 1500)] {
            let d = parse(text).unwrap();
            assert_eq!(d, Duration::from_millis(ms));
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("five seconds").is_err());
        assert!(parse("-1s").is_err());
    }
}
