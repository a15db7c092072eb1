-- 002_cheaper_task_updates.sql: make the queue's own updates of tasks
-- cheaper (make bench, bench/README.md). Every task is updated at least
-- twice (claim, finish), and neither update can be HOT, because status is
-- in the claimable indexes' predicates: each one adds an entry to every
-- full index and runs every row trigger. Measured with 20,000 noop tasks,
-- one worker, VG_BATCH=on: dropping the index below alone took the rate
-- from 16,100 to 18,700 tasks/s on the 2-core benchmark machine.

-- 1. tasks_channel_created_idx was for per-channel listings and for the
-- foreign key check when a channel is deleted; both are rare admin work
-- that can afford a scan of tasks, while the index cost an entry on every
-- claim and every finish. Admin listings that need it can add their own
-- partial index.
DROP INDEX tasks_channel_created_idx;

-- 2. updated_at and completed_at: the trigger now runs only when the writer
-- did not keep them right itself. The queue's statements (lua/vg/queue.lua)
-- set updated_at = now() and, when finishing, completed_at = now(), so the
-- row trigger (a PL/pgSQL call per row) is skipped for them; any other
-- writer (admin SQL, enqueuers) still gets the same guarantee as before:
-- updated_at means "last changed", completed_at is set in a final state and
-- cleared outside one.
DROP TRIGGER tasks_touch ON tasks;

CREATE TRIGGER tasks_touch_insert
    BEFORE INSERT ON tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'rejected') AND NEW.completed_at IS NULL)
    EXECUTE FUNCTION tasks_touch();

CREATE TRIGGER tasks_touch_update
    BEFORE UPDATE ON tasks
    FOR EACH ROW
    WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
          OR (NEW.status IN ('completed', 'failed', 'rejected'))
             IS DISTINCT FROM (NEW.completed_at IS NOT NULL))
    EXECUTE FUNCTION tasks_touch();

-- 3. The UPDATE notification becomes a row trigger with a WHEN clause, so
-- the statements that do not make a task claimable (claims, lease
-- renewals, checkpoints, completions: almost all of them) run no function
-- and keep no transition tables. Only rows that become claimable (retry,
-- approval, release, rescue, a new run_at) call it. Payload as before: the
-- epoch seconds when the task is due, but never earlier than the
-- transaction's now(), so the rows of one transaction that are due at once
-- share one payload and PostgreSQL delivers them as one notification (it
-- folds identical notifications of a transaction): a rescue of 100 tasks
-- wakes each listener once. Inserts keep their statement trigger (one
-- notification per INSERT statement).
DROP TRIGGER tasks_notify_update ON tasks;
DROP FUNCTION tasks_notify_update();

CREATE FUNCTION tasks_notify_claimable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vg_tasks', extract(epoch FROM greatest(NEW.run_at, now()))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_update
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'retry', 'approved')
          AND (OLD.status IS DISTINCT FROM NEW.status
               OR OLD.run_at IS DISTINCT FROM NEW.run_at))
    EXECUTE FUNCTION tasks_notify_claimable();
