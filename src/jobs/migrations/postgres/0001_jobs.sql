-- Kept in step with ../sqlite/0001_jobs.sql: the two differ only in the id's type (BYTEA here).
-- Job records. `doc` is the whole record as JSON; the other columns are derived from it on every
-- write so that lists and sweeps can use indexes. `unpublished_since` (unix ms) is set while the
-- job is stored but its queue message not yet confirmed (the outbox); `version` counts writes.
-- Ids are UUIDv7 as 16 big-endian bytes: byte order is creation order, in SQLite and PostgreSQL alike.
CREATE TABLE jobs (
    id BYTEA PRIMARY KEY NOT NULL,
    status TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    finished_at BIGINT,
    webhook_pending BOOLEAN NOT NULL DEFAULT FALSE,
    unpublished_since BIGINT,
    version BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_pipeline ON jobs (pipeline, id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_unpublished ON jobs (unpublished_since) WHERE unpublished_since IS NOT NULL;
CREATE INDEX jobs_webhook_pending ON jobs (id) WHERE webhook_pending;

-- Webhook endpoints that answered 410 Gone, by the SHA-256 of their URL.
CREATE TABLE webhook_gone (
    url_hash TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL
);
