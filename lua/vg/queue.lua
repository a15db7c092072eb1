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
-- Claimable tasks that are due carry a fair key (sql/005_fair_keys.sql):
-- the claim is one scan of tasks_fair_idx in (priority_rank, fair_key,
-- fair_seq) order, whatever the number of channels or queued tasks.
--
-- promote: tasks that became due since they were queued (delayed, backing
-- off) get their key, at most 100 per statement, oldest run_at first; the
-- tasks of one channel in turn after its last key (or from the floor). It
-- is a statement of its own (PROMOTE_SQL), not part of every claim: as a
-- part of the claim its UPDATE cost every claim a fifth of its server CPU
-- even when nothing was due (docs/fair_claim.md). Every claimed row says
-- whether tasks are waiting for their keys (its "promote" column: one
-- descent of tasks_unkeyed_idx), and the worker then sends PROMOTE_SQL;
-- it also sends it when a claim found nothing while tasks were due, and
-- when it wakes up for a task that falls due (lua/vg/consumer.lua).
-- How many tasks one promote statement keys at most.
M.PROMOTE_LIMIT = 100

-- Due tasks waiting for their fair key: tasks_unkeyed_idx's rows that are
-- due (the promote statement takes them; every claim says whether any).
local UNKEYED_DUE = [[t.fair_key IS NULL AND t.status IN ('pending', 'retry', 'approved')
       AND t.run_at <= now()]]

M.PROMOTE_SQL = [[
WITH due_now AS (
    SELECT t.id, t.channel_id, t.priority_rank, t.run_at FROM tasks t
     WHERE ]] .. UNKEYED_DUE .. [[

     ORDER BY t.run_at, t.id
     LIMIT ]] .. M.PROMOTE_LIMIT .. [[

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
SELECT count(*)::int AS n FROM due_now]]

-- A task completed: its result ($3 in COMPLETE_SQL, $7 in
-- COMPLETE_CLAIM_SQL), its lease and step cleared.
local function complete_set(result)
  return [[
UPDATE tasks
   SET status = 'completed', result = ]] .. result .. [[, last_error = NULL,
       current_step = NULL, lease_expires_at = NULL,
       updated_at = now(), completed_at = now()]]
end

-- claimed: take the picked tasks (a new lease and fencing token). The
-- picked ids go in as one array, which pins the UPDATE to the primary key:
-- joined to picked, the generic plan hashed the whole table for a claim of
-- hundreds (measured: 4 of 11 ms for a claim of 500 with 20,000 tasks).
-- fair_key stays on a claimed task: a release or rescue puts it back in
-- its place.
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
           t.max_attempts, t.lease_token, t.status,
           -- (its own t: uncorrelated, run once per statement)
           (SELECT EXISTS (SELECT 1 FROM tasks t WHERE ]] .. UNKEYED_DUE .. [[)) AS promote
)
]]

-- The due tasks that have their fair key, in fair order: what every claim
-- descends the fair-order index for (Limit above LockRows above the index
-- scan, so only the rows taken are locked). also: more conditions.
local function in_fair_order(what, also)
  return "    SELECT " .. what .. [[ FROM tasks t
     WHERE t.status IN ('pending', 'retry', 'approved') AND t.fair_key IS NOT NULL
       AND t.fair_seq IS NOT NULL
       AND t.run_at <= now()]] .. (also or "") .. "\n" .. [[
     ORDER BY t.priority_rank, t.fair_key, t.fair_seq
]]
end

-- picked: the first $4 of them that nobody has locked.
local function picked(also)
  return "picked AS (\n" .. in_fair_order("t.id", also) .. [[
     LIMIT $4
       FOR UPDATE SKIP LOCKED
),
]]
end

-- Claim up to $4 tasks: the first ones in fair order that nobody has
-- locked.
M.CLAIM_SQL = "WITH " .. picked() .. CLAIM_TAKE .. "SELECT * FROM claimed"

-- Claim up to $4 (> 1) tasks in one statement (batch mode), in the same
-- order, but only from the highest priority that has due tasks: a batch
-- never takes a lower priority's tasks while concurrent claimers hold the
-- higher one's (the next claim moves on once that priority is empty).
M.CLAIM_MANY_SQL = "WITH top AS (\n" .. in_fair_order("t.priority_rank") .. "     LIMIT 1\n),\n"
  .. picked(" AND t.priority_rank = (SELECT priority_rank FROM top)")
  .. CLAIM_TAKE .. "SELECT * FROM claimed"

