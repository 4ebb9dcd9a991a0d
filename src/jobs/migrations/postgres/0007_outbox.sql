-- The outbox in a table of its own (kept in step with ../sqlite/0006_outbox.sql: they differ only
-- in the id's type). A row per job stored for the queue whose message is not confirmed yet;
-- `since`: unix ms. It was a column of `jobs`: clearing it once the broker confirmed wrote the
-- whole job row again, with an entry in every index of the row. Deleting a narrow row is a
-- fraction of that, and the job row is written once per submit.
CREATE TABLE outbox (
    id BYTEA PRIMARY KEY NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX outbox_since ON outbox (since);
INSERT INTO outbox (id, since) SELECT id, unpublished_since FROM jobs WHERE unpublished_since IS NOT NULL;

-- The release of held jobs (0006) marks what it releases in the outbox, in the same statement.
CREATE OR REPLACE FUNCTION release_held(p_tenant TEXT, p_share BIGINT, p_now BIGINT) RETURNS SETOF TEXT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7142001, hashtext(p_tenant));
    RETURN QUERY
    WITH released AS (
        UPDATE jobs SET held = FALSE WHERE jobs.id IN (
            SELECT j.id FROM jobs j WHERE j.tenant = p_tenant AND j.held AND j.status = 'enqueued'
            ORDER BY j.priority DESC, j.id
            LIMIT (SELECT CASE WHEN COUNT(*) < p_share THEN p_share - COUNT(*) ELSE 0 END
                   FROM jobs q WHERE q.tenant = p_tenant AND q.status = 'enqueued' AND NOT q.held)
        ) RETURNING jobs.id, jobs.doc
    ), marked AS (
        INSERT INTO outbox (id, since) SELECT r.id, p_now FROM released r
        ON CONFLICT (id) DO UPDATE SET since = EXCLUDED.since
    )
    SELECT r.doc FROM released r;
END $$;

DROP INDEX jobs_unpublished;
ALTER TABLE jobs DROP COLUMN unpublished_since;
