"""Every SQL statement of the PostgreSQL backend, by name.

``__SCHEMA__`` stands for the schema, which :class:`~.backend.Queries` fills in once with the
validated, quoted identifier, and ``__CHANNEL__``/``__FINISHED__`` for the NOTIFY channels named
after it; every value travels as a bind parameter. Each constant is a whole statement: with
those three filled in, it prepares and EXPLAINs as it stands. Each worker-side operation is one
statement, so one round trip, for a whole batch: the hot path never goes per job.
"""

from __future__ import annotations

from typing import LiteralString

# Copies kept in step, in whole statements rather than fragments glued with "+", so that each
# statement reads, and EXPLAINs, on its own (tests/postgres/test_queries.py checks that the
# copies agree, word for word):
#
# - the recovery of a job whose worker is gone (the CTEs "upd" and "woke" over a CTE "lost" of
#   (id, why)): REGISTER_WORKER, UNREGISTER_WORKER and RECOVER. The attempt
#   its claim used stays used, so a job that kills its worker every time ends failed instead of
#   looping; a job an operator asked to cancel is cancelled rather than run again.
# - the wake-up of idle runners for rows that went back to the queue due now (the CTE "woke"
#   over "upd"): RETRY_FAILED, SETTLE and the three statements above.
# - the wake-up of wait_job() waiters (NOTIFY_DONE_ITEM, a RETURNING item, alias j): every
#   statement that can end a job. A NOTIFY takes PostgreSQL's global notify lock at commit, and
#   a statement that calls no pg_notify takes none; the CASE calls it for rows a waiter marked
#   only. The payload is the job id. In RETURNING rather than a CTE over it: a CTE and a UNION
#   ALL over it cost a plain-success settle about 5% more (measured).
# - the claim's UPDATE and RETURNING around the pick of due jobs, and the record of a rate
#   limited queue's starts after it ("rated"): CLAIM_ONE and CLAIM.
# - a batch's bookkeeping (#16), in two parts: BATCH_DELTAS, the CTE "bd" that sums, per batch,
#   how many members of "upd" (with their new state and the state they had, "was") entered or
#   left each final state; and BATCH_FINISH, the CTEs "bl", "bu" and "bcb" that apply "bd" to
#   the batch rows. "bl" locks the batch rows in id order (so two statements touching several
#   batches cannot deadlock; every statement takes its job rows first and its batch rows last)
#   and computes their new counters from the locked, latest version; "bu" writes them, and for
#   a closed batch that has no pending member any more it marks it finished and draws the ids
#   of its callbacks' jobs (once: an id drawn stays), and "bcb" inserts those jobs, so a
#   callback is enqueued by exactly one statement. BATCH_DELTAS is in every statement that
#   changes a member's state but the claim (running is counted when a batch is read); BATCH_FINISH
#   also in CLOSE_BATCH and CANCEL_BATCH, which bring their own "bd". A statement that touches
#   no member runs them over no row. The wake-up of wait_batch() is the pg_notify in "bu".

NOTIFY_DONE_ITEM: LiteralString = """
CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
     THEN pg_notify(__FINISHED__, j.id::text) END
"""

BATCH_DELTAS: LiteralString = """
bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
)
"""

BATCH_FINISH: LiteralString = """
bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
"""

MIGRATIONS_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS __SCHEMA__.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

APPLIED_MIGRATIONS: LiteralString = "SELECT version FROM __SCHEMA__.migrations"

RECORD_MIGRATION: LiteralString = (
    "INSERT INTO __SCHEMA__.migrations (version, name) VALUES ($1, $2)"
)

# The payloads come as one JSON array ($2), encoded in one go; ids are drawn in payload order
# (the ORDER BY), and the caller matches them back by sorting. Without dedupe keys (the common
# case) there is nothing to arbitrate: ENQUEUE_PLAIN skips ON CONFLICT and the look-up (and,
# without concurrency keys, names no column of migration 7: an enqueue of this version still
# runs on an older schema). Both
# wake idle runners of the queue in the inserting transaction (so a job enqueued on the
# caller's connection wakes them only when it commits): the extra row of "woke" is NULL.
ENQUEUE_PLAIN: LiteralString = """
WITH ins AS (
    INSERT INTO __SCHEMA__.jobs
        (queue, payload, priority, run_at, max_attempts, timeout, trace_context)
    SELECT $1, t.payload, $3, coalesce($4, now() + make_interval(secs => $5)), $6, $7, $8::jsonb
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(payload, ord)
    ORDER BY t.ord
    RETURNING id
), woke AS (
    SELECT pg_notify(__CHANNEL__, $1) WHERE EXISTS (SELECT FROM ins)
)
SELECT id FROM ins
UNION ALL
SELECT NULL FROM woke
"""

# The same parameters as ENQUEUE_PLAIN, the concurrency keys ($9) and the dedupe keys ($10) in
# payload order (either NULL for none: a ROWS FROM pads a shorter function with NULLs). Without
# either key (the common case) ENQUEUE_PLAIN runs instead.
ENQUEUE: LiteralString = """
WITH input AS (
    SELECT * FROM ROWS FROM (jsonb_array_elements($2::jsonb), unnest($10::text[]),
                             unnest($9::text[]))
        WITH ORDINALITY AS t(payload, dedupe_key, concurrency_key, ord)
), ins AS (
    INSERT INTO __SCHEMA__.jobs
        (queue, payload, priority, run_at, max_attempts, dedupe_key, timeout, trace_context,
         concurrency_key)
    SELECT $1, payload, $3, coalesce($4, now() + make_interval(secs => $5)), $6, dedupe_key, $7,
           $8::jsonb, concurrency_key
    FROM input ORDER BY ord
    ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING id, dedupe_key
), woke AS (
    SELECT pg_notify(__CHANNEL__, $1) WHERE EXISTS (SELECT FROM ins)
)
SELECT id, dedupe_key, true AS inserted FROM ins
UNION ALL
SELECT id, dedupe_key, false FROM __SCHEMA__.jobs
WHERE queue = $1 AND dedupe_key = ANY($10::text[]) AND state IN ('queued', 'running')
UNION ALL
SELECT NULL, NULL, false FROM woke
"""

LIVE_DEDUPE: LiteralString = """
SELECT id, dedupe_key FROM __SCHEMA__.jobs
WHERE queue = $1 AND dedupe_key = ANY($2::text[]) AND state IN ('queued', 'running')
"""

GET_JOB: LiteralString = """
SELECT id, queue, payload, state, attempts, max_attempts, priority, run_at, created_at,
       started_at, finished_at, errors, result, dedupe_key, checkpoint, worker_name, timeout,
       schedule, scheduled_for, lease_until, cancel_requested, concurrency_key, batch_id
FROM __SCHEMA__.jobs WHERE id = $1
"""

OVERVIEW: LiteralString = """
SELECT queue, state, count(*) AS n,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS later,
       max(extract(epoch FROM now() - run_at)::float8)
           FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_ready,
       count(*) FILTER (WHERE state = 'running' AND checkpoint IS NOT NULL) AS checkpointed
FROM __SCHEMA__.jobs GROUP BY queue, state
"""

# The dashboard's overview (overview(estimate=True)) in parts, read in one snapshot, so that
# its cost follows the live jobs rather than the history. OVERVIEW_LIVE counts the queued,
# running and failed jobs, one branch a state so that each reads its own partial index
# (jobs_claim, jobs_slots, jobs_failed): exact, whatever the history. OVERVIEW_SIZE reads the
# table's size in pages, and the queues known without the history (limits set, a live worker
# serving them). A small table's succeeded and cancelled jobs are counted by
# OVERVIEW_FINISHED; a large one's by OVERVIEW_FINISHED_SAMPLE over $1 percent of its pages
# (TABLESAMPLE SYSTEM; REPEATABLE: the same pages each time, so the figures do not jitter from
# one refresh to the next), which the backend scales up and marks estimated. OVERVIEW counts
# every job in one scan: 150-400 ms at 1M finished jobs, paid at each live update of an open
# overview page (bench/web_list.py).
OVERVIEW_LIVE: LiteralString = """
SELECT queue, 'queued' AS state, count(*) AS n,
       count(*) FILTER (WHERE run_at > now()) AS later,
       max(extract(epoch FROM now() - run_at)::float8) FILTER (WHERE run_at <= now())
           AS oldest_ready,
       0::bigint AS checkpointed
FROM __SCHEMA__.jobs WHERE state = 'queued' GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*), 0, NULL, count(*) FILTER (WHERE checkpoint IS NOT NULL)
FROM __SCHEMA__.jobs WHERE state = 'running' GROUP BY queue
UNION ALL
SELECT queue, 'failed', count(*), 0, NULL, 0
FROM __SCHEMA__.jobs WHERE state = 'failed' GROUP BY queue
"""

