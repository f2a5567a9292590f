//! Roles and permissions: the seed's role table and its matching rules
//! (`*`, `resource:*`, `-own`), and the permission a route requires.

use gateway_common::config::AuthConfig;
use std::collections::BTreeMap;

/// A role the platform knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, within the venues it owns.
    VenueOwner,
    /// Events, tickets and reports of its venues.
    VenueManager,
    /// Sales at its venues.
    BoxOffice,
    /// Ticket checks at its venues.
    DoorStaff,
    /// A ticket buyer: its own tickets and profile.
    Customer,
    /// Everything, everywhere.
    Admin,
}

impl Role {
    /// The role named `name` (`venue-owner`, ...), if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "venue-owner" => Self::VenueOwner,
            "venue-manager" => Self::VenueManager,
            "box-office" => Self::BoxOffice,
            "door-staff" => Self::DoorStaff,
            "customer" => Self::Customer,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    /// The seed's `RBAC_CONFIG` permissions.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            Self::VenueOwner | Self::Admin => &["*"],
            Self::VenueManager => &[
                "events:create",
                "events:update",
                "events:delete",
                "tickets:view",
                "tickets:validate",
                "reports:view",
                "reports:export",
            ],
            Self::BoxOffice => &[
                "tickets:sell",
                "tickets:view",
                "tickets:validate",
                "payments:process",
                "reports:daily",
            ],
            Self::DoorStaff => &["tickets:validate", "tickets:view"],
            Self::Customer => &[
                "tickets:purchase",
                "tickets:view-own",
                "tickets:transfer-own",
                "profile:update-own",
            ],
        }
    }

    /// Whether its access is limited to the venues it works for.
    pub fn venue_scoped(self) -> bool {
        matches!(
            self,
            Self::VenueOwner | Self::VenueManager | Self::BoxOffice | Self::DoorStaff
        )
    }
}

/// Whether `granted` allows `required` (`resource:action`, no wildcard,
/// no `-own`); `owns` tells whether the caller owns the resource (the
/// route's owner parameter is its `sub`).
///
/// `*` and `resource:*` allow everything (of the resource), the exact
/// permission allows any owner's resource, and `resource:action-own`
/// allows only the caller's own.
pub fn allows<S: AsRef<str>>(granted: &[S], required: &str, owns: bool) -> bool {
    let Some((resource, action)) = required.split_once(':') else {
        return false;
    };
    granted.iter().any(|g| {
        let g = g.as_ref();
        if g == "*" || g == required {
            return true;
        }
        let Some((r, a)) = g.split_once(':') else {
            return false;
        };
        r == resource && (a == "*" || (owns && a.strip_suffix("-own") == Some(action)))
    })
}

/// The permissions a route requires, per method, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    default: Option<String>,
    per_method: BTreeMap<String, String>,
    /// Path parameter naming the resource's owner.
    pub owner_param: Option<String>,
    /// Path parameter naming the venue.
    pub venue_param: Option<String>,
}

impl Requirement {
    /// The route's requirement, `None` when it names no permission.
    pub fn from_config(auth: &AuthConfig) -> Option<Self> {
        auth.has_permission().then(|| Self {
            default: auth.permission.clone(),
            per_method: auth.permissions.clone(),
            owner_param: auth.owner_param.clone(),
            venue_param: auth.venue_param.clone(),
        })
    }

    /// The permission `method` needs, if any. HEAD reads what GET reads,
    /// so it needs GET's unless it is named itself.
    pub fn for_method(&self, method: &str) -> Option<&str> {
        let named = match (self.per_method.get(method), method) {
            (None, "HEAD") => self.per_method.get("GET"),
            (named, _) => named,
        };
        named.or(self.default.as_ref()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> &'static [&'static str] {
        Role::parse(name).unwrap().permissions()
    }

    #[test]
    fn every_seed_role_has_its_permissions() {
        assert!(allows(role("admin"), "events:delete", false));
        assert!(allows(role("venue-owner"), "payments:refund", false));
        assert!(allows(role("venue-manager"), "events:update", false));
        assert!(!allows(role("venue-manager"), "payments:process", false));
        assert!(allows(role("box-office"), "payments:process", false));
        assert!(!allows(role("box-office"), "events:create", false));
        assert!(allows(role("door-staff"), "tickets:validate", false));
        assert!(!allows(role("door-staff"), "tickets:sell", false));
        assert!(allows(role("customer"), "tickets:purchase", false));
        assert!(!allows(role("customer"), "events:create", false));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn venue_scoping_follows_the_seed() {
        for r in ["venue-owner", "venue-manager", "box-office", "door-staff"] {
            assert!(Role::parse(r).unwrap().venue_scoped(), "{r}");
        }
        assert!(!Role::Admin.venue_scoped());
        assert!(!Role::Customer.venue_scoped());
    }

    #[test]
    fn wildcards_grant_everything_or_a_resource() {
        assert!(allows(&["*"], "anything:at-all", false));
        assert!(allows(&["events:*"], "events:delete", false));
        assert!(!allows(&["events:*"], "tickets:view", false));
        // A prefix is not a resource.
        assert!(!allows(&["event:*"], "events:view", false));
        assert!(!allows(&["events"], "events:view", false));
        assert!(!allows::<&str>(&[], "events:view", true));
    }

    #[test]
    fn own_grants_need_ownership() {
        let customer = role("customer");
        assert!(allows(customer, "tickets:view", true));
        assert!(!allows(customer, "tickets:view", false));
        assert!(allows(customer, "profile:update", true));
        assert!(!allows(customer, "profile:update", false));
        assert!(!allows(customer, "profile:delete", true));
        // The exact permission covers everyone's resources.
        assert!(allows(role("door-staff"), "tickets:view", false));
        // -own of another action or resource does not count.
        assert!(!allows(&["tickets:view-own"], "tickets:transfer", true));
        assert!(!allows(&["orders:view-own"], "tickets:view", true));
    }

    #[test]
    fn requirements_are_per_method_with_a_default() {
        let auth: AuthConfig = serde_json::from_value(serde_json::json!({
            "permission": "events:view",
            "permissions": { "POST": "events:create" },
            "owner_param": "userId"
        }))
        .unwrap();
        let req = Requirement::from_config(&auth).unwrap();
        assert_eq!(req.for_method("GET"), Some("events:view"));
        assert_eq!(req.for_method("POST"), Some("events:create"));
        assert_eq!(req.owner_param.as_deref(), Some("userId"));
        let read: AuthConfig = serde_json::from_value(serde_json::json!({
            "permissions": { "GET": "events:view", "POST": "events:create" }
        }))
        .unwrap();
        let req = Requirement::from_config(&read).unwrap();
        assert_eq!(req.for_method("HEAD"), Some("events:view"));
        assert_eq!(req.for_method("DELETE"), None);
        let only_post: AuthConfig = serde_json::from_value(serde_json::json!({
            "permissions": { "POST": "events:create" }
        }))
        .unwrap();
        let req = Requirement::from_config(&only_post).unwrap();
        assert_eq!(req.for_method("GET"), None);
        let none: AuthConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(Requirement::from_config(&none).is_none());
    }
}
