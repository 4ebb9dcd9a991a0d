//! Settings that are checked as they are read, so that code using them holds only valid values:
//! the networks URLs may reach, and the webhook signing secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;

/// Networks (CIDR, or a single address) that image and callback URLs may reach besides public
/// addresses (`security.allowed_networks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNetworks(Vec<IpNet>);

impl AllowedNetworks {
    /// The networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

impl std::str::FromStr for AllowedNetworks {
    type Err = String;

    /// Comma-separated, e.g. `10.0.0.0/8, 192.168.1.20`.
    fn from_str(text: &str) -> Result<AllowedNetworks, String> {
        let parse = |n: &str| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("security.allowed_networks: '{n}' is not a CIDR network or an address"))
        };
        let nets = text.split(',').map(str::trim).filter(|n| !n.is_empty()).map(parse);
        Ok(AllowedNetworks(nets.collect::<Result<_, _>>()?))
    }
}

impl Serialize for AllowedNetworks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|n| n.to_string()))
    }
}

impl<'de> Deserialize<'de> for AllowedNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AllowedNetworks, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        items.join(",").parse().map_err(serde::de::Error::custom)
    }
}

/// The Standard Webhooks signing secret (`MESHROOM_SVC_WEBHOOK_SECRET`): `whsec_` (optional)
/// followed by the base64 of the key. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// Checks the text; the error says what is expected, never what was given.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        match B64.decode(text.strip_prefix("whsec_").unwrap_or(text)) {
            Ok(key) if !key.is_empty() => Ok(WebhookSecret(SecretString::from(text))),
            _ => Err("MESHROOM_SVC_WEBHOOK_SECRET: expected whsec_ followed by base64".into()),
        }
    }

    /// The HMAC key: the decoded bytes.
    pub fn key(&self) -> Vec<u8> {
        let text = self.0.expose_secret();
        B64.decode(text.strip_prefix("whsec_").unwrap_or(text))
            .expect("checked by parse")
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_from_lists_and_text() {
        let nets: AllowedNetworks = "10.0.0.0/8, 192.168.1.20".parse().unwrap();
        assert_eq!(nets.nets().len(), 2);
        assert_eq!(nets.nets()[1].to_string(), "192.168.1.20/32");
        assert!("10.0.0.0/33".parse::<AllowedNetworks>().is_err());
        let from_toml: toml::Table = toml::from_str(r#"n = ["127.0.0.0/8"]"#).unwrap();
        let parsed = AllowedNetworks::deserialize(from_toml["n"].clone()).unwrap();
        assert_eq!(parsed, "127.0.0.0/8".parse().unwrap());
        assert_eq!(
            toml::Value::try_from(&parsed).unwrap().to_string(),
            r#"["127.0.0.0/8"]"#
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let secret = WebhookSecret::parse("whsec_c2VjcmV0").unwrap();
        assert_eq!(secret.key(), b"secret");
        assert!(!format!("{secret:?}").contains("c2VjcmV0"));
        let err = WebhookSecret::parse("whsec_not base64!").unwrap_err();
        assert!(!err.contains("not base64"), "{err}");
        assert!(WebhookSecret::parse("").is_err());
    }
}
