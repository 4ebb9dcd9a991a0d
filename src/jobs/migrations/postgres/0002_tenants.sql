-- Tenants (kept in step with the other backend's 0002_tenants.sql; the two are the same text).
-- Every job belongs to one tenant; jobs from before tenants belong to `default`. An idempotency
-- key is unique per tenant: the column holds `{tenant}/{key}` (tenant names have no `/`).
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
UPDATE jobs SET idempotency_key = 'default/' || idempotency_key WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant ON jobs (tenant, id);
CREATE INDEX jobs_tenant_status ON jobs (tenant, status, id);

-- API keys. `hash` is the hex SHA-256 of the whole key: the key itself is never stored. `id` is
-- the key's public part (it is in the key, and in `keys list`). Times are unix milliseconds.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT,
    revoked_at BIGINT
);
