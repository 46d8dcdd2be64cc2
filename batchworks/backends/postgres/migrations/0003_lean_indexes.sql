-- batchworks schema, version 3: no index the claim can be misled into, less work per job.
--
-- jobs_due served only the look-up of the next delayed job. Without planner statistics (right
-- after a bulk enqueue, or where autovacuum is off) the claim could take it and sort the whole
-- backlog on every claim (48 ms a claim at 100k queued, against 2 ms on jobs_claim). The next
-- due job is now found by a skip scan over jobs_claim, one probe per priority level.
DROP INDEX __SCHEMA__.jobs_due;

-- jobs_lease indexed the same rows as jobs_running (the running jobs: a few per worker), so
-- every claim wrote both and every heartbeat rewrote it. The lease-expiry scan reads the
-- running rows through jobs_running, and a heartbeat that only moves a lease can now be a HOT
-- update (no index touched).
DROP INDEX __SCHEMA__.jobs_lease;

-- Enqueues wake idle runners from the INSERT statement itself (a pg_notify in the same
-- statement, so still only at commit): the statement trigger cost a PL/pgSQL call and a
-- transition table per enqueue, about 85 us of a 400 us single enqueue.
DROP TRIGGER jobs_notify_enqueued ON __SCHEMA__.jobs;
DROP FUNCTION __SCHEMA__.notify_enqueued();
