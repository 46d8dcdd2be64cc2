-- batchworks schema, version 6: periodic jobs (#15). A schedule's state lives in one row,
-- which every runner carrying it reads and advances with a compare-and-set on
-- (revision, next_tick): the claim of a tick and the insert of its job are one statement.
CREATE TABLE __SCHEMA__.schedules (
    name       text PRIMARY KEY,
    definition jsonb       NOT NULL,
    revision   integer     NOT NULL DEFAULT 1,
    next_tick  timestamptz NOT NULL,
    last_tick  timestamptz,
    skipped    bigint      NOT NULL DEFAULT 0,
    paused     boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Nullable columns without a default: added without rewriting the jobs table.
ALTER TABLE __SCHEMA__.jobs ADD COLUMN schedule text, ADD COLUMN scheduled_for timestamptz;

-- The second guard of exactly once: whatever a claim got wrong, one tick is one job. Partial,
-- so the jobs of no schedule (the hot path) never write it. Building it reads the jobs table
-- once, holding enqueues off meanwhile (about a second per million rows).
CREATE UNIQUE INDEX jobs_schedule_tick ON __SCHEMA__.jobs (schedule, scheduled_for)
    WHERE scheduled_for IS NOT NULL;
