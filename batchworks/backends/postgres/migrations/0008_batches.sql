-- batchworks schema, version 8: batches (#16), groups of jobs with exact counters and
-- callbacks enqueued exactly once.
--
-- A batch's counters of members that ended (succeeded, failed, cancelled) change in the same
-- statement as the members' states (settle, recovery, cancel, retry), one UPDATE of the batch
-- row per statement and batch: O(1) per settle whatever the batch's size. Running members are
-- counted when the batch is read (through jobs_running: as many as the workers hold); queued
-- is what is left of total. The statement that leaves a closed batch with no pending member
-- enqueues its callbacks, with the ids it recorded in complete_job/success_job beforehand
-- under the batch row's lock: a callback whose id is set is never enqueued again.
--
-- None of the counters is indexed, so their updates stay HOT; finished_at is, partially, for
-- the open batches. first_job and last_job bound the ids of the members (an enqueue draws
-- them in order): the reads of one batch's members (its results in pages, its failures,
-- cancel_batch) scan that range of the primary key. No index on jobs.batch_id: one would take
-- an entry for each member at its enqueue, claim and settle (measured: enqueue_batch at 0.84x
-- of enqueue_many with one, against about 1x without).
CREATE TABLE __SCHEMA__.batches (
    id            bigserial PRIMARY KEY,
    name          text,
    queue         text        NOT NULL,
    state         text        NOT NULL DEFAULT 'open'
                  CHECK (state IN ('open', 'closed', 'finished', 'cancelled')),
    total         bigint      NOT NULL DEFAULT 0,
    succeeded     bigint      NOT NULL DEFAULT 0,
    failed        bigint      NOT NULL DEFAULT 0,
    cancelled     bigint      NOT NULL DEFAULT 0,
    on_complete   jsonb,
    on_success    jsonb,
    complete_job  bigint,
    success_job   bigint,
    first_job     bigint,
    last_job      bigint,
    trace_context jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX batches_open ON __SCHEMA__.batches (id) WHERE finished_at IS NULL;

-- Nullable without a default: added without rewriting the jobs table.
ALTER TABLE __SCHEMA__.jobs ADD COLUMN batch_id bigint;
