-- batchworks schema, version 7: flow control across the cluster (#14). A queue's limits and
-- pause live in one row of "queues"; a queue without a row (or with nothing set) is claimed as
-- before, without reading or locking anything more than a probe of this table.
--
-- A slot is a running job: the claim of a limited queue counts the queue's running rows (and
-- those of each concurrency key), so a settle or a recovery frees a slot by taking the job out
-- of 'running', exactly once, with no timeout and no counter to drift.
CREATE TABLE __SCHEMA__.queues (
    name            text PRIMARY KEY,
    paused          boolean     NOT NULL DEFAULT false,
    concurrency     integer     CHECK (concurrency >= 1),
    key_concurrency integer     CHECK (key_concurrency >= 1),
    rate_n          integer     CHECK (rate_n >= 1),
    rate_seconds    double precision CHECK (rate_seconds > 0),
    -- The start times of the queue's latest claims within the rate window (newest first, at
    -- most rate_n): a strict sliding window, exact, as long as the claims that write it are
    -- serialised by this row's lock and stamp it with the clock read under that lock.
    rate_starts     timestamptz[] NOT NULL DEFAULT '{}',
    controlled      boolean     GENERATED ALWAYS AS (
        paused OR concurrency IS NOT NULL OR key_concurrency IS NOT NULL OR rate_n IS NOT NULL
    ) STORED,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_n IS NULL) = (rate_seconds IS NULL))
);

-- A nullable column without a default: added without rewriting the jobs table.
ALTER TABLE __SCHEMA__.jobs ADD COLUMN concurrency_key text;

-- The slots in use: the running jobs of a queue, and of each key of it. Running rows only (a
-- few per worker), so it stays small however long the history.
CREATE INDEX jobs_slots ON __SCHEMA__.jobs (queue, concurrency_key) WHERE state = 'running';

-- The pick of a controlled queue's due jobs, for the claim statements (queries.CLAIM_ONE,
-- CLAIM): up to "wanted" ids in claim order, within the queue's limits.
--
-- It takes the queue's row lock first, so claims of one controlled queue run one at a time
-- until their transaction ends. It is VOLATILE and PL/pgSQL so that each query below takes a
-- fresh snapshot (READ COMMITTED) after that lock: it counts the running jobs the previous
-- holder's claim committed, which the calling statement's own snapshot, taken before it waited,
-- would not see. It locks the rows it picks (and only those), still queued.
--
-- With key_concurrency it looks at the first "lookahead" due jobs in priority order and skips
-- those whose key is at its limit (a job without a key has no key limit).
CREATE FUNCTION __SCHEMA__.flow_pick(q text, wanted integer, lookahead integer)
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
        picked := ARRAY(
            SELECT id FROM __SCHEMA__.jobs
            WHERE state = 'queued' AND queue = q AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            LIMIT room);
    ELSE
        -- The running jobs of each key, as one object: a look-up per candidate, whatever
        -- plan the planner would pick for a join (without statistics it re-ran the count
        -- for every candidate).
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
    END IF;
    -- Locked here, like the unlimited pick's FOR UPDATE SKIP LOCKED: the claim's UPDATE then
    -- changes rows nothing else can change meanwhile. Only the picks are locked, never the
    -- candidates looked at. The state is checked on the locked (latest) row, outside the
    -- locking scan: "state = 'queued'" beside "id = ANY" in one scan let the planner walk the
    -- whole partial index jobs_claim for the ids (40 ms at 20,000 queued) instead of the
    -- primary key.
    RETURN ARRAY(
        WITH l AS MATERIALIZED (  -- MATERIALIZED: the state test must not move into the scan
            SELECT id, state, priority, run_at FROM __SCHEMA__.jobs
            WHERE id = ANY(picked)
            FOR UPDATE SKIP LOCKED
        )
        SELECT id FROM l WHERE state = 'queued' ORDER BY priority DESC, run_at, id);
END
$$;

-- The picks of several controlled queues for one claim (queries.CLAIM), in the order of their
-- names: two claims of the same queues, listed in different orders by their runners, then lock
-- the queues' rows in the same order, and cannot deadlock.
CREATE FUNCTION __SCHEMA__.flow_pick_all(qs text[], wanted integer[], lookahead integer)
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i      integer;
    picked bigint[] := '{}';
BEGIN
    FOR i IN SELECT g FROM generate_subscripts(qs, 1) AS g ORDER BY qs[g] LOOP
        picked := picked || __SCHEMA__.flow_pick(qs[i], wanted[i], lookahead);
    END LOOP;
    RETURN picked;
END
$$;