OVERVIEW_SIZE: LiteralString = """
SELECT pg_relation_size('__SCHEMA__.jobs'::regclass) / current_setting('block_size')::bigint
           AS pages,
       ARRAY(SELECT name FROM __SCHEMA__.queues
             UNION SELECT unnest(queues) FROM __SCHEMA__.workers WHERE state = 'active')
           AS known
"""

OVERVIEW_FINISHED: LiteralString = """
SELECT queue, state, count(*) AS n FROM __SCHEMA__.jobs
WHERE state IN ('succeeded', 'cancelled') GROUP BY queue, state
"""

OVERVIEW_FINISHED_SAMPLE: LiteralString = """
SELECT queue, state, count(*) AS n
FROM __SCHEMA__.jobs TABLESAMPLE SYSTEM ($1) REPEATABLE (0)
WHERE state IN ('succeeded', 'cancelled') GROUP BY queue, state
"""

WORKERS: LiteralString = """
SELECT name, host, pid, queues, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS silent_for
FROM __SCHEMA__.workers WHERE state = 'active' ORDER BY name
"""

# The newest jobs first, by filters that may each be NULL (no filter), paged by keyset: $5 is
# the lowest id of the page before (NULL: the first page). The cursor is written as "id <
# coalesce(...)" rather than "($5 IS NULL OR id < $5)" so that it stays an index condition of
# the backward scan of the primary key in a generic plan too: a deep page then starts at its
# cursor instead of filtering every newer row (bench/web_list.py measures both at 1M jobs).
# The error type is that of the latest entry of the job's history.
LIST_JOBS: LiteralString = """
SELECT id, queue, payload, state, attempts, max_attempts, priority, run_at, created_at,
       started_at, finished_at, errors, result, dedupe_key, checkpoint, worker_name, timeout,
       schedule, scheduled_for, lease_until, cancel_requested, concurrency_key, batch_id
FROM __SCHEMA__.jobs
WHERE id < coalesce($5::bigint, 9223372036854775807)
  AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR schedule = $3) AND ($4::text IS NULL OR errors -> -1 ->> 'type' = $4)
ORDER BY id DESC LIMIT $6
"""

# LIST_JOBS's page without what a job carries (payload, result, checkpoint, the error history
# but its latest entry's type and the start of its message): the rows the dashboard lists.
# $1-$6 are COUNT_JOBS' filters (a JobFilter), $7 the keyset cursor, $8 the limit. A batch's
# members ($6) are read within the span of their ids (batches.first_job to last_job: there is
# no index on batch_id), a range of the primary key.
LIST_JOB_SUMMARIES: LiteralString = """
SELECT id, queue, state, attempts, max_attempts, priority, run_at, created_at, finished_at,
       schedule, worker_name, errors -> -1 ->> 'type' AS error_type,
       left(errors -> -1 ->> 'message', 200) AS error_message
FROM __SCHEMA__.jobs
WHERE id < coalesce($7::bigint, 9223372036854775807)
  AND id <= coalesce($5::bigint, 9223372036854775807)
  AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR schedule = $3) AND ($4::text IS NULL OR errors -> -1 ->> 'type' = $4)
  AND ($6::bigint IS NULL OR (batch_id = $6 AND id BETWEEN
       (SELECT first_job FROM __SCHEMA__.batches WHERE id = $6)
       AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $6)))
ORDER BY id DESC LIMIT $8
"""

# LIST_JOBS's filters, counted up to id $5 (the count the dashboard shows before a cancel of
# them all), of batch $6's members only when it is given.
COUNT_JOBS: LiteralString = """
SELECT count(*) FROM __SCHEMA__.jobs
WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR schedule = $3) AND ($4::text IS NULL OR errors -> -1 ->> 'type' = $4)
  AND id <= coalesce($5::bigint, 9223372036854775807)
  AND ($6::bigint IS NULL OR (batch_id = $6 AND id BETWEEN
       (SELECT first_job FROM __SCHEMA__.batches WHERE id = $6)
       AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $6)))
"""

# CANCEL for every queued or running job matching LIST_JOBS's filters, up to id $5 (of batch $6).
CANCEL_JOBS: LiteralString = """
WITH upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
        cancel_requested = (state = 'running')
    WHERE state IN ('queued', 'running')
      AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2)
      AND ($3::text IS NULL OR schedule = $3)
      AND ($4::text IS NULL OR errors -> -1 ->> 'type' = $4)
      AND id <= coalesce($5::bigint, 9223372036854775807)
      AND ($6::bigint IS NULL OR (batch_id = $6 AND id BETWEEN
           (SELECT first_job FROM __SCHEMA__.batches WHERE id = $6)
           AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $6)))
    RETURNING j.id, j.state, 'queued'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT count(*) FROM upd
"""

# Where a job stands: seconds until due, and the due queued jobs of its queue a claim takes
# first (CLAIM_ONE's order: priority DESC, run_at, id), counted up to $2 along jobs_claim.
QUEUE_POSITION: LiteralString = """
SELECT j.state, extract(epoch FROM j.run_at - now())::float8 AS due_in, now() AS now,
       CASE WHEN j.state <> 'queued' THEN 0 ELSE (
           SELECT count(*) FROM (
               SELECT 1 FROM __SCHEMA__.jobs AS a
               WHERE a.state = 'queued' AND a.queue = j.queue AND a.run_at <= now()
                 AND a.id <> j.id
                 AND (a.priority > j.priority
                      OR (a.priority = j.priority AND (a.run_at, a.id) < (j.run_at, j.id)))
               LIMIT $2
           ) AS ahead
       ) END AS ahead
FROM __SCHEMA__.jobs AS j WHERE j.id = $1
"""

# The jobs that ended since $1 (epoch seconds; NULL: all of the last $3 seconds, and never
# before those), by queue, state and bucket of $2 seconds counted from the epoch, so that a
# bucket's bounds do not move from one read to the next: the backend keeps the buckets that
# are over and reads each once (OperatorReads.throughput), so a refresh reads the newest ones
# only. The last row carries now() alone, for a window in which no job ended.
THROUGHPUT: LiteralString = """
SELECT now() AS now, queue, state, floor(extract(epoch FROM finished_at) / $2)::bigint AS k,
       count(*) AS n
FROM __SCHEMA__.jobs
WHERE state IN ('succeeded', 'failed', 'cancelled')
  AND finished_at >= greatest(to_timestamp($1), now() - make_interval(secs => $3))
GROUP BY queue, state, k
UNION ALL
SELECT now(), NULL, NULL, NULL, NULL
"""

PURGE_WORKERS: LiteralString = """
DELETE FROM __SCHEMA__.workers
WHERE state <> 'active' AND heartbeat_at < now() - make_interval(secs => $1)
"""

STATS: LiteralString = """
SELECT queue, state, count(*) AS n FROM __SCHEMA__.jobs GROUP BY queue, state
"""

# Back to the queue with a fresh count of attempts; wakes idle runners (woke, see the top).
RETRY_FAILED: LiteralString = """
WITH upd AS (
    UPDATE __SCHEMA__.jobs
    SET state = 'queued', attempts = 0, run_at = now(), finished_at = NULL
    WHERE state = 'failed'
      AND ($1::text IS NULL OR queue = $1)
      AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
      AND ($3::bigint IS NULL OR batch_id = $3)
    RETURNING id, queue, state, run_at, 'failed'::text AS was, batch_id
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT (SELECT count(*) FROM upd) AS n, (SELECT count(*) FROM woke) AS woke
"""

