-- Quotas, usage and fair scheduling (the same text for both backends).
-- `held`: stored but kept out of the queue while its tenant has `scheduling.queued_per_tenant`
-- jobs waiting there (see ARCHITECTURE.md, "Fair scheduling"). `priority`: 1 high, 0 normal.
-- `images`, `stored_bytes`, `engine_ms`, `gpu_ms`: derived from the record on every write, for quotas and
-- usage (jobs written before this migration count from their next write).
ALTER TABLE jobs ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN images INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN engine_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN gpu_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_held ON jobs (tenant, priority, id) WHERE held;
CREATE INDEX jobs_queued ON jobs (tenant) WHERE status = 'enqueued' AND NOT held;
CREATE INDEX jobs_tenant_finished ON jobs (tenant, finished_at);

-- Rate limits: one row per key and kind, holding the bucket's theoretical arrival time (GCRA),
-- unix milliseconds: a request is admitted when that time is less than a burst ahead of now.
CREATE TABLE rate_buckets (
    bucket TEXT PRIMARY KEY NOT NULL,
    tat BIGINT NOT NULL
);
