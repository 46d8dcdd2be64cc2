-- batchworks schema, version 12: one index of running jobs, not two (#18).
--
-- jobs_running (worker_token) and jobs_slots (queue, concurrency_key, migration 7) index the
-- same rows, the running jobs, so every claim wrote an entry into each: three index entries a
-- claim (with the primary key's) where two do. The statements that read running jobs by their
-- worker read them through the primary key (the settles, the heartbeat: they name their jobs) or
-- through jobs_slots (recovery and a worker's registration read every running job, a few per
-- worker): tests/postgres/test_postgres_backend.py asserts their plans on a table never
-- analyzed.
--
-- A DROP INDEX takes an exclusive lock on jobs for a moment (the index is not read to drop it);
-- workers of earlier versions run on unchanged, reading running jobs through those two indexes.
DROP INDEX __SCHEMA__.jobs_running;

-- flow_pick (migration 7) as it was, but for a queue without key_concurrency the pick locks its
-- rows itself, FOR UPDATE SKIP LOCKED, as the unlimited claim's pick does: the ids it returns
-- were one more scan of the primary key before (about 200 index probes a claim of 100). The
-- guarantee is the same: the queue's row lock serialises the claims of a limited queue, and the
-- count of its running jobs, taken after that lock in a fresh snapshot, bounds the pick. A row
-- another transaction locked is skipped, and a locked row is checked again at its latest
-- version (still queued, still due) before it is returned. The pick of a key-limited queue
-- still locks only its picks after ranking the candidates (FOR UPDATE cannot go with the
-- window function that ranks them), as before.
CREATE OR REPLACE FUNCTION __SCHEMA__.flow_pick(q text, wanted integer, lookahead integer)
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg    record;
    room   integer := wanted;
    busy   integer;
    held   jsonb;
    picked bigint[];
BEGIN
    IF room <= 0 THEN
        RETURN '{}';  -- a runner's queue_concurrency is full: nothing to lock for
    END IF;
    SELECT * INTO cfg FROM __SCHEMA__.queues WHERE name = q FOR UPDATE;
    IF NOT FOUND OR NOT cfg.controlled OR cfg.paused THEN
        RETURN '{}';
    END IF;
    IF cfg.concurrency IS NOT NULL THEN
        SELECT count(*) INTO busy FROM __SCHEMA__.jobs WHERE state = 'running' AND queue = q;
        room := least(room, cfg.concurrency - busy);
    END IF;
    IF cfg.rate_n IS NOT NULL THEN
        SELECT cfg.rate_n - count(*) INTO busy FROM unnest(cfg.rate_starts) AS t
        WHERE t > clock_timestamp() - make_interval(secs => cfg.rate_seconds);
        room := least(room, busy);
    END IF;
    IF room <= 0 THEN
        RETURN '{}';
    END IF;
    IF cfg.key_concurrency IS NULL THEN
        RETURN ARRAY(
            SELECT id FROM __SCHEMA__.jobs
            WHERE state = 'queued' AND queue = q AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            LIMIT room
            FOR UPDATE SKIP LOCKED);
    END IF;
    -- The running jobs of each key, as one object: a look-up per candidate, whatever plan the
    -- planner would pick for a join (without statistics it re-ran the count for every
    -- candidate).
    SELECT coalesce(jsonb_object_agg(k, n), '{}') INTO held FROM (
        SELECT concurrency_key AS k, count(*) AS n FROM __SCHEMA__.jobs
        WHERE state = 'running' AND queue = q AND concurrency_key IS NOT NULL
        GROUP BY concurrency_key
    ) AS counted;
    picked := ARRAY(
        SELECT id FROM (
            SELECT id, k, priority, run_at,
                   coalesce((held ->> k)::integer, 0) + row_number() OVER (
                       PARTITION BY k ORDER BY priority DESC, run_at, id) AS slot
            FROM (
                SELECT id, concurrency_key AS k, priority, run_at FROM __SCHEMA__.jobs
                WHERE state = 'queued' AND queue = q AND run_at <= now()
                ORDER BY priority DESC, run_at, id
                LIMIT greatest(lookahead, room)
            ) AS cand
        ) AS ranked
        WHERE k IS NULL OR slot <= cfg.key_concurrency
        ORDER BY priority DESC, run_at, id
        LIMIT room);
    -- Locked here: the claim's UPDATE then changes rows nothing else can change meanwhile. Only
    -- the picks are locked, never the candidates looked at. The state is checked on the locked
    -- (latest) row, outside the locking scan: "state = 'queued'" beside "id = ANY" in one scan
    -- let the planner walk the whole partial index jobs_claim for the ids (40 ms at 20,000
    -- queued) instead of the primary key.
    RETURN ARRAY(
        WITH l AS MATERIALIZED (  -- MATERIALIZED: the state test must not move into the scan
            SELECT id, state, priority, run_at FROM __SCHEMA__.jobs
            WHERE id = ANY(picked)
            FOR UPDATE SKIP LOCKED
        )
        SELECT id FROM l WHERE state = 'queued' ORDER BY priority DESC, run_at, id);
END
$$;
