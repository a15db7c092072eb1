-- The task queue in PostgreSQL (DESIGN sections 6 and 7): claiming with
-- FOR UPDATE SKIP LOCKED, priorities, round-robin across channels, leases
-- with fencing tokens, rescue of expired or orphaned leases, retries with
-- back-off, release at shutdown. Every statement is its own short
-- transaction; no connection is held while a task runs.
--
-- The SQL is explained in docs/claim.sql.
local db = require "vg.db"
local log = require "vg.log"

local M = {}

-- The parts of the claim statements (docs/claim.sql, sections 1 and 1b).
--
-- due: the (channel, priority) pairs that have a due task, in the order
-- they are served (turn): priority, then the channel served least recently.
local CLAIM_DUE = [[
WITH due AS MATERIALIZED (
    SELECT c.id AS channel_id, r.rank,
           row_number() OVER (ORDER BY r.rank, c.last_claimed_at NULLS FIRST, c.id) AS turn
      FROM channels c
     CROSS JOIN (VALUES (0::smallint), (1::smallint), (2::smallint)) AS r (rank)
     CROSS JOIN LATERAL (
           -- The ORDER BY (the claimable index's own order) pins this to
           -- one descent of tasks_claimable_idx: without it, once the table
           -- is analysed with many due rows, the planner prefers scanning
           -- "until the first match" (the table, or the run_at index), which
           -- reads every row for each priority that has no due task.
           SELECT 1 FROM tasks t
            WHERE t.channel_id = c.id AND t.priority_rank = r.rank
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
            ORDER BY t.channel_id, t.priority_rank, t.run_at, t.id
            LIMIT 1) AS has_due
     ORDER BY turn
),
]]

-- claimed, touched: take the picked tasks (a new lease and fencing token)
-- and move the channels' round-robin pointer. The picked ids go in as one
-- array, which pins the UPDATE to the primary key: joined to picked, the
-- generic plan hashed the whole table for a claim of hundreds (measured:
-- 4 of 11 ms for a claim of 500 with 20,000 tasks).
local CLAIM_TAKE = [[
claimed AS (
    UPDATE tasks t
       SET status = 'claimed', claimed_by = $1, claimed_instance = $2,
           claimed_at = now(), updated_at = now(),
           lease_expires_at = now() + make_interval(secs => $3),
           attempts = CASE WHEN t.status = 'approved' THEN 1 ELSE t.attempts + 1 END,
           lease_token = t.lease_token + 1
     WHERE t.id = ANY (ARRAY(SELECT picked.id FROM picked))
 RETURNING t.id, t.channel_id, t.pipeline, t.payload, t.priority, t.attempts,
           t.max_attempts, t.lease_token, t.status
),
touched AS (
    UPDATE channels c SET last_claimed_at = now()
     WHERE c.id IN (SELECT l.id FROM channels l
                     WHERE l.id IN (SELECT claimed.channel_id FROM claimed)
                       FOR NO KEY UPDATE SKIP LOCKED)
)
SELECT * FROM claimed]]

-- Claim up to $4 tasks, at most one per (channel, priority) pair: for each
-- pair in turn, its oldest due task that nobody has locked.
M.CLAIM_SQL = CLAIM_DUE .. [[
picked AS (
    SELECT p.id
      FROM due
     CROSS JOIN LATERAL (
           SELECT t.id FROM tasks t
            WHERE t.channel_id = due.channel_id AND t.priority_rank = due.rank
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
            ORDER BY t.run_at, t.id
            LIMIT 1
              FOR UPDATE SKIP LOCKED) p
     LIMIT $4
),
]] .. CLAIM_TAKE

-- Claim up to $4 (> 1) tasks in one statement (batch mode), fairly, and
-- only from the highest priority that has due tasks (the next claim moves
-- on to the next priority once it is done, so a batch never takes a lower
-- priority's tasks while higher ones wait, however claims interleave):
-- each of its due channels offers its oldest k tasks (k: twice an even
-- share of $4 among them, plus one, in case concurrent claimers hold some),
-- and the candidates are locked in round-robin order: the first task of
-- every channel, then the second, and so on. As in CLAIM_SQL, the
-- materialised CTE keeps that order and the LATERAL locks only the rows
-- the LIMIT takes.
M.CLAIM_MANY_SQL = CLAIM_DUE .. [[
top AS MATERIALIZED (
    SELECT * FROM due WHERE due.rank = (SELECT min(rank) FROM due)
),
share AS (
    SELECT 2 * ceil($4::float8 / count(*))::int + 1 AS k FROM top
),
candidates AS MATERIALIZED (
    SELECT x.id
      FROM top
     CROSS JOIN LATERAL (
           SELECT t.id, row_number() OVER (ORDER BY t.run_at, t.id) AS n
             FROM tasks t
            WHERE t.channel_id = top.channel_id AND t.priority_rank = top.rank
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
            ORDER BY t.run_at, t.id
            LIMIT (SELECT k FROM share)) x
     ORDER BY x.n, top.turn
),
picked AS (
    SELECT p.id
      FROM candidates c
     CROSS JOIN LATERAL (
           SELECT t.id FROM tasks t
            WHERE t.id = c.id
              AND t.status IN ('pending', 'retry', 'approved')
              AND t.run_at <= now()
              FOR UPDATE SKIP LOCKED) p
     LIMIT $4
),
]] .. CLAIM_TAKE

-- Seconds until the next claimable task is due (NULL: none queued).
M.NEXT_DUE_SQL = [[
SELECT extract(epoch FROM min(run_at) - now())::float8 AS seconds
  FROM tasks WHERE status IN ('pending', 'retry', 'approved')]]

M.START_SQL = [[
UPDATE tasks SET status = 'processing', current_step = $3, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING id]]

-- Renew the leases of every task this worker runs, in one statement.
-- $1: JSON [[id, token], ...]. Returns the ids still held.
M.RENEW_SQL = [[
UPDATE tasks t
   SET lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
  FROM (SELECT (e->>0)::bigint AS id, (e->>1)::bigint AS token
          FROM jsonb_array_elements($1::jsonb) e) h
 WHERE t.id = h.id AND t.lease_token = h.token
   AND t.status IN ('claimed', 'processing')
RETURNING t.id]]

M.COMPLETE_SQL = [[
UPDATE tasks
   SET status = 'completed', result = $3, last_error = NULL,
       current_step = NULL, lease_expires_at = NULL,
       updated_at = now(), completed_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING id]]

-- Complete many tasks in one statement (batch mode). $1: JSON
-- [[id, token, result], ...]. Returns the ids whose fence held. The id
-- array pins the rows to the primary key (see CLAIM_TAKE).
M.COMPLETE_MANY_SQL = [[
UPDATE tasks t
   SET status = 'completed', result = nullif(e.value->2, 'null'::jsonb), last_error = NULL,
       current_step = NULL, lease_expires_at = NULL,
       updated_at = now(), completed_at = now()
  FROM jsonb_array_elements($1::jsonb) e
 WHERE t.id = ANY (ARRAY(SELECT (x->>0)::bigint FROM jsonb_array_elements($1::jsonb) x))
   AND t.id = (e.value->>0)::bigint AND t.lease_token = (e.value->>1)::bigint
   AND t.status IN ('claimed', 'processing')
RETURNING t.id]]

M.REVIEW_SQL = [[
UPDATE tasks
   SET status = 'awaiting_review', current_step = $3, lease_expires_at = NULL,
       result = $4, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING id]]

-- $3 error, $4 retriable, $5 back-off base seconds, $6 cap seconds.
M.FAIL_SQL = [[
UPDATE tasks
   SET status = CASE WHEN $4 AND attempts < max_attempts THEN 'retry' ELSE 'failed' END,
       run_at = CASE WHEN $4 AND attempts < max_attempts
                     THEN now() + make_interval(secs =>
                              least($6::float8, $5::float8 * 2 ^ (attempts - 1))
                              * (0.5 + random() / 2))
                     ELSE run_at END,
       last_error = $3, lease_expires_at = NULL, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING status, run_at, attempts]]

-- Back to the queue at once, the attempt not counted (shutdown release).
M.RELEASE_SQL = [[
UPDATE tasks
   SET status = 'retry', run_at = now(), attempts = greatest(attempts - 1, 0),
       lease_expires_at = NULL, lease_token = lease_token + 1,
       last_error = 'released at shutdown by ' || $3, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING id]]

-- Rescue in one statement: tasks whose lease expired, and tasks of
-- instances whose liveness lock is free (their session is gone: the
-- process died or lost its connection) go back to retry, or to failed
-- when their attempts are used up. Not in the first 15 s after a server
-- start, when every worker's lock was lost at once and they are still
-- reconnecting. Also reports how many tasks are in flight, so the caller
-- can check more often while there are some, and when the next queued task
-- is due, so an idle worker sends this one statement per poll and nothing
-- else.
M.RESCUE_SQL = [[
WITH inst AS (
    SELECT DISTINCT claimed_instance AS instance
      FROM tasks
     WHERE status IN ('claimed', 'processing')
       AND claimed_instance IS NOT NULL AND claimed_instance <> $1
       AND pg_postmaster_start_time() < now() - interval '15 seconds'
),
gone AS MATERIALIZED (
    SELECT instance FROM inst
     WHERE pg_try_advisory_xact_lock(hashtextextended(instance, 0))
),
victims AS (
    SELECT id FROM tasks
     WHERE status IN ('claimed', 'processing')
       AND (lease_expires_at < now()
            OR claimed_instance IN (SELECT instance FROM gone))
     ORDER BY id
     LIMIT 100
       FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE tasks t
       SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'retry' END,
           run_at = now(),
           last_error = CASE WHEN t.lease_expires_at < now()
                             THEN format('lease expired (worker %s, instance %s)',
                                         t.claimed_by, t.claimed_instance)
                             ELSE format('worker %s (instance %s) is gone',
                                         t.claimed_by, t.claimed_instance) END,
           lease_expires_at = NULL,
           lease_token = t.lease_token + 1,
           updated_at = now()
      FROM victims
     WHERE t.id = victims.id
 RETURNING t.id, t.status, t.claimed_by, t.claimed_instance
)
SELECT (SELECT count(*) FROM tasks WHERE status IN ('claimed', 'processing'))::int AS in_flight,
       (SELECT coalesce(json_agg(r), '[]'::json) FROM rescued r) AS rescued,
       (SELECT extract(epoch FROM min(run_at) - now())::float8
          FROM tasks WHERE status IN ('pending', 'retry', 'approved')) AS next_due]]

M.COMPLETED_STEPS_SQL = [[
SELECT step, output FROM task_steps WHERE task_id = $1 AND status = 'completed']]

-- Checkpoint a finished step, only while the fence holds.
M.CHECKPOINT_SQL = [[
WITH fence AS (
    UPDATE tasks SET current_step = $3, updated_at = now()
     WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
 RETURNING id
)
INSERT INTO task_steps AS s (task_id, step, status, attempt, started_at, finished_at, output)
SELECT fence.id, $3, 'completed', $4, to_timestamp($6), now(), $5 FROM fence
    ON CONFLICT (task_id, step) DO UPDATE
   SET status = 'completed', attempt = EXCLUDED.attempt,
       started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
       output = EXCLUDED.output
RETURNING s.task_id]]

M.LIVENESS_LOCK_SQL = "SELECT pg_advisory_lock(hashtextextended($1, 0))"

M.WORKER_UPSERT_SQL = [[
INSERT INTO workers (worker_id, instance, started_at, last_seen_at, status,
                     tasks_done, tasks_failed, in_flight, version)
VALUES ($1, $2, now(), now(), $3, $4, $5, $6, $7)
ON CONFLICT (worker_id, instance) DO UPDATE
   SET last_seen_at = now(), status = EXCLUDED.status,
       tasks_done = EXCLUDED.tasks_done, tasks_failed = EXCLUDED.tasks_failed,
       in_flight = EXCLUDED.in_flight, version = EXCLUDED.version]]

-- A lease was lost: the fenced write matched no row.
M.LEASE_LOST = "lease_lost"

local Queue = {}
Queue.__index = Queue

-- opts: worker_id, instance, lease_seconds, retry_base, retry_max
function M.new(opts)
  local q = setmetatable({}, Queue)
  q.worker_id = assert(opts.worker_id)
  q.instance = assert(opts.instance)
  q.lease_seconds = opts.lease_seconds or 60
  q.retry_base = opts.retry_base or 5
  q.retry_max = opts.retry_max or 300
  return q
end

-- Claim up to n tasks (default 1). Returns a list of task rows.
function Queue:claim(n)
  n = n or 1
  return db.query(n > 1 and M.CLAIM_MANY_SQL or M.CLAIM_SQL,
                  self.worker_id, self.instance, self.lease_seconds, n)
end

-- Seconds until the next queued task is due (<= 0: due now), or nil.
function Queue:next_due()
  local rows = db.query(M.NEXT_DUE_SQL)
  local s = rows[1] and rows[1].seconds
  if s == db.null then return nil end
  return s
end

local function held(rows) return #rows > 0 end

function Queue:start(task, step)
  return held(db.query(M.START_SQL, task.id, task.lease_token, step or db.null))
end

-- Renew the leases of the given tasks; returns the set of ids still held.
function Queue:renew(tasks)
  local list = {}
  for _, t in ipairs(tasks) do list[#list + 1] = { t.id, t.lease_token } end
  local still = {}
  if #list == 0 then return still end
  for _, row in ipairs(db.query(M.RENEW_SQL, list, self.lease_seconds)) do
    still[row.id] = true
  end
  return still
end

function Queue:complete(task, result)
  return held(db.query(M.COMPLETE_SQL, task.id, task.lease_token, result or db.null))
end

-- items: list of { task, result }. Returns the set of ids completed.
function Queue:complete_many(items)
  local list = {}
  for i, it in ipairs(items) do
    list[i] = { it[1].id, it[1].lease_token, it[2] == nil and db.null or it[2] }
  end
  local held_ids = {}
  for _, row in ipairs(db.query(M.COMPLETE_MANY_SQL, list)) do held_ids[row.id] = true end
  return held_ids
end

function Queue:await_review(task, step, result)
  return held(db.query(M.REVIEW_SQL, task.id, task.lease_token, step, result or db.null))
end

-- Record a failure: retry with back-off (retriable, attempts left) or
-- failed. Returns the new status (nil when the lease was lost) and run_at.
function Queue:fail(task, err, retriable)
  local rows = db.query(M.FAIL_SQL, task.id, task.lease_token, tostring(err),
                        retriable and true or false, self.retry_base, self.retry_max)
  if #rows == 0 then return nil end
  return rows[1].status, rows[1].run_at
end

function Queue:release(task)
  return held(db.query(M.RELEASE_SQL, task.id, task.lease_token, self.worker_id))
end

-- Returns in_flight (all workers), the list of rescued tasks, and the
-- seconds until the next queued task is due (nil: none queued).
function Queue:rescue()
  local row = db.query(M.RESCUE_SQL, self.instance)[1]
  local rescued = row.rescued
  if type(rescued) ~= "table" then rescued = {} end
  for _, r in ipairs(rescued) do
    log.warning("task_rescued", { task_id = r.id, status = r.status,
      previous_worker = r.claimed_by, previous_instance = r.claimed_instance })
  end
  local due = row.next_due
  if due == db.null then due = nil end
  return row.in_flight, rescued, due
end

function Queue:completed_steps(task)
  local done = {}
  for _, row in ipairs(db.query(M.COMPLETED_STEPS_SQL, task.id)) do
    done[row.step] = type(row.output) == "table" and row.output or {}
  end
  return done
end

function Queue:checkpoint(task, step, attempt, output, started_at)
  return held(db.query(M.CHECKPOINT_SQL, task.id, task.lease_token, step, attempt,
                       output or db.null, started_at))
end

function Queue:register(status, stats, version)
  db.query(M.WORKER_UPSERT_SQL, self.worker_id, self.instance, status,
           stats.done or 0, stats.failed or 0, stats.in_flight or 0, version or db.null)
end

return M