# A queued job ends cancelled here and now; a running one is only marked, and its runner
# cancels the handler on its next heartbeat (HEARTBEAT returns the mark).
CANCEL: LiteralString = """
WITH upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
        cancel_requested = (state = 'running')
    WHERE id = $1 AND state IN ('queued', 'running')
    RETURNING j.id, j.state, 'queued'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT id FROM upd
"""

# wait_job(): mark a job that has not ended, so that the statement that ends it notifies. Run
# before reading the job, in a statement of its own: the read then sees either the end (it
# committed first) or a job whose end will notify (this committed first; a concurrent end
# waits for the row lock and sees the mark).
MARK_WAITED: LiteralString = """
UPDATE __SCHEMA__.jobs SET waited = true
WHERE id = $1 AND NOT waited AND state IN ('queued', 'running')
"""

# A member of a batch that is not done stays, whatever its age: the batch's callback reads its
# result. A batch goes once done for as long; the counters of one that stays are left as they
# are (they count members ever added, purged or not).
PURGE: LiteralString = """
WITH gone AS (
    DELETE FROM __SCHEMA__.jobs AS j
    WHERE state IN ('succeeded', 'failed', 'cancelled')
      AND finished_at < now() - make_interval(secs => $1)
      AND (j.batch_id IS NULL
           OR NOT EXISTS (SELECT FROM __SCHEMA__.batches AS b
                          WHERE b.id = j.batch_id AND b.finished_at IS NULL))
    RETURNING 1
), gone_batches AS (
    DELETE FROM __SCHEMA__.batches WHERE finished_at < now() - make_interval(secs => $1)
)
SELECT count(*) FROM gone
"""

# The retention purge of a runner (#18): up to $2 of the jobs PURGE would delete, the longest
# finished first, read off jobs_finished (finished_at, partial on the final states) in index
# order, which stops after $2 entries, so a batch costs the same however much history there
# is. Run in a transaction after PURGE_PLAN: without statistics the planner estimates a
# thousandth of the finished rows and takes a bitmap scan of all of them and a sort instead
# (87 ms a batch at 300k finished, growing with the history; 1 ms with the ordered scan). One
# purger at a time: only where it gets the advisory lock ($3), held until the transaction ends;
# another deletes nothing (got is false). Only the rows deleted are locked, and none another
# holds (SKIP LOCKED): a batch keeps no claim, settle or operator call waiting.
PURGE_BATCH: LiteralString = """
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($3) AS got
), gone AS (
    DELETE FROM __SCHEMA__.jobs
    WHERE id = ANY(ARRAY(
        SELECT id FROM __SCHEMA__.jobs
        WHERE state IN ('succeeded', 'failed', 'cancelled')
          AND finished_at < now() - make_interval(secs => $1)
          AND (SELECT got FROM lock)
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT (SELECT got FROM lock) AS got, (SELECT count(*) FROM gone) AS n
"""

# PURGE_BATCH's plan, for its transaction only (local): the ordered index scans, whatever the
# statistics say.
PURGE_PLAN: LiteralString = """
SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true),
       set_config('enable_seqscan', 'off', true)
"""

# What PURGE would delete: the same condition, counted.
PURGEABLE: LiteralString = """
SELECT queue, state, count(*) AS n FROM __SCHEMA__.jobs AS j
WHERE state IN ('succeeded', 'failed', 'cancelled')
  AND finished_at < now() - make_interval(secs => $1)
  AND (j.batch_id IS NULL
       OR NOT EXISTS (SELECT FROM __SCHEMA__.batches AS b
                      WHERE b.id = j.batch_id AND b.finished_at IS NULL))
GROUP BY queue, state
"""

# The retry policy's max_attempts each queue's latest worker recorded, a live worker first.
POLICY_MAX_ATTEMPTS: LiteralString = """
SELECT DISTINCT ON (q.name) q.name AS queue, w.max_attempts
FROM unnest($1::text[]) AS q(name)
JOIN __SCHEMA__.workers AS w ON q.name = ANY(w.queues)
WHERE w.max_attempts IS NOT NULL
ORDER BY q.name, (w.state = 'active') DESC, w.started_at DESC
"""

# A worker's row, in one statement with the recovery of the jobs a worker of the same name
# (the process this one restarts) still held: they are lost (see the top), not left running.
REGISTER_WORKER: LiteralString = """
WITH old AS (
    UPDATE __SCHEMA__.workers SET state = 'replaced'
    WHERE name = $2 AND state = 'active'
    RETURNING token
), new AS (
    INSERT INTO __SCHEMA__.workers (token, name, host, pid, queues, max_attempts)
    VALUES ($1, $2, $3, $4, $5, $6)
), lost AS (
    SELECT j.id, 'was replaced by a restart of the same name'::text AS why
    FROM __SCHEMA__.jobs AS j
    WHERE j.state = 'running' AND j.worker_token IN (SELECT token FROM old)
    FOR UPDATE OF j
), upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempts >= coalesce(j.max_attempts, 1) THEN 'failed'
                     ELSE 'queued' END,
        finished_at = CASE WHEN j.cancel_requested OR j.attempts >= coalesce(j.max_attempts, 1)
                           THEN now() END,
        run_at = now(),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'type', 'WorkerLost',
            'message', 'worker ' || quote_literal(coalesce(j.worker_name, '?')) || ' ' || lost.why,
            'traceback', NULL,
            'at', now())),
        worker_token = NULL,
        lease_until = NULL,
        cancel_requested = false
    FROM lost WHERE j.id = lost.id
    RETURNING j.id, j.queue, j.state, j.run_at, 'running'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT (SELECT count(*) FROM upd) AS recovered, (SELECT count(*) FROM woke) AS woke
"""

# A clean stop: the jobs the worker still holds are lost (see the top) at once, rather than
# when their leases expire.
UNREGISTER_WORKER: LiteralString = """
WITH w AS (
    UPDATE __SCHEMA__.workers SET state = 'stopped'
    WHERE token = $1 AND state = 'active'
    RETURNING token
), lost AS (
    SELECT j.id, 'stopped while holding it'::text AS why
    FROM __SCHEMA__.jobs AS j
    WHERE j.state = 'running' AND j.worker_token = $1
    FOR UPDATE OF j
), upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempts >= coalesce(j.max_attempts, 1) THEN 'failed'
                     ELSE 'queued' END,
        finished_at = CASE WHEN j.cancel_requested OR j.attempts >= coalesce(j.max_attempts, 1)
                           THEN now() END,
        run_at = now(),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'type', 'WorkerLost',
            'message', 'worker ' || quote_literal(coalesce(j.worker_name, '?')) || ' ' || lost.why,
            'traceback', NULL,
            'at', now())),
        worker_token = NULL,
        lease_until = NULL,
        cancel_requested = false
    FROM lost WHERE j.id = lost.id
    RETURNING j.id, j.queue, j.state, j.run_at, 'running'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT (SELECT count(*) FROM upd) AS recovered, (SELECT count(*) FROM woke) AS woke
"""

