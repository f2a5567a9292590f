//! Static instance addresses of a service (`http://host:port` or
//! `https://host:port`), parsed.

/// A static instance address parsed from `http://host:port` or
/// `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddr {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `https://`: the instance speaks TLS (never plaintext).
    pub tls: bool,
}

/// Parses a static instance URL (`http://host:port`, port defaults to 80;
/// `https://host:port`, port defaults to 443).
pub fn parse_instance_url(text: &str) -> Result<InstanceAddr, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(format!(
                "{text:?}: only http:// and https:// instances are supported"
            ))
        }
    };
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?}: must be http(s)://host:port without path, query or user"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{text:?}: missing host")),
    };
    Ok(InstanceAddr {
        host,
        port: url.port_or_known_default().unwrap_or(80),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_urls() {
        assert_eq!(
            parse_instance_url("http://10.0.0.1:81").unwrap(),
            InstanceAddr {
                host: "10.0.0.1".into(),
                port: 81,
                tls: false,
            }
        );
        assert_eq!(parse_instance_url("http://[::1]:81").unwrap().host, "::1");
        assert_eq!(parse_instance_url("http://svc").unwrap().port, 80);
        assert!(parse_instance_url("http://svc:1/path").is_err());
        let https = parse_instance_url("https://svc:8443").unwrap();
        assert!(https.tls && https.port == 8443);
        assert_eq!(parse_instance_url("https://svc").unwrap().port, 443);
        assert!(parse_instance_url("ftp://svc:1").is_err());
    }
}
