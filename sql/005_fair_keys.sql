-- 005_fair_keys.sql: a claim whose cost does not grow with the number of
-- channels or the backlog (issue 13; docs/claim.sql section 1 explains the
-- rules and docs/fair_claim.md the measurements).
--
-- Every claimable task that is due carries fair_key, a virtual-time tag as
-- in start-time fair queuing: when a task becomes claimable and due it gets
-- its channel's last key (at its priority) + 1, but never less than the
-- current floor (the smallest key queued at that priority). The claim is
-- then one ordered scan of tasks_fair_idx (priority_rank, fair_key,
-- fair_seq)
-- with SKIP LOCKED: strict priority, round-robin between channels (the
-- floor puts a channel's first task into the turn being served), oldest
-- first within a channel (keys grow in the order tasks become due).
--
-- No counter row is kept: "the channel's last key" and "the floor" are one
-- index descent each, read without locks, so producers never wait for each
-- other or for claimers. Two producers that insert into one channel at the
-- same moment may give their tasks the same key; ties go by fair_seq.
--
-- How each kind of task gets its place (the trigger below):
-- * enqueued due (a plain INSERT): a key at once.
-- * enqueued delayed, retried with back-off: fair_key NULL until run_at;
--   the claim statement gives keys to tasks that have become due (at most
--   100 per claim, oldest run_at first) in its "promote" part, so they
--   join the round-robin when they become due, not when they were queued,
--   and a channel whose delayed tasks fall due together does not burst.
-- * approved (after a review gate) or put back by an admin: a new key, as
--   a task arriving now.
-- * released (shutdown, lapsed liveness) or rescued (lease expired, worker
--   gone): run_at is left as it was and the task goes back to the head,
--   where it was when it was claimed: the round being served (the floor),
--   and in it before every task keyed after it (it keeps its fair_seq). So
--   it is claimed again before the tasks queued after it, and the floor
--   never moves backwards.

ALTER TABLE tasks ADD COLUMN fair_key bigint NULL;
-- Order among equal keys: when the key was given (a sequence: no lock, no
-- row). Not the id: a retried task keeps its id but joins its round anew.
ALTER TABLE tasks ADD COLUMN fair_seq bigint NULL;
CREATE SEQUENCE tasks_fair_seq;

-- The claim: one scan in this order. Equal keys (the tasks of one round,
-- one per channel) go in the order they were given: a channel that comes
-- back to the round being served (its queue ran dry, then a new task or a
-- retry) is served after the channels already waiting in that round, never
-- before them, so a channel that enqueues one task at a time cannot
-- overtake the others.
CREATE INDEX tasks_fair_idx
    ON tasks (priority_rank, fair_key, fair_seq)
    WHERE status IN ('pending', 'retry', 'approved') AND fair_key IS NOT NULL;

-- A channel's last key at a priority: one descent.
CREATE INDEX tasks_channel_fair_idx
    ON tasks (channel_id, priority_rank, fair_key)
    WHERE status IN ('pending', 'retry', 'approved') AND fair_key IS NOT NULL;

-- Tasks waiting for their key (delayed, backing off), by when they are due.
CREATE INDEX tasks_unkeyed_idx
    ON tasks (run_at, id)
    WHERE status IN ('pending', 'retry', 'approved') AND fair_key IS NULL;

-- The per-channel claim index of 001 served the old claim, which probed
-- every channel; the new claim and the trigger use the indexes above.
DROP INDEX tasks_claimable_idx;

-- The floor at priority p: the smallest key queued, else 0. PL/pgSQL, not
-- SQL: its plans are kept for the session, where a SQL function called
-- from the trigger was planned again on every row (measured: enqueue at
-- 0.37 of the rate without the trigger, against 0.9 with these).
CREATE FUNCTION tasks_fair_floor(p smallint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k bigint;
BEGIN
    SELECT t.fair_key INTO k FROM tasks t
     WHERE t.priority_rank = p AND t.fair_key IS NOT NULL
       AND t.status IN ('pending', 'retry', 'approved')
     ORDER BY t.priority_rank, t.fair_key LIMIT 1;
    RETURN coalesce(k, 0);
END
$$;

-- The key a task of channel c at priority p gets when it becomes due now.
CREATE FUNCTION tasks_fair_next(c text, p smallint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k bigint;
BEGIN
    SELECT t.fair_key + 1 INTO k FROM tasks t
     WHERE t.channel_id = c AND t.priority_rank = p AND t.fair_key IS NOT NULL
       AND t.status IN ('pending', 'retry', 'approved')
     ORDER BY t.channel_id DESC, t.priority_rank DESC, t.fair_key DESC LIMIT 1;
    RETURN greatest(k, tasks_fair_floor(p));
END
$$;

CREATE FUNCTION tasks_fair_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- priority_rank is a generated column, computed after BEFORE triggers:
    -- NEW does not hold it yet.
    rank smallint := CASE NEW.priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END;
BEGIN
    IF NEW.run_at > now() THEN
        NEW.fair_key := NULL;        -- keyed by a claim once due
        NEW.fair_seq := NULL;
    ELSIF TG_OP = 'UPDATE' AND OLD.status IN ('claimed', 'processing')
          AND OLD.run_at = NEW.run_at AND OLD.fair_seq IS NOT NULL THEN
        -- released or rescued: back at the head, where it was when it was
        -- claimed: the round being served (the floor), and in it before
        -- every task keyed after it (its old fair_seq)
        NEW.fair_key := tasks_fair_floor(rank);
        NEW.fair_seq := OLD.fair_seq;
    ELSE
        NEW.fair_key := tasks_fair_next(NEW.channel_id, rank);
        NEW.fair_seq := nextval('tasks_fair_seq');
    END IF;
    RETURN NEW;
END
$$;

-- Only rows that become claimable call it: enqueues, and updates that make
-- a task claimable or move its run_at (the rows tasks_notify_update also
-- fires for). Claims, renewals, checkpoints and completions do not.
CREATE TRIGGER tasks_fair_key_insert
    BEFORE INSERT ON tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'retry', 'approved'))
    EXECUTE FUNCTION tasks_fair_key();

CREATE TRIGGER tasks_fair_key_update
    BEFORE UPDATE ON tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'retry', 'approved')
          AND (OLD.status IS DISTINCT FROM NEW.status
               OR OLD.run_at IS DISTINCT FROM NEW.run_at))
    EXECUTE FUNCTION tasks_fair_key();

-- Tasks queued when this runs: keys in their old order (run_at, id) within
-- each channel and priority, so every channel's oldest task is in the
-- first turn. Delayed ones wait for a claim to key them.
UPDATE tasks t
   SET fair_key = k.key, fair_seq = k.id, updated_at = now()
  FROM (SELECT id, row_number() OVER (PARTITION BY channel_id, priority_rank
                                      ORDER BY run_at, id) - 1 AS key
          FROM tasks
         WHERE status IN ('pending', 'retry', 'approved') AND run_at <= now()) k
 WHERE t.id = k.id;
SELECT setval('tasks_fair_seq', coalesce(max(id), 0) + 1) FROM tasks;
