//! API keys in the job database: made by `meshroom-svc keys create`, checked on every request.
//!
//! A key reads `msk_<id>_<secret>`: the id finds the row, and the SHA-256 of the whole key must
//! equal the stored hash (compared in constant time). The key itself is never stored, and a
//! 256-bit random secret needs no slow hash. Checked keys are remembered for `CACHE_FOR`, so a
//! request costs no database read; a revoke or an expiry therefore takes effect on every replica
//! within that time.

use super::{Principal, Role};
use crate::jobs::db::{on, Db};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a checked key (or an unknown id) is remembered.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// Remembered ids at most; past it the memory starts over (unknown ids cannot grow it forever).
const CACHE_MAX: usize = 10_000;

/// Key store failures and refusals.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The database could not be reached or refused a statement.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The presented key is not a key of ours, or was revoked.
    #[error("the API key is not valid")]
    Invalid,
    /// The key's expiry has passed.
    #[error("the API key expired at {0}")]
    Expired(DateTime<Utc>),
}

/// A key as `keys list` shows it: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeyRecord {
    /// The public part of the key (`msk_<id>_...`).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// A label for people.
    pub name: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last accepted (to within `CACHE_FOR`, per replica).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

const COLUMNS: &str = "id, tenant, role, name, hash, created_at, last_used_at, expires_at, revoked_at";

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn record(row: Row) -> Found {
    let (id, tenant, role, name, hash, created, used, expires, revoked) = row;
    let record = KeyRecord {
        id,
        tenant,
        role: role.parse().unwrap_or(Role::Read),
        name,
        created_at: time(created),
        last_used_at: used.map(time),
        expires_at: expires.map(time),
        revoked_at: revoked.map(time),
    };
    (record, hash)
}

/// A key's record and stored hash.
type Found = (KeyRecord, String);

