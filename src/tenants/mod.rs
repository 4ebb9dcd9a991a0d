//! Tenants: who a request acts for and what it may do. Every job belongs to one tenant; a
//! credential (an API key from the database or the environment) names a tenant and a role.

use serde::{Deserialize, Serialize};

pub mod command;
pub mod keys;
pub mod rate;
pub mod tokens;

pub use keys::{KeyError, KeyRecord, Keys};

/// The tenant of jobs from before tenants, of `MESHROOM_SVC_API_KEYS` and of requests when no
/// credential is configured at all.
pub const DEFAULT_TENANT: &str = "default";

/// What a credential may do; each role may do what the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read its tenant's jobs, their files and logs.
    Read,
    /// Also submit, cancel, retry and delete its tenant's jobs.
    Submit,
    /// Every tenant's jobs.
    Admin,
}

impl Role {
    /// The name in the database, the CLI and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role '{other}' (read, submit or admin)")),
        }
    }
}

/// Who a request acts for: a tenant, a role, and the credential (for rate limits and logs; a key
/// id, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose jobs it sees.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// `key:<id>` for a stored key, `env:<n>` for the n-th key of MESHROOM_SVC_API_KEYS,
    /// `anonymous` when no credential is configured.
    pub credential: String,
}

impl Principal {
    /// Whether it may see the jobs of `tenant`: its own, or every tenant's for admins.
    pub fn sees(&self, tenant: &str) -> bool {
        self.role == Role::Admin || self.tenant == tenant
    }

    /// The tenant a list shows: its own, or every tenant (`None`) for admins.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Admin => None,
            _ => Some(&self.tenant),
        }
    }
}

/// Checks a tenant name: 1 to 63 characters, lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit. Names go into storage keys and metrics labels, so nothing else.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok_start && ok_rest && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "tenant '{}' is not a valid name: 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            crate::http::quote(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_keys_and_labels() {
        for good in ["acme", "team-7", "a", "0_x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "-x", "a/b", "a b", "é", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admins_see_every_tenant() {
        let p = |role| Principal {
            tenant: "acme".into(),
            role,
            credential: "anonymous".into(),
        };
        assert!(p(Role::Read).sees("acme") && !p(Role::Submit).sees("other"));
        assert!(p(Role::Admin).sees("other"));
        assert_eq!(p(Role::Submit).scope(), Some("acme"));
        assert_eq!(p(Role::Admin).scope(), None);
        assert!(Role::Read < Role::Submit && Role::Submit < Role::Admin);
    }
}
