-- docs/claim.sql: the queue queries of lua/vg/queue.lua, explained and
-- measured (documentation only; nothing runs this file: lua/vg/queue.lua
-- holds the statements the worker sends). Schema: sql/001_init.sql.
-- Parameters are $n placeholders as vg.db passes them. Every statement is
-- meant to run on its own, in autocommit (one short transaction each): claim
-- and commit, process with no connection held, record and commit.
--
-- Contents
--   1. claim          one task (or up to N), priority, channel round-robin
--   2. next_due       when the next delayed task becomes claimable
--   3. fenced writes  start, renew, checkpoint, finish, retry, release
--   4. rescue         expired leases back to retry (or failed)
--   5. dead_instance  shorten the leases of a worker process that is gone
--   6. measurements   plans and timings with 100,000 finished + 10,000 due
--
-- ---------------------------------------------------------------- 1. claim
--
-- Claimable: status pending, retry or approved, and run_at <= now().
-- Order: priority first; within a priority, the channel served least
-- recently first (channels.last_claimed_at, NULL = never served = first),
-- so a channel with a long backlog cannot delay another channel's first
-- task; within a channel, oldest first by (run_at, id): the task that has
-- been due longest (for a new task run_at = its creation time, for a retry
-- the end of its back-off).
--
-- How it stays fast and correct under concurrency:
--
-- * "due" lists the (channel, priority) pairs that have a due task: three
--   LIMIT 1 probes per channel into the partial index tasks_claimable_idx
--   (channel_id, priority_rank, run_at, id) WHERE claimable. Each probe is
--   one index descent, whatever the number of finished tasks (they are not
--   in that index) and of queued tasks (it stops at the first). Cost grows
--   with the number of channels (3 probes each), not with the queue.
--   A LATERAL ... LIMIT 1 rather than EXISTS on purpose: the planner turns
--   EXISTS into a semi-join that reads all 10,000 due tasks (measured:
--   45 ms instead of 0.4 ms).
-- * "picked" walks those pairs in order and takes, for each, the oldest due
--   task that nobody has locked (FOR UPDATE SKIP LOCKED inside the LATERAL,
--   LIMIT 1), stopping after $4 tasks. The nested loop only runs the
--   LATERAL for pairs it needs, so only the rows returned are locked.
--   A pair whose due tasks are all locked by concurrent claimers is skipped
--   (with its whole priority level kept ahead of lower ones), so an empty
--   result really means nothing claimable was unlocked.
-- * "due" is MATERIALIZED and "picked" has no ORDER BY of its own on
--   purpose: a sort above the LATERAL would run it for every pair first and
--   lock one task per pair. The materialized CTE is read back in the order
--   it was written, and the nested loop keeps that order.
-- * The round-robin pointer is updated in the same statement, but with
--   SKIP LOCKED: if a concurrent claim is updating the same channel row, it
--   sets last_claimed_at to the same instant anyway, so we skip rather than
--   wait for its commit. Claims therefore never wait for each other.
--   FOR NO KEY UPDATE (not FOR UPDATE) so it does not conflict with the
--   FOR KEY SHARE lock that enqueuers' foreign-key checks take: enqueueing
--   into a channel never blocks or is blocked by claiming from it.
-- * attempts: every claim counts as an attempt, except that claiming an
--   approved task (resuming after a review gate) starts a new budget at 1,
--   so a pipeline with several review gates is not failed for having
--   passed them. Rescue and retry compare attempts with max_attempts.
-- * lease_token + 1: the fencing token; the worker keeps the returned
--   value for every later write (section 3).
-- * This statement takes at most one task per (channel, priority) pair per
--   call; the worker calls it with $4 = 1. Batch mode (VG_BATCH, $4 > 1)
--   uses the variant in 1b.
-- * Every statement of the queue sets updated_at = now() itself (and
--   completed_at = now() when it finishes a task), so the tasks_touch row
--   trigger, whose WHEN clause checks just that, does not run for them
--   (sql/002_cheaper_task_updates.sql).
-- * vg.db prepares these statements once per connection, and the worker's
--   pool asks the server for generic plans (db.configure{generic_plans =
--   true}: plan_cache_mode=force_generic_plan in the connection options,
--   with VG_DB_PREPARE on): the plans below do not depend on the parameter
--   values, and planning afresh on every execute cost ~10% of the server's
--   time in batch mode.
-- * Inactive channels: the contract (DESIGN 7) does not exclude them, so
--   neither does this query. To pause a channel with is_active = false,
--   add "AND c.is_active" to "due".
--
-- $1 worker_id, $2 instance ("host:pid"), $3 lease seconds, $4 max tasks.