fn digest(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// The API keys of the deployment.
#[derive(Debug)]
pub struct Keys {
    db: Db,
    /// By key id: when it was read, and the row (none: no such id).
    cache: Mutex<HashMap<String, (Instant, Option<Found>)>>,
    /// `any_active`, and when it was asked.
    active: Mutex<Option<(Instant, bool)>>,
}

impl Keys {
    /// Keys on an open (migrated) database.
    pub fn new(db: Db) -> Keys {
        Keys {
            db,
            cache: Mutex::default(),
            active: Mutex::default(),
        }
    }

    /// Makes a key; returns its record and the key, which is shown once and never again.
    pub async fn create(
        &self,
        tenant: &str,
        role: Role,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<(KeyRecord, SecretString), KeyError> {
        let id = hex(&rand::random::<[u8; 6]>());
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let key = format!("msk_{id}_{secret}");
        let now = Utc::now();
        // A lifetime beyond what a time can hold is no expiry.
        let expires = expires_in
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| now.checked_add_signed(d));
        let sql = format!("INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, NULL)");
        on!(&self.db, pool => sqlx::query(&sql)
            .bind(&id)
            .bind(tenant)
            .bind(role.as_str())
            .bind(name)
            .bind(digest(&key))
            .bind(now.timestamp_millis())
            .bind(expires.map(|t| t.timestamp_millis()))
            .execute(pool)
            .await
            .map(|_| ())?);
        let record = self.find(&id).await?.ok_or(KeyError::Invalid)?.0;
        Ok((record, SecretString::from(key)))
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id");
        let rows: Vec<Row> = on!(&self.db, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|r| record(r).0).collect())
    }

    /// Revokes a key by id; false when there is no such key or it was revoked already.
    pub async fn revoke(&self, id: &str) -> Result<bool, KeyError> {
        let sql = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
        let now = Utc::now().timestamp_millis();
        let n = on!(&self.db, pool => sqlx::query(sql).bind(id).bind(now).execute(pool).await?.rows_affected());
        self.cache.lock().expect("lock").remove(id);
        Ok(n == 1)
    }

    /// `any_active`, as it was at most `CACHE_FOR` ago.
    pub async fn any_active_recently(&self) -> Result<bool, KeyError> {
        if let Some((at, active)) = *self.active.lock().expect("lock") {
            if at.elapsed() < CACHE_FOR {
                return Ok(active);
            }
        }
        let active = self.any_active().await?;
        *self.active.lock().expect("lock") = Some((Instant::now(), active));
        Ok(active)
    }

    /// True when at least one key is neither revoked nor expired (then requests need a credential).
    pub async fn any_active(&self) -> Result<bool, KeyError> {
        let sql = "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";
        let now = Utc::now().timestamp_millis();
        let n: i64 = on!(&self.db, pool => sqlx::query_scalar(sql).bind(now).fetch_one(pool).await?);
        Ok(n > 0)
    }

    /// Who a presented key acts for, or why it is refused.
    pub async fn verify(&self, presented: &str) -> Result<Principal, KeyError> {
        let id = presented
            .strip_prefix("msk_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(KeyError::Invalid)?;
        let cached = self.cache.lock().expect("lock").get(id).cloned();
        let row = match cached {
            Some((at, row)) if at.elapsed() < CACHE_FOR => row,
            _ => {
                let row = self.find(id).await?;
                let mut cache = self.cache.lock().expect("lock");
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(id.to_string(), (Instant::now(), row.clone()));
                if row.is_some() {
                    self.touch(id);
                }
                row
            }
        };
        let Some((record, hash)) = row else {
            return Err(KeyError::Invalid);
        };
        if !bool::from(digest(presented).as_bytes().ct_eq(hash.as_bytes())) || record.revoked_at.is_some() {
            return Err(KeyError::Invalid);
        }
        if let Some(at) = record.expires_at.filter(|at| *at <= Utc::now()) {
            return Err(KeyError::Expired(at));
        }
        Ok(Principal {
            tenant: record.tenant,
            role: record.role,
            credential: format!("key:{}", record.id),
        })
    }

    async fn find(&self, id: &str) -> Result<Option<Found>, KeyError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row: Option<Row> = on!(&self.db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        Ok(row.map(record))
    }

    /// Records a use, off the request's path (at most once per `CACHE_FOR` per key and replica).
    fn touch(&self, id: &str) {
        let (db, id) = (self.db.clone(), id.to_string());
        tokio::spawn(async move {
            let sql = "UPDATE api_keys SET last_used_at = $2 WHERE id = $1";
            let now = Utc::now().timestamp_millis();
            let done = on!(&db, pool => sqlx::query(sql).bind(&id).bind(now).execute(pool).await.map(|_| ()));
            if let Err(e) = done {
                log::warn!("key {id}: last use not recorded: {e}");
            }
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    async fn keys() -> Keys {
        Keys::new(Db::open("sqlite::memory:", 1).await.unwrap())
    }

    #[tokio::test]
    async fn a_key_acts_for_its_tenant_and_role() {
        let keys = keys().await;
        let (rec, key) = keys.create("acme", Role::Submit, "ci", None).await.unwrap();
        let p = keys.verify(key.expose_secret()).await.unwrap();
        assert_eq!((p.tenant.as_str(), p.role), ("acme", Role::Submit));
        assert_eq!(p.credential, format!("key:{}", rec.id));
        assert!(keys.any_active().await.unwrap());
        // Only the hash is stored.
        let stored: String = on!(&keys.db, pool => sqlx::query_scalar("SELECT hash FROM api_keys")
            .fetch_one(pool).await.unwrap());
        assert!(!stored.contains(key.expose_secret()) && stored == digest(key.expose_secret()));
    }

    #[tokio::test]
    async fn wrong_revoked_and_expired_keys_are_refused() {
        let keys = keys().await;
        let (rec, key) = keys.create("acme", Role::Read, "", None).await.unwrap();
        let key = key.expose_secret().to_string();
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        for bad in [
            wrong.as_str(),
            "msk_",
            "nope",
            "msk_zzzzzzzzzzzz_x",
            &format!("msk_{}_", rec.id),
        ] {
            assert!(matches!(keys.verify(bad).await, Err(KeyError::Invalid)), "{bad}");
        }
        assert!(keys.revoke(&rec.id).await.unwrap());
        assert!(!keys.revoke(&rec.id).await.unwrap(), "once");
        assert!(matches!(keys.verify(&key).await, Err(KeyError::Invalid)));
        assert!(!keys.any_active().await.unwrap());
        let (_, short) = keys
            .create("acme", Role::Read, "", Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            keys.verify(short.expose_secret()).await,
            Err(KeyError::Expired(_))
        ));
        let listed = keys.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        let revoked = listed.iter().find(|k| k.id == rec.id).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(listed.iter().any(|k| k.id != rec.id && k.expires_at.is_some()));
    }
}