# A claim: mark up to $3 due jobs running for worker $1 and return them in claim order. CLAIM_ONE
# and CLAIM differ only in the pick of due jobs inside ARRAY(...) (see the top).
# ANY(ARRAY(subquery)) keeps the plan on the primary key; "id IN (SELECT ...)" turned into a
# sequential scan from about 100 rows a batch (measured on PostgreSQL 15). UPDATE ...
# RETURNING has no order: the outer SELECT puts the batch in claim order. "lost" counts the
# earlier attempts that lost their worker (the runner judges from it whether the job is a
# suspect: Runner.SUSPECT_AFTER); the CASE skips the look into an empty error history.
#
# A claim commits asynchronously: the set_config (an InitPlan, evaluated once, before any row)
# turns synchronous_commit off for the statement's own transaction only, so an idle runner's
# wake-up does not wait for a WAL flush of its claim (0.2-0.4 ms here). A claim a server crash
# loses is simply not claimed: the job is queued with its attempt unused, and the late settle of
# the worker that ran it is fenced out (docs/durability.md).
#
# The leases count from clock_timestamp(), when the rows are taken, not from now(), when the
# statement arrived: a claim that waited behind a lock (an operator's LOCK TABLE, a stalled
# server) longer than the lease would hand out leases already run out, which the first
# recovery after the stall would take back from a live worker (chaos scenario 13 saw it).
#
# $8 and $9 name the attempts of worker $1 whose handlers have ended, outcomes not written yet
# (ids, claims' started_at): a limited queue's pick hands their slots to the jobs it takes
# (migration 13). Only flow_pick reads them, so an unlimited queue's claim pays nothing for them.
#
# CLAIM_ONE, for one queue ($2): one index-ordered scan of jobs_claim that stops at $3 rows.
CLAIM_ONE: LiteralString = """
WITH claimed AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = 'running',
        attempts = j.attempts + 1,
        max_attempts = coalesce(j.max_attempts, $5),
        worker_token = $1,
        worker_name = w.name,
        started_at = clock_timestamp(),
        lease_until = clock_timestamp() + make_interval(secs => $4)
    FROM __SCHEMA__.workers AS w
    WHERE w.token = $1 AND w.state = 'active'
      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
      AND j.id = ANY(ARRAY(
          SELECT id FROM __SCHEMA__.jobs
          WHERE state = 'queued' AND queue = $2 AND run_at <= now()
            AND NOT EXISTS (SELECT FROM __SCHEMA__.queues WHERE name = $2 AND controlled)
          ORDER BY priority DESC, run_at, id
          LIMIT least($3, $6::int)
          FOR UPDATE SKIP LOCKED)
          || (SELECT __SCHEMA__.flow_pick(
                         name, least($3, $6::int), $7, $1, $8::bigint[], $9::timestamptz[])
              FROM __SCHEMA__.queues WHERE name = $2 AND controlled))
    RETURNING j.id, j.queue, j.payload, j.attempts, j.max_attempts, j.checkpoint, j.timeout,
              j.trace_context, extract(epoch FROM now() - j.run_at)::float8 AS waited,
              CASE WHEN jsonb_array_length(j.errors) = 0 THEN 0
                   ELSE (SELECT count(*)::int FROM jsonb_array_elements(j.errors) AS e
                         WHERE e ->> 'type' = 'WorkerLost') END AS lost,
              j.priority, j.run_at, j.schedule, j.scheduled_for, j.started_at, j.batch_id
), rated AS (
    UPDATE __SCHEMA__.queues AS f
    SET rate_starts = ARRAY(
        SELECT t FROM unnest(f.rate_starts || c.starts) AS t
        WHERE t > clock_timestamp() - make_interval(secs => f.rate_seconds)
        ORDER BY t DESC LIMIT f.rate_n)
    FROM (SELECT queue, array_agg(started_at) AS starts FROM claimed GROUP BY queue) AS c
    WHERE f.name = c.queue AND f.rate_n IS NOT NULL
)
SELECT id, queue, payload, attempts, max_attempts, checkpoint, timeout, trace_context, waited,
       lost, schedule, scheduled_for, batch_id, started_at
FROM claimed ORDER BY priority DESC, run_at, id
"""

# Several queues ($2[]): one index-ordered scan per queue (the LATERAL), merged. The controlled
# ones are picked by one call of flow_pick_all, which locks their rows in the order of their
# names (two runners listing the same queues in other orders cannot deadlock). A plain
# "queue = ANY($2)" made the planner sort every queued row of the queues on every claim (31 ms
# against 0.2 ms with a backlog of 50,000). The merge costs about 4 us a job of PostgreSQL's
# time over CLAIM_ONE, which is why one queue gets a statement of its own.
CLAIM: LiteralString = """
WITH claimed AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = 'running',
        attempts = j.attempts + 1,
        max_attempts = coalesce(j.max_attempts, $5),
        worker_token = $1,
        worker_name = w.name,
        started_at = clock_timestamp(),
        lease_until = clock_timestamp() + make_interval(secs => $4)
    FROM __SCHEMA__.workers AS w
    WHERE w.token = $1 AND w.state = 'active'
      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
      AND j.id = ANY(ARRAY(
          SELECT m.id FROM (
              SELECT c.id, c.priority, c.run_at, q.name
              FROM unnest($2::text[], $6::int[]) AS q(name, cap)
              CROSS JOIN LATERAL (
                  SELECT id, priority, run_at FROM __SCHEMA__.jobs
                  WHERE state = 'queued' AND queue = q.name AND run_at <= now()
                    AND NOT EXISTS (SELECT FROM __SCHEMA__.queues AS f
                                    WHERE f.name = q.name AND f.controlled)
                  ORDER BY priority DESC, run_at, id
                  LIMIT least($3, q.cap)
                  FOR UPDATE SKIP LOCKED
              ) AS c
              UNION ALL
              SELECT fj.id, fj.priority, fj.run_at, fj.queue
              FROM __SCHEMA__.jobs AS fj
              WHERE fj.id = ANY((
                  SELECT __SCHEMA__.flow_pick_all(
                      array_agg(q.name), array_agg(least($3, q.cap)), $7,
                      $1, $8::bigint[], $9::timestamptz[])
                  FROM unnest($2::text[], $6::int[]) AS q(name, cap)
                  JOIN __SCHEMA__.queues AS f ON f.name = q.name AND f.controlled
                  HAVING count(*) > 0)::bigint[])
          ) AS m
          ORDER BY m.priority DESC,
                   row_number() OVER (PARTITION BY m.name
                                      ORDER BY m.priority DESC, m.run_at, m.id),
                   m.run_at, m.id
          LIMIT $3))
    RETURNING j.id, j.queue, j.payload, j.attempts, j.max_attempts, j.checkpoint, j.timeout,
              j.trace_context, extract(epoch FROM now() - j.run_at)::float8 AS waited,
              CASE WHEN jsonb_array_length(j.errors) = 0 THEN 0
                   ELSE (SELECT count(*)::int FROM jsonb_array_elements(j.errors) AS e
                         WHERE e ->> 'type' = 'WorkerLost') END AS lost,
              j.priority, j.run_at, j.schedule, j.scheduled_for, j.started_at, j.batch_id
), rated AS (
    UPDATE __SCHEMA__.queues AS f
    SET rate_starts = ARRAY(
        SELECT t FROM unnest(f.rate_starts || c.starts) AS t
        WHERE t > clock_timestamp() - make_interval(secs => f.rate_seconds)
        ORDER BY t DESC LIMIT f.rate_n)
    FROM (SELECT queue, array_agg(started_at) AS starts FROM claimed GROUP BY queue) AS c
    WHERE f.name = c.queue AND f.rate_n IS NOT NULL
)
SELECT id, queue, payload, attempts, max_attempts, checkpoint, timeout, trace_context, waited,
       lost, schedule, scheduled_for, batch_id, started_at
FROM claimed ORDER BY priority DESC, run_at, id
"""