WITH due AS MATERIALIZED (
    SELECT c.id AS channel_id, r.rank
      FROM channels c
     CROSS JOIN (VALUES (0::smallint), (1::smallint), (2::smallint)) AS r (rank)
     CROSS JOIN LATERAL (
           SELECT 1
             FROM tasks t
            WHERE t.channel_id = c.id
              AND t.priority_rank = r.rank
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
            -- Pins the probe to tasks_claimable_idx. Without it, once the
            -- table is analysed with a large due backlog, the planner
            -- prefers scanning "until the first match" (the table or the
            -- run_at index): 26 ms per claim instead of well under 1 ms
            -- (measured by make bench).
            ORDER BY t.channel_id, t.priority_rank, t.run_at, t.id
            LIMIT 1) AS has_due
     ORDER BY r.rank, c.last_claimed_at NULLS FIRST, c.id
),
picked AS (
    SELECT p.id
      FROM due
     CROSS JOIN LATERAL (
           SELECT t.id
             FROM tasks t
            WHERE t.channel_id = due.channel_id
              AND t.priority_rank = due.rank
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
            ORDER BY t.run_at, t.id
            LIMIT 1
              FOR UPDATE SKIP LOCKED) p
     LIMIT $4
),
claimed AS (
    UPDATE tasks t
       SET status           = 'claimed',
           claimed_by       = $1,
           claimed_instance = $2,
           claimed_at       = now(),
           lease_expires_at = now() + make_interval(secs => $3),
           attempts         = CASE WHEN t.status = 'approved' THEN 1
                                   ELSE t.attempts + 1 END,
           lease_token      = t.lease_token + 1
      FROM picked
     WHERE t.id = picked.id
 RETURNING t.*
),
touched AS (
    UPDATE channels c
       SET last_claimed_at = now()
     WHERE c.id IN (SELECT l.id
                      FROM channels l
                     WHERE l.id IN (SELECT claimed.channel_id FROM claimed)
                       FOR NO KEY UPDATE SKIP LOCKED)
)
SELECT * FROM claimed;

-- ---------------------------------------------------------------- 1b. claim many
--
-- Batch mode claims up to $4 tasks in one statement (lua/vg/queue.lua
-- CLAIM_MANY_SQL; the worker asks for its free slots, at most half of
-- VG_CONCURRENCY). Same order, applied across the batch, but from one
-- priority per statement:
--
-- * "due" as above, numbered (turn) in round-robin order.
-- * "top": only the pairs of the highest priority that has due tasks. A
--   batch never mixes priorities, so claims that interleave (several
--   workers) cannot take a lower priority's tasks while concurrent claimers
--   hold the higher one's candidates; the claim after the last task of a
--   priority moves on to the next one.
-- * "share": each top pair offers its k oldest due tasks, k being twice an
--   even share of $4 among them, plus one (concurrent claimers may hold
--   some: those are skipped, and a claim under contention may return fewer
--   than $4; the worker then claims again). Cost: about k index entries
--   per pair, not $4 each.
-- * claimed takes the picked ids as one array (t.id = ANY (ARRAY(...))),
--   which pins the UPDATE to the primary key: joined to picked, the generic
--   plan hashed the whole table (4 of 11 ms for a claim of 500).
-- * "candidates" (MATERIALIZED, written in order): the task's position
--   within its channel (n), then the channel's turn: the first task of
--   every channel, then the second of every channel, ...
-- * "picked" locks the candidates in that order with FOR UPDATE SKIP LOCKED
--   in a LATERAL by primary key, rechecking that each is still claimable,
--   and stops after $4: as in 1, only the rows taken are locked (a sort or
--   a hash join above the LATERAL would lock them all; measured: a hash
--   join over the whole table, 4 ms instead of 1 ms for 100 tasks).
-- * claimed and touched as in 1.
--
-- Measured (make bench machine, 20,000 due noop tasks over 10 channels): a
-- claim of 100 executes in about 1 ms, most of it the 100 row updates.

