-- docs/claim.sql: the queue queries of lua/vg/queue.lua, explained and
-- measured (documentation only; nothing runs this file: lua/vg/queue.lua
-- holds the statements the worker sends). Schema: sql/001_init.sql.
-- Parameters are $n placeholders as vg.db passes them. Every statement is
-- meant to run on its own, in autocommit (one short transaction each): claim
-- and commit, process with no connection held, record and commit.
--
-- Contents
--   1. claim          one task (or up to N): priority, fair keys (round-robin);
--                     1c. promote: keys for tasks that fell due
--   2. next_due       when the next delayed task becomes claimable
--   3. fenced writes  start, renew, checkpoint, finish, retry, release
--   4. rescue         expired leases back to retry (or failed)
--   5. dead_instance  shorten the leases of a worker process that is gone
--   6. measurements   plans and timings with 100,000 finished + 10,000 due
--
-- ---------------------------------------------------------------- 1. claim
--
-- (Since sql/005_fair_keys.sql. The claim before it probed every channel;
-- docs/fair_claim.md compares the two and a plain FIFO claim, with
-- measurements: the old claim cost ~0.25 ms with 10 channels and ~158 ms
-- with 10,000 busy ones; this one ~0.12 ms in both.)
--
-- Claimable: status pending, retry or approved, due (run_at <= now()) and
-- keyed (fair_key set). Order: priority_rank, then fair_key, then fair_seq:
--
-- * fair_key is a virtual-time tag (start-time fair queuing). A task gets
--   one when it becomes claimable and due: its channel's last queued key at
--   its priority + 1, but never less than the floor (the smallest key
--   queued at that priority, else 0). So every channel's n-th queued task has about the same
--   key: the claim serves one task per channel per round, and a channel
--   that had nothing queued joins the round being served. A channel with
--   10,000 queued tasks has keys floor .. floor+9,999 and delays another
--   channel's first task by at most one task.
-- * fair_seq (from a sequence) orders equal keys by when they were given:
--   a channel that comes back into the round being served (it ran dry,
--   then a new task, a retry or an approval) goes behind the channels
--   already waiting in it, so one that enqueues a task at a time cannot
--   overtake the others.
-- * Within a channel keys grow in the order tasks became claimable: oldest
--   first, "oldest" being when the task became due (for a retry, the end of
--   its back-off).
--
-- Where a task gets its place (the tasks_fair_key triggers, sql/005):
-- * INSERT, due: a key at once (two index descents, no lock; enqueue
--   stays a plain INSERT for producers in any language).
-- * INSERT with run_at in the future, and a retry with back-off: no key
--   (fair_key NULL, in tasks_unkeyed_idx). A promote statement (1c below)
--   gives keys to up to 100 tasks that have fallen due, as if they arrived
--   then: delayed tasks that fall due together join the round robin one
--   per round per channel and never burst ahead.
-- * approved after a review gate, or put back by hand (failed -> pending):
--   a new key, as a task arriving now.
-- * released (shutdown, a lapsed liveness) and rescued (lease expired,
--   worker gone): status goes back to retry with run_at untouched, and the
--   task goes back to the head: the floor, with its old fair_seq, which
--   puts it before every task keyed after it: it is claimed again before
--   the tasks queued after it, as before.
--
-- No hot row: the channel's last key and the floor are read from the
-- indexes (tasks_channel_fair_idx, tasks_fair_idx) without locks, so
-- producers never wait for each other or for claimers, and claims update
-- nothing but the tasks they take (the old claim also moved a channels
-- row). Two producers enqueueing into one channel at the same instant may
-- give their tasks the same key (they then go by fair_seq): fairness
-- within one round per concurrent producer.
--
-- With several claimers at once each takes the first task in this order
-- that nobody has locked (SKIP LOCKED), so "one round" holds within one
-- task per concurrent claimer, a batch of k counting as k claimers.
--
-- How it stays cheap: "picked" is one scan of tasks_fair_idx
-- (priority_rank, fair_key, fair_seq) WHERE claimable AND keyed, under
-- LIMIT $4 FOR UPDATE SKIP LOCKED: the plan is Limit -> LockRows -> Index
-- Scan, so only the rows taken are locked and the cost does not depend on
-- the number of channels or of queued tasks. The "promote" column is one
-- descent of tasks_unkeyed_idx (run_at), an InitPlan run once per claim:
-- true when tasks have fallen due and wait for their keys. The worker then
-- sends the promote statement (1c).
--
-- attempts, lease_token, updated_at, the generic plans and inactive
-- channels: as before (a claim of an approved task starts a new attempt
-- budget at 1; lease_token + 1 is the fencing token; every statement sets
-- updated_at itself so the touch trigger does not run).
--
-- $1 worker_id, $2 instance, $3 lease seconds, $4 max tasks.

