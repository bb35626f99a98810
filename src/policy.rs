//! Hospital policies as types: the hospital's `settings` JSON parsed once
//! (allow-list of client networks, MFA, data retention), and the client
//! address of a request (the socket peer, or `X-Forwarded-For` behind a
//! trusted proxy). Depends on nothing else in the crate; `auth` enforces
//! these, `admin` validates them when a hospital is changed.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

/// Keys of the settings object (the seed's names).
pub const ALLOWED_IPS: &str = "allowedIPs";
pub const REQUIRE_MFA: &str = "requireMFA";
pub const RETENTION_DAYS: &str = "dataRetentionDays";

/// Which client addresses may act on a hospital.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IpPolicy {
    /// No allow-list (absent, null or empty).
    #[default]
    Any,
    /// Only these networks. Empty only when the stored list could not be
    /// read: then nobody is let in (fail closed) until it is fixed.
    Only(Vec<IpNet>),
}

impl IpPolicy {
    /// Whether a client may act; an unknown address passes only `Any`.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        match self {
            IpPolicy::Any => true,
            IpPolicy::Only(nets) => {
                client.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip.to_canonical())))
            }
        }
    }
}

/// The typed settings of a hospital.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub allowed_ips: IpPolicy,
    pub require_mfa: bool,
    /// Studies received longer ago are deleted; `None`: kept forever.
    pub retention_days: Option<u32>,
}

impl Policy {
    /// The policy of a stored settings document. Settings are validated when
    /// written; should a stored allow-list still be unreadable, it admits
    /// nobody rather than everybody.
    pub fn from_stored(settings: &str) -> Policy {
        let value: Value = serde_json::from_str(settings).unwrap_or(Value::Null);
        match Policy::from_value(&value) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(error = %why, "a hospital's stored settings are invalid; its allow-list admits nobody");
                Policy {
                    allowed_ips: IpPolicy::Only(Vec::new()),
                    require_mfa: value.get(REQUIRE_MFA).and_then(Value::as_bool) == Some(true),
                    retention_days: None,
                }
            }
        }
    }

    /// Parse and validate a settings object.
    pub fn from_value(settings: &Value) -> Result<Policy, String> {
        let obj = match settings {
            Value::Object(o) => o,
            Value::Null => return Ok(Policy::default()),
            _ => return Err("settings must be a JSON object".into()),
        };
        let allowed_ips = match obj.get(ALLOWED_IPS) {
            None | Some(Value::Null) => IpPolicy::Any,
            Some(Value::Array(items)) if items.is_empty() => IpPolicy::Any,
            Some(Value::Array(items)) => IpPolicy::Only(
                items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| format!("{ALLOWED_IPS} must hold strings"))
                            .and_then(parse_cidr)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(format!("{ALLOWED_IPS} must be an array of CIDRs")),
        };
        let require_mfa = match obj.get(REQUIRE_MFA) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(format!("{REQUIRE_MFA} must be true or false")),
        };
        let retention_days = match obj.get(RETENTION_DAYS) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(0) => None,
                Some(d) if d > 0 => Some(
                    u32::try_from(d)
                        .map_err(|_| format!("{RETENTION_DAYS} must be at most {}", u32::MAX))?,
                ),
                _ => {
                    return Err(format!(
                        "{RETENTION_DAYS} must be a whole number of days, 0 or more (0 or null: keep forever)"
                    ));
                }
            },
        };
        Ok(Policy {
            allowed_ips,
            require_mfa,
            retention_days,
        })
    }
}

/// Apply a JSON merge patch (RFC 7396) of settings to the stored ones and
/// validate the result; returns the new settings with `allowedIPs` in
/// canonical form.
pub fn merge_settings(stored: &str, patch: &Value) -> Result<(Value, Policy), String> {
    let Value::Object(patch) = patch else {
        return Err("settings must be a JSON object".into());
    };
    let mut merged: Map<String, Value> = match serde_json::from_str(stored) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    let mut merged = Value::Object(merged);
    let policy = Policy::from_value(&merged)?;
    if let IpPolicy::Only(nets) = &policy.allowed_ips {
        merged[ALLOWED_IPS] = nets.iter().map(|n| Value::from(n.to_string())).collect();
    }
    Ok((merged, policy))
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a /32 or
/// /128). Host bits are cleared: `10.1.2.3/8` is `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// The client address of a request. The socket peer, unless the peer is a
/// trusted proxy: then the right-most `X-Forwarded-For` entry that is not a
/// trusted proxy (entries left of it are whatever the client sent, and may
/// be forged). `None` when the peer is unknown.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<IpAddr> = forwarded_for
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_cidr(s).unwrap()).collect()
    }

    #[test]
    fn cidrs_and_addresses_parse() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(
            parse_cidr("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in ["10.0.0.0/33", "banana", "", "10.0.0/8", "::1/129"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_lists_match_v4_v6_and_mapped_addresses() {
        let p = IpPolicy::Only(nets(&["10.0.0.0/8", "2001:db8::/32"]));
        assert!(p.allows(Some("10.9.8.7".parse().unwrap())));
        assert!(p.allows(Some("::ffff:10.9.8.7".parse().unwrap())));
        assert!(p.allows(Some("2001:db8::42".parse().unwrap())));
        assert!(!p.allows(Some("11.0.0.1".parse().unwrap())));
        assert!(!p.allows(None));
        assert!(IpPolicy::Any.allows(None));
        assert!(!IpPolicy::Only(Vec::new()).allows(Some("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/24"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &trusted),
            ip("203.0.113.9")
        );
        // Trusted proxy: the right-most untrusted hop.
        assert_eq!(
            client_ip(
                ip("10.0.0.5"),
                ["6.6.6.6, 198.51.100.7"].into_iter(),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.5"),
                ["6.6.6.6", "198.51.100.7, 10.0.0.9"].into_iter(),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Nothing forwarded, or garbage: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), std::iter::empty(), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), ["junk"].into_iter(), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(client_ip(None, ["1.2.3.4"].into_iter(), &trusted), None);
    }

    #[test]
    fn settings_validate_and_merge() {
        let (v, p) = merge_settings(
            r#"{"theme":"dark","requireMFA":true}"#,
            &json!({"allowedIPs": ["10.1.2.3/8", "::1"], "dataRetentionDays": 30, "requireMFA": null}),
        )
        .unwrap();
        assert_eq!(v["allowedIPs"], json!(["10.0.0.0/8", "::1/128"]));
        assert_eq!(v["theme"], "dark");
        assert!(v.get("requireMFA").is_none() && !p.require_mfa);
        assert_eq!(p.retention_days, Some(30));
        for bad in [
            json!({"allowedIPs": ["nope"]}),
            json!({"allowedIPs": "10.0.0.0/8"}),
            json!({"dataRetentionDays": -1}),
            json!({"dataRetentionDays": 1.5}),
            json!({"requireMFA": "yes"}),
        ] {
            assert!(merge_settings("{}", &bad).is_err(), "{bad}");
        }
        assert_eq!(
            Policy::from_stored(r#"{"allowedIPs":["x"]}"#).allowed_ips,
            IpPolicy::Only(Vec::new())
        );
    }
}
