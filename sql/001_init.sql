-- 001_init.sql: the initial schema of vg-host (DESIGN.md section 6).
--
-- Migrations are numbered NNN_name.sql and applied in order, each once, by
-- lua/migrate.lua, which records them in schema_migrations and runs each
-- file in one transaction; see sql/README.md. So this file has no
-- BEGIN/COMMIT and nothing that cannot run inside a transaction (no CREATE
-- INDEX CONCURRENTLY). It holds several statements and dollar-quoted
-- function bodies: send it as one simple-protocol query (PQexec or
-- PQsendQuery), not as a prepared statement.
--
-- Target: PostgreSQL 15. Uses only core features (no extensions).

-- ---------------------------------------------------------------- channels

CREATE TABLE channels (
    -- Channel ids appear in paths (the per-channel workspace folder) and in
    -- logs, so they are restricted to a safe, lower-case slug.
    id                    text PRIMARY KEY
                          CONSTRAINT channels_id_format
                          CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name                  text NOT NULL DEFAULT '',
    -- A Fernet token (vg.fernet); never the plain credentials.
    credentials_encrypted text NULL,
    is_active             boolean NOT NULL DEFAULT true,
    -- When false, the pipeline's review gates are skipped for this channel
    -- (tasks go straight on instead of stopping at awaiting_review).
    review_gates          boolean NOT NULL DEFAULT true,
    -- Round-robin pointer for claiming: the claim query serves, within a
    -- priority, the channel that was served least recently (NULL = never,
    -- first). Written by the claim itself (docs/claim.sql).
    last_claimed_at       timestamptz NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- tasks

CREATE TABLE tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id       text NOT NULL REFERENCES channels (id),
    pipeline         text NOT NULL DEFAULT 'video',
    -- Any JSON value is accepted on purpose: the worker validates the
    -- payload for its pipeline and fails a malformed one with a clear
    -- last_error instead of the enqueuer getting a constraint error.
    payload          jsonb NOT NULL DEFAULT '{}',
    -- The 9-state workflow:
    --   pending -> claimed -> processing -> completed
    --                                    -> awaiting_review -> approved (claimable again) | rejected
    --                                    -> retry (claimable again at run_at) | failed
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT tasks_status_valid CHECK (status IN (
                         'pending', 'claimed', 'processing', 'awaiting_review',
                         'approved', 'rejected', 'completed', 'failed', 'retry')),
    priority         text NOT NULL DEFAULT 'normal'
                     CONSTRAINT tasks_priority_valid
                     CHECK (priority IN ('high', 'normal', 'low')),
    -- priority as a number so that "ORDER BY priority_rank" can walk an
    -- index (text order would put high < low < normal). Derived, never
    -- written by clients.
    priority_rank    smallint NOT NULL GENERATED ALWAYS AS (
                         CASE priority WHEN 'high' THEN 0
                                       WHEN 'normal' THEN 1
                                       ELSE 2 END) STORED,
    -- Claims made so far (a claim counts as an attempt; see docs/claim.sql).
    attempts         integer NOT NULL DEFAULT 0
                     CONSTRAINT tasks_attempts_nonneg CHECK (attempts >= 0),
    max_attempts     integer NOT NULL DEFAULT 3
                     CONSTRAINT tasks_max_attempts_pos CHECK (max_attempts >= 1),
    -- Not claimable before this time (delayed tasks, retry back-off).
    run_at           timestamptz NOT NULL DEFAULT now(),
    claimed_by       text NULL,       -- worker_id of the claimer
    claimed_instance text NULL,       -- its instance ("host:pid"): two
                                      -- processes may share a worker_id
    claimed_at       timestamptz NULL,
    lease_expires_at timestamptz NULL,
    -- Fencing token: incremented by every claim and by every rescue or
    -- release. A worker keeps the value its claim returned and writes with
    -- "WHERE id = $1 AND lease_token = $2"; after its lease was lost (and
    -- the task rescued or claimed by someone else) those writes match no
    -- row, so a late result never overwrites a newer one.
    lease_token      bigint NOT NULL DEFAULT 0,
    current_step     text NULL,
    last_error       text NULL,
    result           jsonb NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Set when the task reaches a final state (completed, failed,
    -- rejected); see tasks_touch().
    completed_at     timestamptz NULL
)
-- A queue table is updated all the time: leave room in each page so that
-- updates touching no indexed column stay on the page (HOT), and vacuum it
-- well before the default 20% of dead rows, because dead entries at the
-- front of the claim index make every claim step over them.
WITH (fillfactor = 90,
      autovacuum_vacuum_scale_factor = 0.02,
      autovacuum_analyze_scale_factor = 0.02);