WITH picked AS (
    SELECT t.id FROM tasks t
     WHERE t.status IN ('pending', 'retry', 'approved') AND t.fair_key IS NOT NULL
       AND t.fair_seq IS NOT NULL
       AND t.run_at <= now()
     ORDER BY t.priority_rank, t.fair_key, t.fair_seq
     LIMIT $4
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE tasks t
       SET status = 'claimed', claimed_by = $1, claimed_instance = $2,
           claimed_at = now(), updated_at = now(),
           lease_expires_at = now() + make_interval(secs => $3),
           attempts = CASE WHEN t.status = 'approved' THEN 1 ELSE t.attempts + 1 END,
           lease_token = t.lease_token + 1
     WHERE t.id = ANY (ARRAY(SELECT picked.id FROM picked))
 RETURNING t.id, t.channel_id, t.pipeline, t.payload, t.priority, t.attempts,
           t.max_attempts, t.lease_token, t.status,
           (SELECT EXISTS (SELECT 1 FROM tasks u
                            WHERE u.fair_key IS NULL AND u.status IN ('pending', 'retry', 'approved')
                              AND u.run_at <= now())) AS promote
)
SELECT * FROM claimed;

-- ---------------------------------------------------------------- 1b. claim many
--
-- Batch mode (VG_BATCH; lua/vg/queue.lua CLAIM_MANY_SQL) is the same
-- statement with "picked" limited to the highest priority that has a
-- claimable task (one more descent of tasks_fair_idx): a batch never takes
-- a lower priority's tasks while concurrent claimers hold the higher one's;
-- the claim after the last task of a priority moves on to the next.

-- ---------------------------------------------------------------- 1c. promote
--
-- Tasks that fell due without a key (delayed, backing off) get one here,
-- at most 100 per statement, oldest run_at first, as if they arrived now:
-- a channel's tasks in turn after its last key, or from the floor. Until
-- 2026-12-02 this was the first part of every claim; as such its UPDATE
-- cost every claim about a fifth of the server's CPU even when nothing was
-- due (docs/fair_claim.md, "Measurements"). Now a worker sends it when it
-- wakes up for a task that falls due, when a claim found nothing while
-- tasks were due, and (from a task of its own, one at a time) when a
-- claimed row's "promote" column is true. Returns how many it keyed; 100
-- means more may wait, and the worker sends it again.

WITH due_now AS (
    SELECT t.id, t.channel_id, t.priority_rank, t.run_at FROM tasks t
     WHERE t.fair_key IS NULL AND t.status IN ('pending', 'retry', 'approved')
       AND t.run_at <= now()
     ORDER BY t.run_at, t.id
     LIMIT 100
       FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE tasks t
       SET fair_key = k.key, fair_seq = nextval('tasks_fair_seq'), updated_at = now()
      FROM (SELECT d.id, tasks_fair_next(d.channel_id, d.priority_rank)
                         + row_number() OVER (PARTITION BY d.channel_id, d.priority_rank
                                              ORDER BY d.run_at, d.id) - 1 AS key
              FROM due_now d) k
     WHERE t.id = k.id
)
SELECT count(*)::int AS n FROM due_now;

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

-- 3d'. finish and claim the next (COMPLETE_CLAIM_SQL): an unbatched slot
-- that will claim again when its task is done (the queue had work at the
-- last look, no shutdown, its liveness held, no claim's answer in doubt)
-- sends 3d and claim 1 as one statement, three data-modifying CTEs:
--   WITH done AS (3d on $5, token $6, result $7, RETURNING id),
--        picked AS (claim 1's picked: $4 tasks in fair order, SKIP LOCKED),
--        claimed AS (claim 1's claimed, $1-$3)
--   SELECT (SELECT count(*) FROM done)::int AS completed, claimed.*
--     FROM (SELECT) AS one LEFT JOIN claimed ON true
-- One row always: "completed" says whether the fence held; the claimed
-- task's columns are NULL when nothing was claimed. One round trip and one
-- commit per task instead of two: with 10 slots on 2 CPUs the worker ran
-- 1.4-1.6 times as many tasks per second, at about 20% less server CPU
-- per task (docs/fair_claim.md). The two updates cannot meet: the task
-- being finished is claimed or processing, never claimable, so picked
-- never sees it. A fence that failed still claims: the claimed task is
-- the slot's next either way. If the answer is lost, the claim counts as
-- one whose answer was lost (the next claim gives its task back first).

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
-- (6a-6d measure the claim before sql/005_fair_keys.sql, kept for the
-- record; the fair claim's plan and figures are in docs/fair_claim.md.)
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
