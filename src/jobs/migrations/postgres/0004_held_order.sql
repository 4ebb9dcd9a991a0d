-- A tenant's held jobs leave highest priority first, then oldest: the index gives them in that
-- order, so a release reads only the head of the range however many are held.
DROP INDEX jobs_held;
CREATE INDEX jobs_held ON jobs (tenant, priority DESC, id) WHERE held;