# A flush in which every job succeeded with nothing to keep (the common case of a busy queue):
# ids only, no unnest join, nothing goes back to the queue. About 2 us a job less of
# PostgreSQL's time than SETTLE, and four arrays fewer to build and encode. A success whose
# result could not be kept carries an error entry for the history, so its flush takes SETTLE
# (the errors column), like one with a result: plain successes pay nothing for that case.
# Fenced like SETTLE, by the token, each job's attempt ($3) and its claim's time ($4, the job's
# started_at as the claim returned it; each matched to its id in $2). The
# ids are joined to the jobs (UPDATE ... FROM unnest, a primary-key look-up a row), linear in
# the flush: an EXISTS over the unnested pairs for each row found by id = ANY($2) was quadratic
# (5,000 outcomes took 3.7 s against 9 ms for 1,000; bench/settle_size.py).
#
# The fence (state, token, attempt; SETTLE and the two UNBATCHED statements have the same) is a
# CASE so that the rows are found by primary key whatever indexes of running jobs exist: as
# plain conditions, "state = 'running'" proves the predicate of such a partial index, and
# without statistics the planner read every running job of every worker through jobs_slots and
# ran the unnest again for each (loops=100, 1.9 ms for 100 outcomes against 0.55 ms by primary
# key). A CASE without ELSE is NULL where the fence fails, which WHERE takes as false.
SETTLE_SUCCEEDED: LiteralString = """
WITH upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = 'succeeded', finished_at = now(), result = NULL,
        worker_token = NULL, lease_until = NULL, cancel_requested = false
    FROM unnest($2::bigint[], $3::int[], $4::timestamptz[]) AS o(id, attempt, claimed_at)
    WHERE j.id = o.id
      AND CASE WHEN j.state = 'running' AND j.worker_token = $1
               THEN (o.attempt IS NULL OR o.attempt = j.attempts)
                    AND (o.claimed_at IS NULL OR o.claimed_at = j.started_at) END
    RETURNING j.id, j.state, 'running'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT id FROM upd
"""

# Any mix of outcomes, one row of the arrays $2-$10 a job, fenced by the worker's token ($1), the
# attempt ($9) and the claim's time ($10, the started_at the claim returned; NULL: not fenced by
# it): a job recovered meanwhile is not this worker's to settle, nor is a later attempt of it this
# worker claimed again, nor a job that reuses the id of one lost in a failover to a standby that
# lagged (same token, same attempt, another claim). The rows carry facts, not outcome kinds: the
# state, whether the claim's attempt is given back, the delay until the job is due again (NULL: it
# is not queued again) and whether it is finished, each computed from the kind once, in Python
# (outcome.py). Wakes idle runners for the jobs that went back to the queue due now (woke, see the
# top).
SETTLE: LiteralString = """
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::bool[], $5::float8[], $6::bool[],
                         $7::jsonb[], $8::jsonb[], $9::int[], $10::timestamptz[])
        AS o(id, state, given_back, due, finished, result, error, attempt, claimed_at)
), upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = o.state,
        attempts = j.attempts - o.given_back::int,
        run_at = CASE WHEN o.due IS NULL THEN j.run_at
                      ELSE now() + make_interval(secs => o.due) END,
        finished_at = CASE WHEN o.finished THEN now() END,
        result = o.result,
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(o.error || jsonb_build_object('at', now()))
                 END,
        worker_token = NULL,
        lease_until = NULL,
        cancel_requested = false
    FROM o
    WHERE j.id = o.id
      AND CASE WHEN j.state = 'running' AND j.worker_token = $1
               THEN (o.attempt IS NULL OR o.attempt = j.attempts)
                    AND (o.claimed_at IS NULL OR o.claimed_at = j.started_at) END
    RETURNING j.id, j.queue, j.state, j.run_at, 'running'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT id FROM upd
UNION ALL
SELECT NULL FROM woke
"""

# SETTLE_SUCCEEDED and SETTLE for a flush in which no job is a batch's member, as the backend
# knows from its claims: the same statements without the batch bookkeeping, which costs a
# settle of jobs of no batch about 8% of PostgreSQL's time (measured: 1.39 against 1.51 ms a
# plain settle of 100 jobs). Each changes only rows of no batch (batch_id IS NULL), so a
# member it was wrongly given is left alone, and the backend settles what it left with
# SETTLE_SUCCEEDED or SETTLE: no member can end without being counted.
SETTLE_SUCCEEDED_UNBATCHED: LiteralString = """
UPDATE __SCHEMA__.jobs AS j
SET state = 'succeeded', finished_at = now(), result = NULL,
    worker_token = NULL, lease_until = NULL, cancel_requested = false
FROM unnest($2::bigint[], $3::int[], $4::timestamptz[]) AS o(id, attempt, claimed_at)
WHERE j.id = o.id
  AND CASE WHEN j.state = 'running' AND j.worker_token = $1 AND j.batch_id IS NULL
           THEN (o.attempt IS NULL OR o.attempt = j.attempts)
                    AND (o.claimed_at IS NULL OR o.claimed_at = j.started_at) END
RETURNING j.id,
          CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
               THEN pg_notify(__FINISHED__, j.id::text) END
"""

SETTLE_UNBATCHED: LiteralString = """
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::bool[], $5::float8[], $6::bool[],
                         $7::jsonb[], $8::jsonb[], $9::int[], $10::timestamptz[])
        AS o(id, state, given_back, due, finished, result, error, attempt, claimed_at)
), upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = o.state,
        attempts = j.attempts - o.given_back::int,
        run_at = CASE WHEN o.due IS NULL THEN j.run_at
                      ELSE now() + make_interval(secs => o.due) END,
        finished_at = CASE WHEN o.finished THEN now() END,
        result = o.result,
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(o.error || jsonb_build_object('at', now()))
                 END,
        worker_token = NULL,
        lease_until = NULL,
        cancel_requested = false
    FROM o
    WHERE j.id = o.id
      AND CASE WHEN j.state = 'running' AND j.worker_token = $1 AND j.batch_id IS NULL
               THEN (o.attempt IS NULL OR o.attempt = j.attempts)
                    AND (o.claimed_at IS NULL OR o.claimed_at = j.started_at) END
    RETURNING j.id, j.queue, j.state, j.run_at,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
)
SELECT id FROM upd
UNION ALL
SELECT NULL FROM woke
"""

# clock_timestamp(), not now(): now() is when the statement arrived, and a heartbeat that
# waited behind a lock (an operator's LOCK TABLE, a stalled server) would record that moment,
# so the first recovery after the stall would judge a worker whose heartbeat had just landed
# silent for the whole stall. The heartbeat and the leases count from when it landed. Its jobs
# are found by primary key, the fence in a CASE for the reason given at SETTLE_SUCCEEDED (as
# plain conditions the planner AND-ed the ids with every running job of jobs_slots).
HEARTBEAT: LiteralString = """
WITH w AS (
    UPDATE __SCHEMA__.workers SET heartbeat_at = clock_timestamp()
    WHERE token = $1 AND state = 'active'
    RETURNING token
), held AS (
    UPDATE __SCHEMA__.jobs SET lease_until = clock_timestamp() + make_interval(secs => $3)
    WHERE id = ANY($2::bigint[]) AND CASE WHEN state = 'running' THEN worker_token = $1 END
      AND EXISTS (SELECT 1 FROM w)
    RETURNING id, cancel_requested
)
SELECT EXISTS (SELECT 1 FROM w) AS alive,
       ARRAY(SELECT id FROM held) AS held,
       ARRAY(SELECT id FROM held WHERE cancel_requested) AS cancel,
       EXISTS (SELECT 1 FROM __SCHEMA__.workers WHERE token = $1 AND state = 'replaced')
           AS replaced
"""

