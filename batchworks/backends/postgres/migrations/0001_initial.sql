-- batchworks schema, version 1. Never edit after release: add a new numbered file instead.
-- __SCHEMA__ is replaced by the quoted, validated schema name.

CREATE TABLE __SCHEMA__.jobs (
    id               bigserial PRIMARY KEY,
    queue            text        NOT NULL,
    payload          jsonb       NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     CHECK (max_attempts >= 1),
    dedupe_key       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    errors           jsonb       NOT NULL DEFAULT '[]',
    result           jsonb,
    checkpoint       jsonb,
    worker_token     uuid,
    worker_name      text,
    lease_until      timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    trace_context    jsonb
);

-- Claiming reads only queued rows: finished history never enters these partial indexes, so
-- the cost of a claim stays flat as history grows.
CREATE INDEX jobs_claim ON __SCHEMA__.jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued';
CREATE INDEX jobs_due ON __SCHEMA__.jobs (queue, run_at) WHERE state = 'queued';
CREATE INDEX jobs_running ON __SCHEMA__.jobs (worker_token) WHERE state = 'running';
CREATE INDEX jobs_lease ON __SCHEMA__.jobs (lease_until) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_dedupe ON __SCHEMA__.jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX jobs_finished ON __SCHEMA__.jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX jobs_failed ON __SCHEMA__.jobs (queue) WHERE state = 'failed';

CREATE TABLE __SCHEMA__.workers (
    token        uuid PRIMARY KEY,
    name         text        NOT NULL,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    queues       text[]      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    state        text        NOT NULL DEFAULT 'active'
                 CHECK (state IN ('active', 'stopped', 'pruned', 'replaced'))
);
CREATE INDEX workers_active ON __SCHEMA__.workers (name) WHERE state = 'active';
CREATE INDEX workers_heartbeat ON __SCHEMA__.workers (heartbeat_at) WHERE state = 'active';

-- Every insert wakes idle runners of the inserted queues, in the inserting transaction, so a
-- job enqueued with the caller's own connection wakes them only when it commits.
CREATE FUNCTION __SCHEMA__.notify_enqueued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], queue) FROM (SELECT DISTINCT queue FROM new_rows) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_enqueued AFTER INSERT ON __SCHEMA__.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.notify_enqueued('__CHANNEL__');
