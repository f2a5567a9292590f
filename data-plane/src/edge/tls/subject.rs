//! The subject of a verified client certificate as an RFC 4514 string
//! (`CN=partner,O=Acme,C=GB`), the value of `x-client-cert-subject`.
//!
//! RDNs come last-first (RFC 4514 section 2.1), the attribute types of
//! section 3 by their short names and any other by its dotted OID with the
//! value's DER in hex (`1.2.840.113549.1.9.1=#1603...`). Special characters
//! are escaped with `\`, and so are bytes outside printable ASCII (`\C3\A9`
//! for `é`), so that the header value is plain ASCII.

use x509_parser::der_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::x509::X509Name;

/// Short names of RFC 4514 section 3, by OID.
const SHORT_NAMES: [(&str, &str); 9] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// The subject of the DER certificate `der`, RFC 4514; `None` when it
/// cannot be parsed (rustls verified it, so this does not happen).
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(rfc4514(cert.subject()))
}

/// `name` as an RFC 4514 string.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let short = SHORT_NAMES.iter().find(|(o, _)| *o == oid);
            match (short, text_of(attr.attr_value())) {
                (Some((_, short)), Some(text)) => {
                    out.push_str(short);
                    out.push('=');
                    escape(&text, &mut out);
                }
                _ => {
                    out.push_str(&oid);
                    out.push_str("=#");
                    let der = attr.attr_value().to_der_vec().unwrap_or_default();
                    for b in der {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

/// The text of a string-typed attribute value.
fn text_of(value: &Any<'_>) -> Option<String> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::T61String => std::str::from_utf8(value.data).ok().map(str::to_string),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// Appends `value` escaped as RFC 4514 section 2.4 asks, and every byte
/// outside printable ASCII as `\XX`.
fn escape(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && matches!(b, b' ' | b'#'))
            || (i == last && b == b' ');
        if special {
            out.push('\\');
            out.push(char::from(b));
        } else if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(build: impl FnOnce(&mut rcgen::DistinguishedName)) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        build(&mut params.distinguished_name);
        let cert = params.self_signed(&key).unwrap();
        subject_of(cert.der()).unwrap()
    }

    #[test]
    fn rdns_come_last_first_with_short_names() {
        let s = subject(|dn| {
            dn.push(rcgen::DnType::CountryName, "GB");
            dn.push(rcgen::DnType::OrganizationName, "Acme");
            dn.push(rcgen::DnType::CommonName, "partner-1");
        });
        assert_eq!(s, "CN=partner-1,O=Acme,C=GB");
    }

    #[test]
    fn special_and_non_ascii_characters_are_escaped() {
        let s = subject(|dn| {
            dn.push(rcgen::DnType::CommonName, " a,b+c\"d\\e;<f> ");
        });
        assert_eq!(s, r#"CN=\ a\,b\+c\"d\\e\;\<f\>\ "#);
        let s = subject(|dn| dn.push(rcgen::DnType::OrganizationName, "Café #1"));
        assert_eq!(s, r"O=Caf\C3\A9 #1");
        let s = subject(|dn| dn.push(rcgen::DnType::CommonName, "#hash"));
        assert_eq!(s, r"CN=\#hash");
        assert!(http::HeaderValue::from_str(&s).is_ok());
    }

    #[test]
    fn other_types_are_dotted_oids_with_hex_values() {
        let s = subject(|dn| {
            dn.push(
                rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
                rcgen::DnValue::Ia5String("a@b".try_into().unwrap()),
            );
            dn.push(rcgen::DnType::CommonName, "x");
        });
        assert_eq!(s, "CN=x,1.2.840.113549.1.9.1=#1603614062");
    }
}