# One pruner at a time: the statement runs only where it gets the advisory lock ($2), which
# it holds until it ends. Workers are judged by the database's clock, never a worker's.
RECOVER: LiteralString = """
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($2) AS got
), pruned AS (
    UPDATE __SCHEMA__.workers SET state = 'pruned'
    WHERE state = 'active' AND heartbeat_at < now() - make_interval(secs => $1)
      AND (SELECT got FROM lock)
    RETURNING token, name
), gone AS (
    SELECT token FROM pruned
    UNION ALL
    SELECT token FROM __SCHEMA__.workers WHERE state IN ('pruned', 'replaced', 'stopped')
), lost AS (
    SELECT j.id,
           CASE WHEN j.worker_token IN (SELECT token FROM gone) THEN 'stopped heartbeating'
                ELSE 'let the job''s lease expire' END AS why
    FROM __SCHEMA__.jobs AS j
    WHERE j.state = 'running' AND (SELECT got FROM lock)
      AND (j.lease_until < now() OR j.worker_token IN (SELECT token FROM gone))
    FOR UPDATE OF j SKIP LOCKED
), upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempts >= coalesce(j.max_attempts, 1) THEN 'failed'
                     ELSE 'queued' END,
        finished_at = CASE WHEN j.cancel_requested OR j.attempts >= coalesce(j.max_attempts, 1)
                           THEN now() END,
        run_at = now(),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'type', 'WorkerLost',
            'message', 'worker ' || quote_literal(coalesce(j.worker_name, '?')) || ' ' || lost.why,
            'traceback', NULL,
            'at', now())),
        worker_token = NULL,
        lease_until = NULL,
        cancel_requested = false
    FROM lost WHERE j.id = lost.id
    RETURNING j.id, j.queue, j.state, j.run_at, 'running'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue)
    FROM (SELECT DISTINCT queue FROM upd WHERE state = 'queued' AND run_at <= now()) AS q
), bd AS (
    SELECT batch_id AS id,
           count(*) FILTER (WHERE state = 'succeeded')
               - count(*) FILTER (WHERE was = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') - count(*) FILTER (WHERE was = 'failed')
               AS failed,
           count(*) FILTER (WHERE state = 'cancelled')
               - count(*) FILTER (WHERE was = 'cancelled') AS cancelled,
           false AS closes, false AS cancels
    FROM upd
    WHERE batch_id IS NOT NULL
      AND (state IN ('succeeded', 'failed', 'cancelled')
           OR was IN ('succeeded', 'failed', 'cancelled'))
    GROUP BY batch_id
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT (SELECT count(*) FROM pruned) AS pruned, (SELECT count(*) FROM upd) AS recovered,
       (SELECT count(*) FROM woke) AS woke
"""

SAVE_CHECKPOINT: LiteralString = """
UPDATE __SCHEMA__.jobs
SET checkpoint = $3::jsonb, lease_until = now() + make_interval(secs => $4)
WHERE id = $2 AND state = 'running' AND worker_token = $1
RETURNING id
"""

# The earliest run_at among queued jobs, by a skip scan over jobs_claim (queue, priority DESC,
# run_at, id): within a queue and priority the index is in run_at order, so the first entry
# of each priority level is that level's earliest job. One index probe per (queue, priority)
# present, however long the backlog; no index of its own to write on every enqueue.
NEXT_DUE: LiteralString = """
WITH RECURSIVE level AS (
    SELECT f.queue, f.priority, f.run_at
    FROM unnest($1::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT queue, priority, run_at FROM __SCHEMA__.jobs
        WHERE state = 'queued' AND queue = q.name
        ORDER BY priority DESC, run_at, id
        LIMIT 1
    ) AS f
    WHERE NOT EXISTS (SELECT FROM __SCHEMA__.queues AS s WHERE s.name = q.name AND s.paused)
    UNION ALL
    SELECT n.queue, n.priority, n.run_at
    FROM level AS l
    CROSS JOIN LATERAL (
        SELECT queue, priority, run_at FROM __SCHEMA__.jobs
        WHERE state = 'queued' AND queue = l.queue AND priority < l.priority
        ORDER BY priority DESC, run_at, id
        LIMIT 1
    ) AS n
)
SELECT extract(epoch FROM min(run_at) - now())::float8 AS due,
       extract(epoch FROM min(run_at) FILTER (WHERE queue NOT IN (
           SELECT name FROM __SCHEMA__.queues WHERE controlled)) - now())::float8 AS free
FROM level
"""


# -- flow control (#14) ----------------------------------------------------------------------

# A queue's limits, all at once (NULL removes one); its pause and rate history stay. Wakes
# idle runners of the queue: a limit raised or removed may let jobs start now.
CONFIGURE_QUEUE: LiteralString = """
WITH up AS (
    INSERT INTO __SCHEMA__.queues AS f (name, concurrency, key_concurrency, rate_n, rate_seconds)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (name) DO UPDATE
    SET concurrency = EXCLUDED.concurrency, key_concurrency = EXCLUDED.key_concurrency,
        rate_n = EXCLUDED.rate_n, rate_seconds = EXCLUDED.rate_seconds, updated_at = now()
    RETURNING name
)
SELECT pg_notify(__CHANNEL__, name) FROM up
"""

# Pause ($2 true) or resume a queue; a resume wakes its idle runners.
PAUSE_QUEUE: LiteralString = """
WITH up AS (
    INSERT INTO __SCHEMA__.queues AS f (name, paused) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING name, paused
)
SELECT CASE WHEN NOT paused THEN pg_notify(__CHANNEL__, name) END FROM up
"""

# Every queue with settings or live jobs: its settings and its use now. "key_held" counts the
# due jobs whose concurrency key is at the queue's key limit; "recent" the starts within the
# rate window. One pass over the live rows (jobs_claim and jobs_slots hold them).
QUEUES: LiteralString = """
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS due
    FROM __SCHEMA__.jobs WHERE state IN ('queued', 'running')
    GROUP BY queue
), busy AS (
    SELECT queue, concurrency_key, count(*) AS n FROM __SCHEMA__.jobs
    WHERE state = 'running' AND concurrency_key IS NOT NULL
    GROUP BY queue, concurrency_key
), key_held AS (
    SELECT j.queue, count(*) AS n
    FROM __SCHEMA__.jobs AS j
    JOIN __SCHEMA__.queues AS f ON f.name = j.queue AND f.key_concurrency IS NOT NULL
    JOIN busy AS b ON b.queue = j.queue AND b.concurrency_key = j.concurrency_key
    WHERE j.state = 'queued' AND j.run_at <= now() AND b.n >= f.key_concurrency
    GROUP BY j.queue
)
SELECT coalesce(f.name, l.queue) AS name, coalesce(f.paused, false) AS paused,
       f.concurrency, f.key_concurrency, f.rate_n, f.rate_seconds,
       (SELECT count(*) FROM unnest(f.rate_starts) AS t
        WHERE t > clock_timestamp() - make_interval(secs => f.rate_seconds)) AS recent,
       coalesce(l.running, 0) AS running, coalesce(l.queued, 0) AS queued,
       coalesce(l.due, 0) AS due, coalesce(k.n, 0) AS key_held
FROM __SCHEMA__.queues AS f
FULL JOIN live AS l ON l.queue = f.name
LEFT JOIN key_held AS k ON k.queue = coalesce(f.name, l.queue)
ORDER BY 1
"""


# -- schedules (#15) ------------------------------------------------------------------------

# With the clock: the one row of "clock" stands even when no schedule is stored.
SCHEDULES: LiteralString = """
SELECT clock.now, name, definition::text AS definition, revision, next_tick, last_tick,
       skipped, paused
FROM (SELECT now() AS now) AS clock
LEFT JOIN __SCHEMA__.schedules ON true
ORDER BY name
"""

# A new schedule, or a changed definition (jsonb equality: key order and spacing do not
# count) with its next tick; an equal definition changes nothing. The second SELECT returns
# the row as it stands when nothing changed. xmax is 0 on a row the INSERT created.
PUT_SCHEDULE: LiteralString = """
WITH up AS (
    INSERT INTO __SCHEMA__.schedules AS s (name, definition, next_tick)
    VALUES ($1, $2::jsonb, $3)
    ON CONFLICT (name) DO UPDATE
    SET definition = EXCLUDED.definition, revision = s.revision + 1,
        next_tick = EXCLUDED.next_tick, updated_at = now()
    WHERE s.definition <> EXCLUDED.definition
    RETURNING name, definition::text AS definition, revision, next_tick, last_tick, skipped,
              paused, s.xmax::text <> '0' AS replaced
)
SELECT * FROM up
UNION ALL
SELECT name, definition::text AS definition, revision, next_tick, last_tick, skipped, paused,
       false
FROM __SCHEMA__.schedules
WHERE name = $1 AND NOT EXISTS (SELECT FROM up)
"""

