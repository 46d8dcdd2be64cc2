-- batchworks schema, version 13: a claim takes over the slots of its worker's ended jobs (#14).
--
-- A slot of a limited queue stood for a job in state 'running' until its outcome was written.
-- A runner at its queue's limit therefore could not claim its next batch while it wrote the
-- last one's outcomes, as an unlimited one does: a claim sent meanwhile came back empty, and
-- the next one waited for the settle's round trip (bench/flow.py's concurrency 100 drained at
-- 0.7x of an unlimited queue). Now a claim names the attempts of its own worker whose handlers
-- have ended and whose outcomes are on the way (ended_ids, ended_at: a job's id and its claim's
-- started_at, as the settle's fence reads them): their slots pass to the jobs it claims. A
-- limit bounds the handlers that run at once, which is what it is for; for an instant a
-- queue's running jobs may exceed it by outcomes still being written.
--
-- An ended attempt counts only while its row is still running under the claiming worker's
-- token and by the same claim: an attempt recovered meanwhile, or claimed again by anyone
-- since, counts as running as before. The running jobs and the ended ones among them are
-- counted by one statement, in one snapshot, after the queue's row lock (as before).
--
-- flow_pick and flow_pick_all of version 7 and 12 stay, for workers of earlier versions during
-- a roll-out: they are this function with nothing ended.
CREATE FUNCTION __SCHEMA__.flow_pick(
    q text, wanted integer, lookahead integer,
    worker uuid, ended_ids bigint[], ended_at timestamptz[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg      record;
    room     integer := wanted;
    busy     integer;
    held     jsonb;
    picked   bigint[];
BEGIN
    IF room <= 0 THEN
        RETURN '{}';  -- a runner's queue_concurrency is full: nothing to lock for
    END IF;
    SELECT * INTO cfg FROM __SCHEMA__.queues WHERE name = q FOR UPDATE;
    IF NOT FOUND OR NOT cfg.controlled OR cfg.paused THEN
        RETURN '{}';
    END IF;
    -- The running jobs, less those handed over, in one statement (so in one snapshot): a job
    -- handed over counts as free only if it is still running, under this worker, by the
    -- claim named (DISTINCT: an outcome twice in the list frees its slot once).
    IF cfg.key_concurrency IS NOT NULL THEN
        -- By key, as one object: a look-up per candidate, whatever plan the planner would
        -- pick for a join (without statistics it re-ran the count for every candidate).
        SELECT coalesce(sum(n), 0)::integer,
               coalesce(jsonb_object_agg(k, n) FILTER (WHERE k IS NOT NULL), '{}')
        INTO busy, held FROM (
            SELECT j.concurrency_key AS k, count(*) - count(e.id) AS n
            FROM __SCHEMA__.jobs AS j
            LEFT JOIN (SELECT DISTINCT * FROM unnest(ended_ids, ended_at)) AS e(id, claimed_at)
                ON e.id = j.id AND j.worker_token = worker AND j.started_at = e.claimed_at
            WHERE j.state = 'running' AND j.queue = q
            GROUP BY j.concurrency_key
        ) AS counted;
    ELSIF cfg.concurrency IS NOT NULL THEN
        SELECT count(*) - count(e.id) INTO busy
        FROM __SCHEMA__.jobs AS j
        LEFT JOIN (SELECT DISTINCT * FROM unnest(ended_ids, ended_at)) AS e(id, claimed_at)
            ON e.id = j.id AND j.worker_token = worker AND j.started_at = e.claimed_at
        WHERE j.state = 'running' AND j.queue = q;
    END IF;
    IF cfg.concurrency IS NOT NULL THEN
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
    IF held IS NULL THEN
        RETURN ARRAY(
            SELECT id FROM __SCHEMA__.jobs
            WHERE state = 'queued' AND queue = q AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            LIMIT room
            FOR UPDATE SKIP LOCKED);
    END IF;
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

CREATE OR REPLACE FUNCTION __SCHEMA__.flow_pick(q text, wanted integer, lookahead integer)
RETURNS bigint[] LANGUAGE sql VOLATILE AS $$
    SELECT __SCHEMA__.flow_pick(q, wanted, lookahead, NULL::uuid, '{}', '{}')
$$;

-- The picks of several controlled queues for one claim (queries.CLAIM), in the order of their
-- names: two claims of the same queues, listed in different orders by their runners, then lock
-- the queues' rows in the same order, and cannot deadlock.
CREATE FUNCTION __SCHEMA__.flow_pick_all(
    qs text[], wanted integer[], lookahead integer,
    worker uuid, ended_ids bigint[], ended_at timestamptz[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i      integer;
    picked bigint[] := '{}';
BEGIN
    FOR i IN SELECT g FROM generate_subscripts(qs, 1) AS g ORDER BY qs[g] LOOP
        picked := picked
            || __SCHEMA__.flow_pick(qs[i], wanted[i], lookahead, worker, ended_ids, ended_at);
    END LOOP;
    RETURN picked;
END
$$;
