//! What each tenant used, for billing: jobs by status, images, engine time by pipeline, GPU time
//! and bytes kept.

use super::{id_floor, Param, Store, StoreError};
use crate::jobs::db::on;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One tenant's use over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant: String,
    /// Jobs created in the period, by their status now.
    pub jobs: BTreeMap<String, u64>,
    /// Images named by those jobs.
    pub images: u64,
    /// Engine seconds of those jobs (every attempt), by pipeline.
    pub engine_seconds: BTreeMap<String, f64>,
    /// Of those, seconds of GPU pipelines.
    pub gpu_seconds: f64,
    /// Bytes the tenant keeps in storage now (inputs and results of all its jobs).
    pub stored_bytes: u64,
}

type Row = (String, String, String, i64, i64, i64, i64);

impl Store {
    /// The use of each tenant (or of one) by jobs created in `[from, to)`.
    pub async fn usage(
        &self,
        tenant: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<TenantUsage>, StoreError> {
        let mut params = vec![Param::Bytes(id_floor(from)), Param::Bytes(id_floor(to))];
        let mut only = String::new();
        if let Some(t) = tenant {
            params.push(Param::Text(t.into()));
            only = " AND tenant = $3".into();
        }
        let sql = format!(
            "SELECT tenant, status, pipeline, COUNT(*), CAST(SUM(images) AS BIGINT), \
             CAST(SUM(engine_ms) AS BIGINT), CAST(SUM(gpu_ms) AS BIGINT) \
             FROM jobs WHERE id >= $1 AND id < $2{only} GROUP BY tenant, status, pipeline"
        );
        let rows: Vec<Row> = on!(&self.db, pool => {
            let mut q = sqlx::query_as(&sql);
            for p in &params {
                q = match p {
                    Param::Text(t) => q.bind(t.clone()),
                    Param::Bytes(b) => q.bind(b.clone()),
                };
            }
            q.fetch_all(pool).await?
        });
        let mut by_tenant: BTreeMap<String, TenantUsage> = BTreeMap::new();
        for (t, status, pipeline, count, images, engine_ms, gpu_ms) in rows {
            let u = by_tenant.entry(t.clone()).or_insert_with(|| TenantUsage {
                tenant: t,
                ..TenantUsage::default()
            });
            *u.jobs.entry(status).or_default() += count as u64;
            u.images += images as u64;
            *u.engine_seconds.entry(pipeline).or_default() += engine_ms as f64 / 1000.0;
            u.gpu_seconds += gpu_ms as f64 / 1000.0;
        }
        let stored_sql = format!(
            "SELECT tenant, CAST(SUM(stored_bytes) AS BIGINT) FROM jobs WHERE TRUE{} GROUP BY tenant",
            if tenant.is_some() { " AND tenant = $1" } else { "" }
        );
        let stored: Vec<(String, i64)> = on!(&self.db, pool => {
            let mut q = sqlx::query_as(&stored_sql);
            if let Some(t) = tenant {
                q = q.bind(t);
            }
            q.fetch_all(pool).await?
        });
        for (t, bytes) in stored {
            by_tenant
                .entry(t.clone())
                .or_insert_with(|| TenantUsage {
                    tenant: t,
                    ..TenantUsage::default()
                })
                .stored_bytes = bytes as u64;
        }
        Ok(by_tenant.into_values().collect())
    }
}