-- Complete task $5 (fencing token $6, result $7) and claim up to $4 more,
-- as CLAIM_SQL does, in one statement (one round trip, one commit): what
-- an unbatched slot sends when its task is done and it goes on to the
-- next. One row: "completed" (1 when the fence held, else 0), then the
-- claimed task's columns, all NULL when nothing was claimed.
M.COMPLETE_CLAIM_SQL = "WITH done AS (\n" .. complete_set("$7") .. [[
 WHERE id = $5 AND lease_token = $6 AND status IN ('claimed', 'processing')
RETURNING id
),
]] .. picked() .. CLAIM_TAKE .. [[
SELECT (SELECT count(*) FROM done)::int AS completed, claimed.*
  FROM (SELECT) AS one LEFT JOIN claimed ON true]]

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

M.COMPLETE_SQL = complete_set("$3") .. [[
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

-- $3 error, $4 retriable, $5 back-off base seconds, $6 cap seconds, $7 an
-- infrastructure error (pool timeout, lost connection, database down): the
-- attempt is given back, so such errors never use up a task's attempts.
M.FAIL_SQL = [[
UPDATE tasks
   SET attempts = CASE WHEN $7 THEN greatest(attempts - 1, 0) ELSE attempts END,
       status = CASE WHEN $7 OR ($4 AND attempts < max_attempts) THEN 'retry' ELSE 'failed' END,
       run_at = CASE WHEN $7 OR ($4 AND attempts < max_attempts)
                     THEN now() + make_interval(secs =>
                              least($6::float8, $5::float8 * 2 ^ (greatest(attempts - 1, 0)))
                              * (0.5 + random() / 2))
                     ELSE run_at END,
       last_error = $3, lease_expires_at = NULL, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING status, run_at, attempts]]

-- Back to the queue at once, the attempt not counted (shutdown release). The
-- task keeps its place: run_at is not touched, so it is claimed again
-- before the tasks queued after it.
M.RELEASE_SQL = [[
UPDATE tasks
   SET status = 'retry', attempts = greatest(attempts - 1, 0),
       lease_expires_at = NULL, lease_token = lease_token + 1,
       last_error = 'released by ' || $3, updated_at = now()
 WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
RETURNING id]]

-- Liveness (docs/fencing.md). Renew: only while it has not lapsed on the
-- database clock; no row back means it lapsed (the owner has already
-- stopped its tasks by its own clock, and peers may be rescuing them).
-- $1 worker_id, $2 instance, $3 liveness seconds.
M.LIVENESS_RENEW_SQL = [[
UPDATE workers SET alive_until = now() + make_interval(secs => $3), last_seen_at = now()
 WHERE worker_id = $1 AND instance = $2 AND alive_until > now()
RETURNING 1 AS held]]

-- Acquire (again): every task the instance still holds in the database was
-- claimed under a liveness that lapsed, and the owner runs none of them any
-- more, so they go back to the queue first, in the same statement, their
-- place and attempt kept. Then a new alive_until.
M.LIVENESS_ACQUIRE_SQL = [[
WITH released AS (
    UPDATE tasks t
       SET status = 'retry', attempts = greatest(t.attempts - 1, 0),
           lease_expires_at = NULL, lease_token = t.lease_token + 1,
           last_error = format('released by %s after its liveness lapsed', $1::text),
           updated_at = now()
     WHERE t.claimed_instance = $2 AND t.status IN ('claimed', 'processing')
 RETURNING t.id
),
upsert AS (
    INSERT INTO workers AS w (worker_id, instance, started_at, last_seen_at, status, alive_until)
    VALUES ($1, $2, now(), now(), 'running', now() + make_interval(secs => $3))
    ON CONFLICT (worker_id, instance) DO UPDATE
       SET alive_until = EXCLUDED.alive_until, last_seen_at = now()
 RETURNING 1
)
SELECT (SELECT count(*) FROM released)::int AS released, (SELECT count(*) FROM upsert)::int AS held]]

-- Give back the tasks this instance claimed but does not know it holds: a
-- claim whose answer was lost (the connection died, or the claiming task
-- was cancelled, after the server committed it). $3: a JSON array of the
-- ids the instance does hold. Only tasks never started ('claimed'); their
-- place and attempt kept, as when the liveness is taken again.
M.RELEASE_UNKNOWN_SQL = [[
UPDATE tasks t
   SET status = 'retry', attempts = greatest(t.attempts - 1, 0),
       lease_expires_at = NULL, lease_token = t.lease_token + 1,
       last_error = format('released by %s: the answer to its claim was lost', $1::text),
       updated_at = now()
 WHERE t.claimed_instance = $2 AND t.status = 'claimed'
   AND NOT t.id = ANY (ARRAY(SELECT x::bigint FROM jsonb_array_elements_text($3::jsonb) x))
RETURNING t.id]]

-- Rescue in one statement: tasks whose lease expired, and tasks of
-- instances whose liveness lapsed on the database clock, go back to retry
-- (or to failed when their attempts are used up), keeping their place in
-- the queue (run_at untouched). A liveness that lapsed after the server
-- (re)started is not acted on in the first $2 seconds after that start:
-- its owner could not renew while the server was down, and gives its own
-- tasks back (attempt not counted) when it takes its liveness again. One
-- that lapsed before the start was lapsed while the server was up: its
-- owner is gone, and its tasks are rescued at once. Also reports how many tasks are in
-- flight, when the next queued task is due and when the next lease or
-- liveness could lapse, so an idle worker sends this one statement per
-- poll and wakes up when a rescue may be due.
M.RESCUE_SQL = [[
WITH victims AS (
    SELECT t.id FROM tasks t
     WHERE t.status IN ('claimed', 'processing')
       AND (t.lease_expires_at < now()
            OR EXISTS (SELECT 1 FROM workers w
                        WHERE w.worker_id = t.claimed_by AND w.instance = t.claimed_instance
                          AND w.alive_until < now()
                          AND (w.alive_until < pg_postmaster_start_time()
                               OR pg_postmaster_start_time() < now() - make_interval(secs => $2))))
     ORDER BY t.id
     LIMIT 100
       FOR UPDATE OF t SKIP LOCKED
),
rescued AS (
    UPDATE tasks t
       SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'retry' END,
           last_error = CASE WHEN t.lease_expires_at < now()
                             THEN format('lease expired (worker %s, instance %s)',
                                         t.claimed_by, t.claimed_instance)
                             ELSE format('worker %s (instance %s) stopped renewing its liveness',
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
          FROM tasks WHERE status IN ('pending', 'retry', 'approved')) AS next_due,
       (SELECT extract(epoch FROM least(
                 (SELECT min(w.alive_until) FROM workers w
                   WHERE w.alive_until > now() AND w.instance <> $1),
                 (SELECT min(lease_expires_at) FROM tasks
                   WHERE status IN ('claimed', 'processing'))) - now())::float8) AS next_expiry]]

M.COMPLETED_STEPS_SQL = [[
SELECT step, output, files FROM task_steps WHERE task_id = $1 AND status = 'completed']]

-- Checkpoint a finished step, only while the fence holds.
M.CHECKPOINT_SQL = [[
WITH fence AS (
    UPDATE tasks SET current_step = $3, updated_at = now()
     WHERE id = $1 AND lease_token = $2 AND status IN ('claimed', 'processing')
 RETURNING id
)
INSERT INTO task_steps AS s (task_id, step, status, attempt, started_at, finished_at, output, files)
SELECT fence.id, $3, 'completed', $4, to_timestamp($6), now(), $5, $7 FROM fence
    ON CONFLICT (task_id, step) DO UPDATE
   SET status = 'completed', attempt = EXCLUDED.attempt,
       started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
       output = EXCLUDED.output, files = EXCLUDED.files
RETURNING s.task_id]]

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
  -- After a server start, liveness lapses wait this long (seconds) for
  -- their owners to come back and give their tasks back themselves.
  q.restart_grace = opts.restart_grace or 10
  return q
end

-- Claim up to n tasks (default 1). Returns a list of task rows.
function Queue:claim(n)
  n = n or 1
  return db.query(n > 1 and M.CLAIM_MANY_SQL or M.CLAIM_SQL,
                  self.worker_id, self.instance, self.lease_seconds, n)
end

-- Give due tasks without a fair key theirs (PROMOTE_SQL). Returns how
-- many it keyed; M.PROMOTE_LIMIT means more may be waiting.
function Queue:promote()
  return db.query(M.PROMOTE_SQL)[1].n
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

-- Renew the leases of the given tasks (on pool, default the shared one);
-- returns the set of ids still held.
function Queue:renew(tasks, pool)
  local list = {}
  for _, t in ipairs(tasks) do list[#list + 1] = { t.id, t.lease_token } end
  local still = {}
  if #list == 0 then return still end
  local rows
  if pool then rows = pool:query(M.RENEW_SQL, list, self.lease_seconds)
  else rows = db.query(M.RENEW_SQL, list, self.lease_seconds) end
  for _, row in ipairs(rows) do
    still[row.id] = true
  end
  return still
end

function Queue:complete(task, result)
  return held(db.query(M.COMPLETE_SQL, task.id, task.lease_token, result or db.null))
end

-- Complete task and claim up to n (default 1) more in one statement
-- (COMPLETE_CLAIM_SQL). Returns whether the task's fence held, and the
-- list of task rows claimed.
function Queue:complete_claim(task, result, n)
  local row = db.query(M.COMPLETE_CLAIM_SQL, self.worker_id, self.instance, self.lease_seconds,
                       n or 1, task.id, task.lease_token, result or db.null)[1]
  local completed = row.completed == 1
  row.completed = nil
  if row.id == db.null then return completed, {} end
  return completed, { row }
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
function Queue:fail(task, err, retriable, infra)
  local rows = db.query(M.FAIL_SQL, task.id, task.lease_token, tostring(err),
                        retriable and true or false, self.retry_base, self.retry_max,
                        infra and true or false)
  if #rows == 0 then return nil end
  return rows[1].status, rows[1].run_at
end

function Queue:release(task)
  return held(db.query(M.RELEASE_SQL, task.id, task.lease_token, self.worker_id))
end

-- Returns in_flight (all workers), the list of rescued tasks, the seconds
-- until the next queued task is due (nil: none queued) and the seconds
-- until the next lease or liveness of another worker could lapse (nil:
-- none held).
function Queue:rescue()
  local row = db.query(M.RESCUE_SQL, self.instance, self.restart_grace)[1]
  local rescued = row.rescued
  if type(rescued) ~= "table" then rescued = {} end
  for _, r in ipairs(rescued) do
    log.warning("task_rescued", { task_id = r.id, status = r.status,
      previous_worker = r.claimed_by, previous_instance = r.claimed_instance })
  end
  local due = row.next_due
  if due == db.null then due = nil end
  local expiry = row.next_expiry
  if expiry == db.null then expiry = nil end
  return row.in_flight, rescued, due, expiry
end

-- Liveness, on the given pool (renewals: the consumer's own connection, so
-- that they never wait behind task queries; acquire: nil, the shared pool,
-- as an idle worker has closed its own). renew -> true while held; acquire
-- -> true, and the number of tasks it gave back.
function Queue:renew_liveness(pool, seconds)
  return #pool:query(M.LIVENESS_RENEW_SQL, self.worker_id, self.instance, seconds) > 0
end

function Queue:acquire_liveness(pool, seconds)
  local rows
  if pool then rows = pool:query(M.LIVENESS_ACQUIRE_SQL, self.worker_id, self.instance, seconds)
  else rows = db.query(M.LIVENESS_ACQUIRE_SQL, self.worker_id, self.instance, seconds) end
  local row = rows[1]
  return row.held > 0, row.released
end

-- Give back the tasks claimed by this instance (status 'claimed') other
-- than held_ids (a list); returns their ids.
function Queue:release_unknown(held_ids)
  local held = "[" .. table.concat(held_ids, ",") .. "]" -- integers; {} would encode as an object
  local out = {}
  for i, r in ipairs(db.query(M.RELEASE_UNKNOWN_SQL, self.worker_id, self.instance, held)) do out[i] = r.id end
  return out
end

-- The finished steps of a task: step name -> its output, and step name ->
-- the workspace's files after it ({ path = size }, or nil when none were
-- recorded).
function Queue:completed_steps(task)
  local done, files = {}, {}
  for _, row in ipairs(db.query(M.COMPLETED_STEPS_SQL, task.id)) do
    done[row.step] = type(row.output) == "table" and row.output or {}
    if type(row.files) == "table" then files[row.step] = row.files end
  end
  return done, files
end

-- files: the workspace's files after the step ({ path = size }), or nil.
function Queue:checkpoint(task, step, attempt, output, started_at, files)
  if files ~= nil and next(files) == nil then files = nil end -- none: NULL
  return held(db.query(M.CHECKPOINT_SQL, task.id, task.lease_token, step, attempt,
                       output or db.null, started_at, files or db.null))
end

function Queue:register(status, stats, version)
  db.query(M.WORKER_UPSERT_SQL, self.worker_id, self.instance, status,
           stats.done or 0, stats.failed or 0, stats.in_flight or 0, version or db.null)
end

return M
