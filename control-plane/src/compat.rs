//! Which data planes a control plane serves: the version-skew rule.
//!
//! Control planes are upgraded first; a data plane may be at most one minor
//! version behind its control plane (same major version), never ahead of
//! it. Within that window a config that uses a field the older data plane
//! does not know is refused whole by it (the config model rejects unknown
//! fields) and NACKed with `unknown field ...` as the reason, while every
//! config that does not use it applies as usual. Outside the window the
//! Discovery stream is refused with `FAILED_PRECONDITION` and the data
//! plane keeps serving what it holds. A Hello without a version (a data
//! plane older than the field) is let through.

/// This control plane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `major.minor` of a semver text (`0.1.0`, `1.2.3-rc.1`).
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a data plane of version `data_plane` may take config from a
/// control plane of version `control_plane`; the reason when not.
pub fn check(control_plane: &str, data_plane: &str) -> Result<(), String> {
    if data_plane.is_empty() {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(format!(
            "data plane version {data_plane} cannot take config from control plane version \
             {control_plane}: {why} (data planes may be at most one minor version behind the \
             control plane and never ahead of it: upgrade control planes first)"
        ))
    };
    let (Some((cp_major, cp_minor)), Some((dp_major, dp_minor))) =
        (major_minor(control_plane), major_minor(data_plane))
    else {
        return refuse("the version is not major.minor.patch");
    };
    if dp_major != cp_major {
        return refuse("another major version");
    }
    if dp_minor > cp_minor {
        return refuse("the data plane is newer");
    }
    if dp_minor + 1 < cp_minor {
        return refuse("the data plane is more than one minor version behind");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_planes_may_be_one_minor_behind_never_ahead() {
        assert!(check("1.4.2", "1.4.0").is_ok());
        assert!(check("1.4.2", "1.4.9").is_ok(), "patches do not count");
        assert!(check("1.4.2", "1.3.7").is_ok());
        assert!(check("1.4.0-rc.1", "1.3.0").is_ok());
        assert!(check("1.4.2", "").is_ok(), "a data plane that says nothing");
        let behind = check("1.4.2", "1.2.0").unwrap_err();
        assert!(
            behind.contains("more than one minor version behind"),
            "{behind}"
        );
        let ahead = check("1.4.2", "1.5.0").unwrap_err();
        assert!(
            ahead.contains("newer") && ahead.contains("upgrade control planes first"),
            "{ahead}"
        );
        assert!(check("1.4.2", "2.4.2").unwrap_err().contains("major"));
        assert!(check("1.4.2", "banana")
            .unwrap_err()
            .contains("not major.minor.patch"));
        assert!(check(VERSION, VERSION).is_ok());
    }
}