-- Claiming (docs/claim.sql). Only claimable rows are in this index, so it
-- stays as small as the backlog however many finished tasks pile up. Its
-- order answers "the first due task of channel C at priority P, oldest
-- first" with one descent: channel_id and priority_rank by equality,
-- run_at <= now() as a range, then (run_at, id) is the order wanted.
CREATE INDEX tasks_claimable_idx
    ON tasks (channel_id, priority_rank, run_at, id)
    WHERE status IN ('pending', 'retry', 'approved');

-- The earliest run_at of all claimable tasks, without visiting channels:
-- workers use it to sleep exactly until the next delayed task is due.
CREATE INDEX tasks_claimable_run_at_idx
    ON tasks (run_at)
    WHERE status IN ('pending', 'retry', 'approved');

-- Rescue (docs/claim.sql): the tasks workers hold now, a small set. Keyed
-- by claimed_instance (fixed for the life of a claim), not by
-- lease_expires_at: lease renewals then change no indexed column and can
-- be HOT updates that add no index entries (an index on updated_at would
-- prevent that for every update, hence none).
CREATE INDEX tasks_held_idx
    ON tasks (claimed_instance)
    WHERE status IN ('claimed', 'processing');

-- Per-channel listings and the foreign key (deleting a channel).
CREATE INDEX tasks_channel_created_idx ON tasks (channel_id, created_at);

-- Admin: recent failures.
CREATE INDEX tasks_failed_idx
    ON tasks (completed_at)
    WHERE status = 'failed';

-- ---------------------------------------------------------------- task_steps

-- The checkpoint of each pipeline step: a retried or rescued task resumes
-- at the first step that is not completed, so paid steps are not redone.
CREATE TABLE task_steps (
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    step        text NOT NULL,
    status      text NOT NULL DEFAULT 'running'
                CONSTRAINT task_steps_status_valid
                CHECK (status IN ('running', 'completed', 'failed', 'skipped')),
    attempt     integer NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz NULL,
    output      jsonb NULL,
    PRIMARY KEY (task_id, step)
);

-- ---------------------------------------------------------------- outputs

