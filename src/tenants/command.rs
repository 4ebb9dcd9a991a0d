//! `meshroom-svc keys ...`: key management on the job database, for operators.

use super::{check_name, KeyError, KeyRecord, Keys};
use crate::app::{open_database, Role as AppRole, StartError};
use crate::cli::KeysAction;
use crate::config::Config;
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret;
use std::fmt::Write;

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] StartError),
    /// A statement failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

/// Runs a `keys` command; returns what it prints.
pub async fn run(config: &Config, action: KeysAction) -> Result<String, CommandError> {
    // The database a running all-in-one uses, or the shared one: the same rule as the roles. It
    // may be writing meanwhile: wait for it longer than a request would.
    let db = open_database(config, AppRole::AllInOne, crate::jobs::db::OPERATOR_BUSY_TIMEOUT).await?;
    let keys = Keys::new(db.clone());
    let mut out = String::new();
    match action {
        KeysAction::Create {
            tenant,
            role,
            name,
            expires,
        } => {
            check_name(&tenant).map_err(CommandError::Usage)?;
            let (record, key) = keys.create(&tenant, role, &name, expires).await?;
            let _ = writeln!(out, "{}", line(&record));
            // Last, alone on its line: scripts take the last line.
            let _ = writeln!(out, "{}", key.expose_secret());
        }
        KeysAction::List { json } => {
            let all = keys.list().await?;
            if json {
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                for record in &all {
                    let _ = writeln!(out, "{}", line(record));
                }
            }
        }
        KeysAction::Revoke { id } => {
            if !keys.revoke(&id).await? {
                return Err(CommandError::Usage(format!("no active key with id '{id}'")));
            }
            let _ = writeln!(out, "revoked {id}");
        }
    }
    db.close().await;
    Ok(out)
}

/// One key on one line: `id tenant role state created last-used expires name`.
fn line(r: &KeyRecord) -> String {
    let t = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    let state = match (r.revoked_at, r.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= Utc::now() => "expired",
        _ => "active",
    };
    format!(
        "id={} tenant={} role={} state={state} created={} last_used={} expires={} name={:?}",
        r.id,
        r.tenant,
        r.role.as_str(),
        t(Some(r.created_at)),
        t(r.last_used_at),
        t(r.expires_at),
        r.name
    )
}
