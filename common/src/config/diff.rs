//! The difference between two configs by service and route name, as an
//! apply reports it (`gwctl apply` prints it).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// One difference between two configs, for `gwctl apply` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `service` or `route`.
    pub kind: &'static str,
    /// Name of the service or route.
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub action: &'static str,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.name, self.action)
    }
}

/// The changes between two sets of named items of one `kind`, additions
/// and changes first (by name), then removals.
pub(super) fn diff_named<'a, T: PartialEq + 'a>(
    kind: &'static str,
    old: impl Iterator<Item = (&'a str, &'a T)>,
    new: impl Iterator<Item = (&'a str, &'a T)>,
) -> Vec<Change> {
    let old: BTreeMap<_, _> = old.collect();
    let new: BTreeMap<_, _> = new.collect();
    let mut changes = Vec::new();
    for (name, item) in &new {
        let action = match old.get(name) {
            None => "added",
            Some(before) if before != item => "changed",
            Some(_) => continue,
        };
        changes.push(Change {
            kind,
            name: name.to_string(),
            action,
        });
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        changes.push(Change {
            kind,
            name: name.to_string(),
            action: "removed",
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::EXAMPLE;
    use crate::config::{GatewayConfig, ServiceConfig};
    use std::time::Duration;

    #[test]
    fn diff_names_what_changed() {
        let old = GatewayConfig::load(EXAMPLE.as_bytes()).unwrap();
        let mut new = old.clone();
        new.services[0].timeout = Duration::from_secs(3);
        new.routes.clear();
        new.services.push(ServiceConfig {
            name: "b".into(),
            ..old.services[0].clone()
        });
        let changes: Vec<String> = old.diff(&new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            changes,
            vec![
                "service b added",
                "service echo changed",
                "route echo removed"
            ]
        );
    }
}
