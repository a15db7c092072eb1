-- 007_fair_index_predicate.sql: enqueue in time proportional to the rows
-- whatever the table's statistics say.
--
-- The trigger's lookups (tasks_fair_next: the channel's last key;
-- tasks_fair_floor: the smallest key queued) are planned once per session
-- and kept, often while the partial indexes they read are nearly empty: a
-- drained queue whose statistics say nothing is pending, or a table just
-- created or truncated. Every plan looks free then, and the one kept
-- scanned all claimable tasks (tasks_claimable_run_at_idx, then a sort, or
-- tasks_fair_idx filtered by channel). Each row of a large INSERT then read
-- every task queued before it: 20,000 tasks in one INSERT ... SELECT into a
-- drained queue took 3 minutes 15 s, against 1.7 s with the plans below
-- (measured on a 2-CPU machine).
--
-- * Both functions run with enable_sort off: no plan that sorts the
--   claimable tasks; each lookup descends the one index in its order
--   (measured: no cost at 10 producers of single-row INSERTs).
-- * tasks_fair_idx also requires fair_seq IS NOT NULL, which the channel
--   lookup does not say, so it cannot use that index and filter by channel.
--   Every keyed task has a fair_seq (the trigger, the claim's promotion and
--   005's backfill set both), so the index holds the same rows; the claim
--   and the floor, which want it, say fair_seq IS NOT NULL too.
DROP INDEX tasks_fair_idx;
CREATE INDEX tasks_fair_idx
    ON tasks (priority_rank, fair_key, fair_seq)
    WHERE status IN ('pending', 'retry', 'approved') AND fair_key IS NOT NULL
      AND fair_seq IS NOT NULL;

CREATE OR REPLACE FUNCTION tasks_fair_floor(p smallint) RETURNS bigint
LANGUAGE plpgsql STABLE SET enable_sort = off AS $$
DECLARE
    k bigint;
BEGIN
    SELECT t.fair_key INTO k FROM tasks t
     WHERE t.priority_rank = p AND t.fair_key IS NOT NULL AND t.fair_seq IS NOT NULL
       AND t.status IN ('pending', 'retry', 'approved')
     ORDER BY t.priority_rank, t.fair_key LIMIT 1;
    RETURN coalesce(k, 0);
END
$$;

ALTER FUNCTION tasks_fair_next(text, smallint) SET enable_sort = off;