-- Outputs and money outlive the task row (a retention job may delete old
-- tasks), hence ON DELETE SET NULL rather than CASCADE.
CREATE TABLE videos (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id          bigint NULL REFERENCES tasks (id) ON DELETE SET NULL,
    channel_id       text NOT NULL REFERENCES channels (id),
    path             text NOT NULL,
    duration_seconds double precision NULL,
    size_bytes       bigint NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX videos_task_idx ON videos (task_id);
CREATE INDEX videos_channel_created_idx ON videos (channel_id, created_at);

CREATE TABLE video_costs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    bigint NULL REFERENCES tasks (id) ON DELETE SET NULL,
    channel_id text NULL REFERENCES channels (id),
    step       text NOT NULL,
    component  text NOT NULL,            -- e.g. the provider or model
    -- numeric, not float: money is summed and must not drift. No sign
    -- check: a refund or credit is recorded as a negative cost.
    cost_usd   numeric(12, 6) NOT NULL DEFAULT 0,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX video_costs_task_idx ON video_costs (task_id);

-- ---------------------------------------------------------------- audit_logs

CREATE TABLE audit_logs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor      text NOT NULL,          -- worker_id, admin user, service
    action     text NOT NULL,          -- e.g. task_claimed, task_approved
    task_id    bigint NULL REFERENCES tasks (id) ON DELETE SET NULL,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_task_idx ON audit_logs (task_id);
CREATE INDEX audit_logs_created_idx ON audit_logs (created_at);

-- ---------------------------------------------------------------- workers

-- One row per worker process: worker_id alone is not unique (two processes
-- may run with the same WORKER_ID), the instance ("host:pid") tells them
-- apart. Upserted at start, on every heartbeat and at shutdown.
-- status: running, draining (shutdown requested, finishing in-flight
-- work) or stopped.
CREATE TABLE workers (
    worker_id    text NOT NULL,
    instance     text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'running',
    tasks_done   bigint NOT NULL DEFAULT 0,
    tasks_failed bigint NOT NULL DEFAULT 0,
    in_flight    integer NOT NULL DEFAULT 0,
    version      text NULL,
    PRIMARY KEY (worker_id, instance)
);

-- ---------------------------------------------------------------- triggers

-- updated_at always means "last changed", whoever wrote the row, and
-- completed_at is set once a task reaches a final state (and cleared if an
-- admin puts it back in the queue), so queries on finished tasks do not
-- depend on every writer remembering to set it.
CREATE FUNCTION tasks_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    IF NEW.status IN ('completed', 'failed', 'rejected') THEN
        IF NEW.completed_at IS NULL THEN
            NEW.completed_at := now();
        END IF;
    ELSIF TG_OP = 'UPDATE' AND OLD.status IN ('completed', 'failed', 'rejected') THEN
        NEW.completed_at := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_touch
    BEFORE INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_touch();

-- The claim's round-robin pointer (last_claimed_at) is not a change of the
-- channel: the WHEN clause skips updated_at (and the function call) for
-- those updates, which happen on every claim.
CREATE FUNCTION channels_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER channels_touch
    BEFORE UPDATE ON channels
    FOR EACH ROW
    WHEN (NEW.last_claimed_at IS NOT DISTINCT FROM OLD.last_claimed_at)
    EXECUTE FUNCTION channels_touch();

-- Wake listening workers: NOTIFY vg_tasks when tasks become claimable,
-- i.e. are inserted in a claimable state, or change into one (retry,
-- approval, release, rescue), or get a new run_at.
--
-- Statement-level triggers with transition tables, so that a 10,000-row
-- INSERT sends one notification, not 10,000. The payload is the earliest
-- run_at among those tasks as Unix epoch seconds (e.g. "1764331200.123456"):
-- a worker claims at once when it is due, or sets a timer for it when it is
-- in the future. It is a hint only: workers also poll, and must treat an
-- empty or unparsable payload as "try to claim". Notifications are sent at
-- commit, so a worker never wakes before the rows are visible, and none are
-- sent for a rolled back INSERT.
CREATE FUNCTION tasks_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    due timestamptz;
BEGIN
    SELECT min(n.run_at) INTO due
      FROM new_rows n
     WHERE n.status IN ('pending', 'retry', 'approved');
    IF due IS NOT NULL THEN
        PERFORM pg_notify('vg_tasks', extract(epoch FROM due)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tasks_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    due timestamptz;
BEGIN
    -- Transition tables cannot be combined with "UPDATE OF column", so this
    -- runs for every UPDATE statement (claims and lease renewals too); for
    -- those the join finds nothing and no notification is sent.
    SELECT min(n.run_at) INTO due
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
     WHERE n.status IN ('pending', 'retry', 'approved')
       AND (o.status IS DISTINCT FROM n.status
            OR o.run_at IS DISTINCT FROM n.run_at);
    IF due IS NOT NULL THEN
        PERFORM pg_notify('vg_tasks', extract(epoch FROM due)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_insert
    AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify_insert();

CREATE TRIGGER tasks_notify_update
    AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify_update();