-- ---------------------------------------------------------------- 2. next_due
--
-- After a claim returns nothing: how long until the next delayed task is
-- due (NULL = queue empty). Sleep until then, or until a vg_tasks
-- notification, or VG_POLL_INTERVAL, whichever comes first. Computed by
-- the server so worker clocks do not matter. Index: tasks_claimable_run_at_idx.

SELECT extract(epoch FROM min(run_at) - now()) AS seconds
  FROM tasks
 WHERE status IN ('pending', 'retry', 'approved');

-- The notification payload is the earliest run_at (epoch seconds) of the
-- tasks that just became claimable; it is only a hint. On any notification:
-- claim; if nothing was claimable, run next_due again.

-- ---------------------------------------------------------------- 3. fenced writes
--
-- Every write by the worker holding a claim names the task AND the
-- lease_token its claim returned, and requires a held state. 0 rows
-- affected = the lease was lost (rescued, released, claimed by another
-- worker): stop the task, write nothing more, do not count it.

-- 3a. start processing (and record the current step)
UPDATE tasks
   SET status = 'processing', current_step = $3
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing');

-- 3b. renew the lease, every VG_LEASE_SECONDS/3 or so. Returning the new
-- expiry lets the worker notice a lease it could not renew in time.
UPDATE tasks
   SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING lease_expires_at;

-- 3c. checkpoint a finished step: one statement, so the step row is written
-- only if the fence holds ($3 step, $4 attempt, $5 output json,
-- $6 started_at).
WITH fence AS (
    UPDATE tasks
       SET current_step = $3
     WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
 RETURNING id
)
INSERT INTO task_steps AS s (task_id, step, status, attempt, started_at, finished_at, output)
SELECT fence.id, $3, 'completed', $4, $6, now(), $5 FROM fence
    ON CONFLICT (task_id, step) DO UPDATE
   SET status = 'completed', attempt = EXCLUDED.attempt,
       started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
       output = EXCLUDED.output
RETURNING s.task_id;

-- Resume point of a retried or rescued task: the steps already completed.
SELECT step FROM task_steps WHERE task_id = $1 AND status = 'completed';

-- 3d. finish: completed ($3 result json), or stop at a review gate
-- (status 'awaiting_review' instead). completed_at is set by the trigger.
UPDATE tasks
   SET status = 'completed', result = $3, last_error = NULL,
       current_step = NULL, lease_expires_at = NULL
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing');

-- 3e. failure. $3 error text, $4 retriable (boolean), $5 base back-off
-- seconds, $6 cap seconds. Retriable and attempts left: retry at
-- now() + min(cap, base * 2^(attempts-1)) scaled by a random factor in
-- [0.5, 1) (jitter spreads a burst of failures). Otherwise failed.
UPDATE tasks
   SET status = CASE WHEN $4 AND attempts < max_attempts THEN 'retry'
                     ELSE 'failed' END,
       run_at = CASE WHEN $4 AND attempts < max_attempts
                     THEN now() + make_interval(secs =>
                              least($6::float8, $5::float8 * 2 ^ (attempts - 1))
                              * (0.5 + random() / 2))
                     ELSE run_at END,
       last_error = $3, lease_expires_at = NULL
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING status, run_at;

-- 3f. release at the end of the shutdown grace: back to the queue at once,
-- the attempt not counted; lease_token + 1 fences any write still in
-- flight from this process.
UPDATE tasks
   SET status = 'retry', run_at = now(), attempts = greatest(attempts - 1, 0),
       lease_expires_at = NULL, lease_token = lease_token + 1
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing');

-- ---------------------------------------------------------------- 4. rescue
--
-- Any worker, every second or two (cheap: it reads only the tasks held
-- right now, through the partial index tasks_held_idx). Tasks whose lease
-- expired go back to retry, due at once, or to failed when their attempts
-- are used up (the lost attempt was counted by its claim). lease_token + 1 rejects the old holder's
-- writes even before the task is claimed again. SKIP LOCKED: rescuers never
-- wait for each other or for a worker's renewal. The UPDATE fires the
-- vg_tasks notification, so idle workers pick the tasks up immediately.
-- claimed_by/claimed_instance/claimed_at are kept: they say who lost it.