# The claim of a schedule's due ticks: advance it from $3 to $4 if it still stands at
# revision $2 and next tick $3, and insert one job per tick of $5, in one statement. Racing
# claimers queue on the row lock of "cur"; the FOR UPDATE hands each loser the winner's
# version of the row (READ COMMITTED re-reads a locked row), which the UPDATE's condition
# then refuses, and which the loser gets back as the schedule's state: one round trip, won or
# lost. The jobs are made from the definition of that revision. A paused schedule advances
# and counts its ticks as skipped. The unique index on
# (schedule, scheduled_for) makes a tick that somehow has a job already insert nothing.
CLAIM_TICKS: LiteralString = """
WITH cur AS (
    SELECT name, definition, revision, next_tick, last_tick, skipped, paused
    FROM __SCHEMA__.schedules WHERE name = $1
    FOR UPDATE
), upd AS (
    UPDATE __SCHEMA__.schedules AS s
    SET next_tick = $4,
        last_tick = CASE WHEN cur.paused OR cardinality($5::timestamptz[]) = 0 THEN s.last_tick
                         ELSE (SELECT max(t) FROM unnest($5::timestamptz[]) AS t) END,
        skipped = s.skipped + $6
                  + CASE WHEN cur.paused THEN cardinality($5::timestamptz[]) ELSE 0 END,
        updated_at = now()
    FROM cur
    WHERE s.name = cur.name AND cur.revision = $2 AND cur.next_tick = $3
    RETURNING s.name, s.definition, s.revision, s.next_tick, s.last_tick, s.skipped, s.paused
), ins AS (
    INSERT INTO __SCHEMA__.jobs
        (queue, payload, priority, max_attempts, trace_context, schedule, scheduled_for)
    SELECT upd.definition ->> 'queue', upd.definition -> 'payload',
           (upd.definition ->> 'priority')::integer,
           (upd.definition ->> 'max_attempts')::integer, $7::jsonb, $1, t.tick
    FROM upd CROSS JOIN unnest($5::timestamptz[]) AS t(tick)
    WHERE NOT upd.paused
    ORDER BY t.tick
    ON CONFLICT (schedule, scheduled_for) WHERE scheduled_for IS NOT NULL DO NOTHING
    RETURNING id, queue
), woke AS (
    SELECT pg_notify(__CHANNEL__, q.queue) FROM (SELECT DISTINCT queue FROM ins) AS q
)
SELECT now() AS now, EXISTS (SELECT FROM upd) AS won, ARRAY(SELECT id FROM ins ORDER BY id) AS ids,
       (SELECT count(*) FROM woke) AS woke,
       r.name, r.definition::text AS definition, r.revision, r.next_tick, r.last_tick, r.skipped,
       r.paused
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT * FROM upd
    UNION ALL
    SELECT * FROM cur WHERE NOT EXISTS (SELECT FROM upd)
) AS r ON true
"""

# A pause keeps the next tick (runners claim and skip its ticks); a resume of a paused
# schedule continues from $3, the first tick after now.
PAUSE_SCHEDULE: LiteralString = """
UPDATE __SCHEMA__.schedules
SET paused = $2,
    next_tick = CASE WHEN paused AND NOT $2 THEN $3 ELSE next_tick END,
    updated_at = now()
WHERE name = $1
RETURNING name
"""

REMOVE_SCHEDULE: LiteralString = """
DELETE FROM __SCHEMA__.schedules WHERE name = $1 RETURNING name
"""

# A manual run: one job of the stored definition, of no tick (scheduled_for NULL).
RUN_SCHEDULE: LiteralString = """
WITH ins AS (
    INSERT INTO __SCHEMA__.jobs (queue, payload, priority, max_attempts, schedule)
    SELECT definition ->> 'queue', definition -> 'payload',
           (definition ->> 'priority')::integer, (definition ->> 'max_attempts')::integer, name
    FROM __SCHEMA__.schedules WHERE name = $1
    RETURNING id, queue
), woke AS (
    SELECT pg_notify(__CHANNEL__, queue) FROM ins
)
SELECT id, (SELECT count(*) FROM woke) AS woke FROM ins
"""


# -- batches (#16) --------------------------------------------------------------------------

# A batch and its members in one statement: the members take its id (drawn first), its total
# is their count, first_job and last_job the span of their ids. Closed at once with $12
# (enqueue_batch) unless it has no member: then the backend closes it with CLOSE_BATCH in the
# same transaction, which enqueues its callbacks. The last row carries the batch id with no
# job id, so that a batch of no member still returns it.
ENQUEUE_BATCH: LiteralString = """
WITH bid AS (
    SELECT nextval('__SCHEMA__.batches_id_seq') AS id
), ins AS (
    INSERT INTO __SCHEMA__.jobs
        (queue, payload, priority, run_at, max_attempts, timeout, trace_context, batch_id)
    SELECT $1, t.payload, $3, coalesce($4, now() + make_interval(secs => $5)), $6, $7, $8::jsonb,
           bid.id
    FROM bid CROSS JOIN jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(payload, ord)
    ORDER BY t.ord
    RETURNING id
), b AS (
    INSERT INTO __SCHEMA__.batches
        (id, name, queue, state, total, on_complete, on_success, trace_context, first_job,
         last_job)
    SELECT bid.id, $9, $1,
           CASE WHEN $12 AND jsonb_array_length($2::jsonb) > 0 THEN 'closed' ELSE 'open' END,
           jsonb_array_length($2::jsonb), $10::jsonb, $11::jsonb, $8::jsonb,
           (SELECT min(id) FROM ins), (SELECT max(id) FROM ins)
    FROM bid
    RETURNING id
), woke AS (
    SELECT pg_notify(__CHANNEL__, $1) WHERE EXISTS (SELECT FROM ins)
)
SELECT id FROM ins
UNION ALL
SELECT NULL FROM woke
UNION ALL
SELECT -id FROM b
"""

# Members for batch $9, if it takes them: open, or closed with members pending (a running
# member's handler adding to its own batch). The batch row is locked first, so a concurrent
# statement ending its last member either commits first (then this one sees it finished and
# adds nothing) or waits for this one (and sees the new total). "took" is 0 when it added
# nothing; "state" then says why (NULL: no such batch).
ADD_TO_BATCH: LiteralString = """
WITH b AS (
    SELECT id FROM __SCHEMA__.batches
    WHERE id = $9 AND (state = 'open' OR (state = 'closed' AND total > succeeded + failed
                                                                        + cancelled))
    FOR UPDATE
), ins AS (
    INSERT INTO __SCHEMA__.jobs
        (queue, payload, priority, run_at, max_attempts, timeout, trace_context, batch_id)
    SELECT $1, t.payload, $3, coalesce($4, now() + make_interval(secs => $5)), $6, $7, $8::jsonb,
           b.id
    FROM b CROSS JOIN jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(payload, ord)
    ORDER BY t.ord
    RETURNING id
), grow AS (
    UPDATE __SCHEMA__.batches AS g
    SET total = g.total + (SELECT count(*) FROM ins),
        first_job = coalesce(g.first_job, (SELECT min(id) FROM ins)),
        last_job = greatest(g.last_job, (SELECT max(id) FROM ins))
    FROM b WHERE g.id = b.id
), woke AS (
    SELECT pg_notify(__CHANNEL__, $1) WHERE EXISTS (SELECT FROM ins)
)
SELECT NULL::bigint AS id, (SELECT count(*) FROM b) AS took,
       (SELECT state FROM __SCHEMA__.batches WHERE id = $9) AS state
UNION ALL
SELECT id, NULL, NULL FROM ins
UNION ALL
SELECT NULL, NULL, NULL FROM woke
"""

BATCH_QUEUE: LiteralString = """
SELECT queue FROM __SCHEMA__.batches WHERE id = $1
"""

# Closing is BATCH_FINISH over a "bd" of the batch alone that closes it: a batch with no
# pending member finishes here, its callbacks enqueued. Idempotent.
CLOSE_BATCH: LiteralString = """
WITH bd AS (
    SELECT id, 0::bigint AS succeeded, 0::bigint AS failed, 0::bigint AS cancelled,
           true AS closes, false AS cancels
    FROM __SCHEMA__.batches WHERE id = $1
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT count(*) AS found FROM bd
"""

