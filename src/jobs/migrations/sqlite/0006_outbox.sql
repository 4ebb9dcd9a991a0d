-- The outbox in a table of its own (kept in step with ../postgres/0007_outbox.sql: they differ
-- only in the id's type, and PostgreSQL's also updates its `release_held` function). A row per
-- job stored for the queue whose message is not confirmed yet; `since`: unix ms. It was a column
-- of `jobs`: clearing it once the broker confirmed wrote the whole job row again, with an entry in
-- every index of the row. Deleting a narrow row is a fraction of that.
CREATE TABLE outbox (
    id BLOB PRIMARY KEY NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX outbox_since ON outbox (since);
INSERT INTO outbox (id, since) SELECT id, unpublished_since FROM jobs WHERE unpublished_since IS NOT NULL;

DROP INDEX jobs_unpublished;
ALTER TABLE jobs DROP COLUMN unpublished_since;