WITH expired AS (
    SELECT id
      FROM tasks
     WHERE status IN ('claimed', 'processing')
       AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT 100
       FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
   SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed'
                     ELSE 'retry' END,
       run_at = now(),
       last_error = format('lease expired at %s (worker %s, instance %s)',
                           t.lease_expires_at, t.claimed_by, t.claimed_instance),
       lease_expires_at = NULL,
       lease_token = t.lease_token + 1
  FROM expired
 WHERE t.id = expired.id
RETURNING t.id, t.status, t.attempts, t.claimed_by, t.claimed_instance;

-- ---------------------------------------------------------------- 5. dead_instance
--
-- Issue 4 wants the task of a SIGKILLed worker running elsewhere within
-- 5 s, while the lease (60 s) must keep covering a worker that is alive but
-- cut off. A session-level advisory lock ends the moment its session does:
--
-- * At start, before its first claim, and again after every reconnect, a
--   worker takes on its dedicated (LISTEN) connection, which lives as long
--   as the process:
--       SELECT pg_advisory_lock(hashtextextended($instance, 0));
--   (the one-bigint key space; migrate.lua should use the two-int4 form,
--   pg_advisory_lock(int4, int4), whose keys never collide with these).
--   Two instances whose names hash alike only delay each other's rescue
--   to the lease expiry; they never cause a false one.
-- * Right after re-taking it on a reconnect, the worker renews (3b) the
--   lease of every task it still runs; a 0-row renewal means that task was
--   rescued meanwhile: stop it.
-- * Any worker, together with the rescue: if an instance holding tasks no
--   longer holds its lock (pg_try_advisory_xact_lock succeeds; that lock is
--   released again at our commit), its process or at least its session is
--   gone, so its leases are cut to 2 s from now. The rescue (4) then takes
--   the tasks once that passes, unless the owner, having only lost its
--   connection, reconnected and renewed them first (its renewal restores
--   the full lease, the lease_token is unchanged).
-- * Not during the first 15 s after a server (re)start: every worker's
--   session, and so its lock, was lost at once; give them time to come back
--   rather than cutting every lease in the system.

WITH inst AS (
    SELECT DISTINCT claimed_instance AS instance
      FROM tasks
     WHERE status IN ('claimed', 'processing')
       AND lease_expires_at > now() + interval '2 seconds'
       AND claimed_instance IS NOT NULL
       AND pg_postmaster_start_time() < now() - interval '15 seconds'
),
gone AS MATERIALIZED (
    SELECT instance
      FROM inst
     WHERE pg_try_advisory_xact_lock(hashtextextended(instance, 0))
)
UPDATE tasks t
   SET lease_expires_at = now() + interval '2 seconds'
  FROM gone
 WHERE t.claimed_instance = gone.instance
   AND t.status IN ('claimed', 'processing')
   AND t.lease_expires_at > now() + interval '2 seconds'
RETURNING t.id, t.claimed_instance;

-- ---------------------------------------------------------------- 6. measurements
--
-- PostgreSQL 15.18 (Debian 12 package), cluster from tests/pgtmp.sh with
-- its defaults (fsync on), 2 CPUs. Data (all through the real schema and
-- triggers): 20 channels; 100,000 tasks enqueued and then finished (98,000
-- completed, 2,000 failed); 10,000 pending: 9,500 due (5,000 normal ones in
-- one channel, the backlog; 4,500 spread over all channels and priorities)
-- and 500 delayed. Heap 35 MB, tasks_claimable_idx 7.6 MB before vacuum.
--
-- 6a. Plan of claim ($4 = 1) after VACUUM ANALYZE, warm session,
-- EXPLAIN (ANALYZE, BUFFERS), costs removed. 60 index probes for "due"
-- (20 channels x 3 priorities) that read 207 buffers in all, one probe
-- that locks one row, two single-row updates; no sort or scan over the
-- backlog or the finished tasks.
--
--    CTE Scan on claimed (actual time=0.791..0.801 rows=1 loops=1)
--      Buffers: shared hit=230
--      CTE due
--        ->  Sort (actual time=0.435..0.437 rows=1 loops=1)
--              Sort Key: "*VALUES*".column1, c.last_claimed_at NULLS FIRST, c.id
--              Sort Method: quicksort  Memory: 25kB
--              Buffers: shared hit=208
--              ->  Nested Loop (actual time=0.072..0.418 rows=21 loops=1)
--                    Buffers: shared hit=208
--                    ->  Seq Scan on channels c (actual time=0.011..0.013 rows=20 loops=1)
--                          Buffers: shared hit=1
--                    ->  Nested Loop (actual time=0.015..0.020 rows=1 loops=20)
--                          Buffers: shared hit=207
--                          ->  Values Scan on "*VALUES*" (actual time=0.000..0.000 rows=3 loops=20)
--                          ->  Limit (actual time=0.006..0.006 rows=0 loops=60)
--                                Buffers: shared hit=207
--                                ->  Index Only Scan using tasks_claimable_idx on tasks t (actual time=0.006..0.006 rows=0 loops=60)
--                                      Index Cond: ((channel_id = c.id) AND (priority_rank = "*VALUES*".column1) AND (run_at <= now()))
--                                      Heap Fetches: 6
--                                      Buffers: shared hit=207
--      CTE picked
--        ->  Limit (actual time=0.512..0.513 rows=1 loops=1)
--              Buffers: shared hit=213
--              ->  Nested Loop (actual time=0.511..0.512 rows=1 loops=1)
--                    Buffers: shared hit=213
--                    ->  CTE Scan on due (actual time=0.438..0.438 rows=1 loops=1)
--                          Buffers: shared hit=208
--                    ->  Subquery Scan on p (actual time=0.072..0.072 rows=1 loops=1)
--                          Buffers: shared hit=5
--                          ->  Limit (actual time=0.071..0.071 rows=1 loops=1)
--                                Buffers: shared hit=5
--                                ->  LockRows (actual time=0.070..0.071 rows=1 loops=1)
--                                      Buffers: shared hit=5
--                                      ->  Index Scan using tasks_claimable_idx on tasks t_1 (actual time=0.053..0.053 rows=1 loops=1)
--                                            Index Cond: ((channel_id = due.channel_id) AND (priority_rank = due.rank) AND (run_at <= now()))
--                                            Filter: (status = ANY ('{pending,retry,approved}'::text[]))
--                                            Buffers: shared hit=4
--      CTE claimed
--        ->  Update on tasks t_2 (actual time=0.788..0.792 rows=1 loops=1)
--              Buffers: shared hit=230
--              ->  Nested Loop (actual time=0.554..0.555 rows=1 loops=1)
--                    Buffers: shared hit=217
--                    ->  CTE Scan on picked (actual time=0.518..0.519 rows=1 loops=1)
--                          Buffers: shared hit=213
--                    ->  Index Scan using tasks_pkey on tasks t_2 (actual time=0.033..0.034 rows=1 loops=1)
--                          Index Cond: (id = picked.id)
--                          Buffers: shared hit=4
--      CTE touched
--        ->  Update on channels c_1 (actual time=0.230..0.230 rows=0 loops=1)
--              Buffers: shared hit=7
--              ->  Hash Semi Join (actual time=0.170..0.174 rows=1 loops=1)
--                    Hash Cond: (c_1.id = "ANY_subquery".id)
--                    Buffers: shared hit=3
--                    ->  Seq Scan on channels c_1 (actual time=0.007..0.009 rows=20 loops=1)
--                          Buffers: shared hit=1
--                    ->  Hash (actual time=0.101..0.101 rows=1 loops=1)
--                          Buffers: shared hit=2
--                          ->  Subquery Scan on "ANY_subquery" (actual time=0.082..0.087 rows=1 loops=1)
--                                Buffers: shared hit=2
--                                ->  LockRows (actual time=0.080..0.084 rows=1 loops=1)
--                                      Buffers: shared hit=2
--                                      ->  Hash Semi Join (actual time=0.077..0.080 rows=1 loops=1)
--                                            Hash Cond: (l.id = claimed_1.channel_id)
--                                            Buffers: shared hit=1
--                                            ->  Seq Scan on channels l (actual time=0.004..0.006 rows=20 loops=1)
--                                                  Buffers: shared hit=1
--                                            ->  Hash (actual time=0.026..0.026 rows=1 loops=1)
--                                                  ->  CTE Scan on claimed claimed_1 (actual time=0.007..0.007 rows=1 loops=1)
--    Planning:
--      Buffers: shared hit=6
--    Planning Time: 1.307 ms
--    Trigger tasks_notify_update on tasks: time=0.081 calls=1
--    Trigger tasks_touch on tasks: time=0.110 calls=1
--    Execution Time: 1.368 ms
--
-- 6b. Timings of claim ($4 = 1), each in BEGIN ... ROLLBACK:
--
--   state                                        execution   planning
--   just loaded, ANALYZE but no VACUUM yet:
--     first claim (walks 100,000 dead index      58.8 ms     4.2 ms
--     entries, flags them dead as it goes)
--     5th claim (dead entries already flagged)   ~2.0 ms     0.7 ms
--   after VACUUM ANALYZE, EXPLAIN ANALYZE        1.37 ms     1.3 ms
--     (timing instrumentation included)
--   after VACUUM, EXPLAIN (ANALYZE, TIMING OFF)  1.03 ms     0.70 ms
--   pgbench, 1 client, whole BEGIN; claim; ROLLBACK round trip (a busy
--   2-CPU machine, so ranges over repeated runs):
--     -M extended (how PQsendQueryParams runs it, planned each time)
--                                                1.5-2.0 ms per claim
--     -M prepared (named prepared statement)     0.6-1.1 ms per claim
--
--   So: about 1.5-2 ms per claim as vg.db sends it, ~0.8 ms of it planning;
--   preparing the statement once per connection would save most of that.
--   Autovacuum matters: dead entries at the front of the claim index cost
--   every claim until they are flagged or vacuumed; 001_init.sql lowers
--   the tasks table's autovacuum thresholds to 2% for that reason.
--
-- 6c. Concurrency: pgbench, 4 clients, fsync on, each transaction = claim
-- (commit), renew (3b, commit), complete (3d, commit), draining the 9,500
-- due tasks:
--   9,500 transactions, 0 failed, 546 tasks/s (3 commits each),
--   average 7.3 ms per task; claim mean execution 0.62 ms (stddev 0.70,
--   max 25 ms) from pg_stat_statements.
--   Every task completed exactly once: all 9,500 have attempts = 1 and
--   lease_token = 1 (no task claimed twice).
--   Priority order held exactly: claims 1-900 were all the high tasks,
--   901-8600 the normal ones, 8601-9500 the low ones.
--   Fairness: while the 13 channels with normal tasks all had some, the
--   5,000-task backlog channel got 11-20 of every 200 normal claims (1/13 of
--   200 is 15); it got everything only once the others were empty.
--   8,579 of the 9,500 renewals were HOT updates (no index entries added).
--
-- 6d. Scaling with channels: with 1,020 channels (120 with due tasks) and
-- 10,000 due tasks, "due" makes 3,060 probes of ~1 us each: execution
-- 3.4 ms, 5.3 ms per claim round trip (-M extended). Cost grows with the
-- number of channels, not with the number of tasks. If channels ever
-- number many thousands, list only channels with claimable work first (a
-- recursive "loose index scan" over tasks_claimable_idx) instead of
-- probing every channel.
--
-- 6e. Trigger costs (sql/001): the statement-level tasks_notify_update
-- trigger added about 3-10 us to a single-row UPDATE (10,000 lease renewals
-- of different rows in one DO block: 0.29-0.32 s without it, 0.33-0.43 s
-- with it) and kept transition tables for every UPDATE. Since
-- sql/002_cheaper_task_updates.sql it is a row trigger whose WHEN clause
-- (evaluated without calling any function) passes only rows that become
-- claimable, with a payload that rows due at once share, so a 10,000-row
-- UPDATE back to retry still sends one notification; a 10,000-row INSERT
-- sends one (statement trigger, unchanged).
--
-- 6f. Index entries: claims and finishes cannot be HOT updates (status is
-- in the claimable indexes' predicates), so each adds an entry to every
-- full index of tasks. sql/002 dropped tasks_channel_created_idx for that
-- reason: batch mode went from 16,100 to 18,700 tasks/s (20,000 tasks,
-- one worker at VG_CONCURRENCY=500).
