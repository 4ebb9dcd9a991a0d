-- A tenant's release of held jobs (src/jobs/store/hold.rs) as one statement, so one round trip:
-- the tenant's advisory lock, then the update. A VOLATILE function takes a fresh snapshot for
-- each statement in it, so the update, run once the lock is ours, sees the release that held
-- the lock before. The lock is the transaction's: held until the caller's commit.
CREATE FUNCTION release_held(p_tenant TEXT, p_share BIGINT, p_now BIGINT) RETURNS SETOF TEXT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7142001, hashtext(p_tenant));
    RETURN QUERY
    UPDATE jobs SET held = FALSE, unpublished_since = p_now WHERE id IN (
        SELECT id FROM jobs WHERE tenant = p_tenant AND held AND status = 'enqueued'
        ORDER BY priority DESC, id
        LIMIT (SELECT CASE WHEN COUNT(*) < p_share THEN p_share - COUNT(*) ELSE 0 END
               FROM jobs WHERE tenant = p_tenant AND status = 'enqueued' AND NOT held)
    ) RETURNING doc;
END $$;
