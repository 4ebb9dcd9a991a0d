-- Live events (see ARCHITECTURE.md, "Live events"). Kept in step with the other backend's file:
-- they differ only in the id's type.
-- `changed_at`: when the job last changed, unix ms by the writer's clock, set on every insert
-- and write. Each serve process polls the changes after a watermark, looking back a few seconds
-- to cover commit delays and clock skew; `version` tells a change already sent.
ALTER TABLE jobs ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_changed ON jobs (changed_at);

-- The engine log of each job, line by line, written by the worker running it (its only writer)
-- about once a second, so that any replica can follow it. `seq` counts the job's lines over
-- all its attempts; only the last few thousand lines are kept.
CREATE TABLE job_log (
    job_id BLOB NOT NULL,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