# The queued members end cancelled, the running ones are marked for their runners (as CANCEL
# does), then BATCH_FINISH counts the cancelled and marks the batch cancelled (closed). Member
# rows another statement holds (a claim taking them, a settle ending them) are skipped rather
# than waited for, so no lock is waited for while this holds others; "left" counts members
# still to cancel as the statement began, and the backend runs it again while it skipped any.
CANCEL_BATCH: LiteralString = """
WITH upd AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = CASE WHEN j.state = 'queued' THEN 'cancelled' ELSE j.state END,
        finished_at = CASE WHEN j.state = 'queued' THEN now() ELSE j.finished_at END,
        cancel_requested = (j.state = 'running')
    WHERE j.id = ANY(ARRAY(
        SELECT id FROM __SCHEMA__.jobs
        WHERE id BETWEEN (SELECT first_job FROM __SCHEMA__.batches WHERE id = $1)
                     AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $1)
          AND batch_id = $1
          AND (state = 'queued' OR (state = 'running' AND NOT cancel_requested))
        ORDER BY id
        FOR UPDATE SKIP LOCKED))
      AND (j.state = 'queued' OR (j.state = 'running' AND NOT j.cancel_requested))
    RETURNING j.id, j.state, 'queued'::text AS was, j.batch_id,
              CASE WHEN j.waited AND j.state IN ('succeeded', 'failed', 'cancelled')
                   THEN pg_notify(__FINISHED__, j.id::text) END
), bd AS (
    SELECT id, 0::bigint AS succeeded, 0::bigint AS failed,
           (SELECT count(*) FROM upd WHERE state = 'cancelled') AS cancelled,
           false AS closes, true AS cancels
    FROM __SCHEMA__.batches WHERE id = $1
), bl AS MATERIALIZED (
    SELECT b.id, b.total, b.on_complete, b.on_success, b.complete_job, b.success_job,
           b.succeeded + bd.succeeded AS succeeded, b.failed + bd.failed AS failed,
           b.cancelled + bd.cancelled AS cancelled,
           b.state = 'cancelled' OR (bd.cancels AND b.state <> 'finished') AS cancelling,
           b.state <> 'open' OR bd.closes OR bd.cancels AS closed,
           (b.state <> 'open' OR bd.closes OR bd.cancels)
               AND b.total = b.succeeded + bd.succeeded + b.failed + bd.failed
                             + b.cancelled + bd.cancelled AS done
    FROM __SCHEMA__.batches AS b
    JOIN bd ON bd.id = b.id
    ORDER BY b.id
    FOR UPDATE OF b
), bu AS (
    UPDATE __SCHEMA__.batches AS b
    SET succeeded = bl.succeeded, failed = bl.failed, cancelled = bl.cancelled,
        state = CASE WHEN bl.cancelling THEN 'cancelled' WHEN NOT bl.closed THEN 'open'
                     WHEN bl.done THEN 'finished' ELSE 'closed' END,
        finished_at = CASE WHEN bl.done THEN coalesce(b.finished_at, now()) END,
        complete_job = CASE WHEN bl.done AND bl.on_complete IS NOT NULL
                            THEN coalesce(bl.complete_job, nextval('__SCHEMA__.jobs_id_seq'))
                            ELSE bl.complete_job END,
        success_job = CASE WHEN bl.done AND bl.on_success IS NOT NULL
                                AND bl.succeeded = bl.total
                           THEN coalesce(bl.success_job, nextval('__SCHEMA__.jobs_id_seq'))
                           ELSE bl.success_job END
    FROM bl
    WHERE b.id = bl.id
    RETURNING b.id, b.complete_job, b.success_job, b.on_complete, b.on_success, b.trace_context,
              bl.complete_job AS had_complete, bl.success_job AS had_success,
              CASE WHEN bl.done THEN pg_notify(__FINISHED__, 'batch ' || b.id) END
), bcb AS (
    INSERT INTO __SCHEMA__.jobs (id, queue, payload, priority, max_attempts, trace_context)
    SELECT c.id, c.spec ->> 'queue',
           jsonb_build_object('batch_id', bu.id, 'callback', c.which, 'payload',
                              c.spec -> 'payload'),
           coalesce((c.spec ->> 'priority')::integer, 0), (c.spec ->> 'max_attempts')::integer,
           bu.trace_context
    FROM bu
    CROSS JOIN LATERAL (VALUES ('on_complete', bu.complete_job, bu.had_complete, bu.on_complete),
                               ('on_success', bu.success_job, bu.had_success, bu.on_success))
        AS c(which, id, had, spec)
    WHERE c.id IS NOT NULL AND c.had IS NULL
    RETURNING pg_notify(__CHANNEL__, queue)
)
SELECT (SELECT count(*) FROM bd) AS found,
       (SELECT count(*) FROM __SCHEMA__.jobs
        WHERE id BETWEEN (SELECT first_job FROM __SCHEMA__.batches WHERE id = $1)
                     AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $1)
          AND batch_id = $1
          AND (state = 'queued' OR (state = 'running' AND NOT cancel_requested)))
       - (SELECT count(*) FROM upd) AS left
"""

# Running members are counted from the running jobs (jobs_slots since migration 12: a few rows
# a worker), not from the batch's members (the MATERIALIZED keeps it to that scan), so a read
# costs the same for 10 members as for 10 million.
GET_BATCH: LiteralString = """
WITH r AS MATERIALIZED (
    SELECT batch_id FROM __SCHEMA__.jobs WHERE state = 'running'
)
SELECT b.id, b.name, b.state, b.total, b.succeeded, b.failed, b.cancelled, b.created_at,
       b.finished_at, b.on_complete, b.on_success, b.complete_job, b.success_job,
       (SELECT count(*) FROM r WHERE r.batch_id = $1) AS running
FROM __SCHEMA__.batches AS b WHERE b.id = $1
"""

LIST_BATCHES: LiteralString = """
WITH b AS (
    SELECT * FROM __SCHEMA__.batches ORDER BY id DESC LIMIT $1
), r AS MATERIALIZED (
    SELECT batch_id, count(*) AS n FROM __SCHEMA__.jobs
    WHERE state = 'running' AND batch_id IS NOT NULL
    GROUP BY batch_id
)
SELECT b.id, b.name, b.state, b.total, b.succeeded, b.failed, b.cancelled, b.created_at,
       b.finished_at, b.on_complete, b.on_success, b.complete_job, b.success_job,
       coalesce(r.n, 0) AS running
FROM b LEFT JOIN r ON r.batch_id = b.id
ORDER BY b.id DESC
"""

# A page of members, by keyset on id within the batch's span of ids (first_job to last_job):
# a range of the primary key, which holds the members in order, and the jobs enqueued between
# them by others, skipped.
BATCH_PAGE: LiteralString = """
SELECT id, queue, payload, state, attempts, max_attempts, priority, run_at, created_at,
       started_at, finished_at, errors, result, dedupe_key, checkpoint, worker_name, timeout,
       schedule, scheduled_for, lease_until, cancel_requested, concurrency_key, batch_id
FROM __SCHEMA__.jobs
WHERE id > $2
  AND id BETWEEN (SELECT first_job FROM __SCHEMA__.batches WHERE id = $1)
             AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $1)
  AND batch_id = $1
ORDER BY id LIMIT $3
"""

BATCH_FAILURES: LiteralString = """
SELECT last.e ->> 'type' AS type, last.e ->> 'message' AS message, count(*) AS n,
       min(j.id) AS example
FROM __SCHEMA__.jobs AS j CROSS JOIN LATERAL (SELECT j.errors -> -1 AS e) AS last
WHERE j.id BETWEEN (SELECT first_job FROM __SCHEMA__.batches WHERE id = $1)
               AND (SELECT last_job FROM __SCHEMA__.batches WHERE id = $1)
  AND j.batch_id = $1 AND j.state = 'failed'
GROUP BY 1, 2
ORDER BY n DESC, example
LIMIT $2
"""

OPEN_BATCHES: LiteralString = """
SELECT count(*) FROM __SCHEMA__.batches WHERE finished_at IS NULL
"""
