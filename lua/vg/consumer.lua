-- The queue side of a worker: the loop body that claims tasks and runs each
-- in its own Lua task (up to VG_CONCURRENCY at once), the rescue of
-- orphaned work, and the release of unfinished tasks at the end of the
-- shutdown grace. Liveness and leases with self-fencing (docs/fencing.md)
-- are in vg/liveness.lua, installed as methods of the same class.
--
-- The safety rule: a task runs only while this worker's last successful
-- renewal (of its liveness and of the task's lease), timed on the monotonic
-- clock from before the renewal was sent, is younger than the lease minus
-- VG_FENCE_MARGIN. Past that the fencer cancels the task, and the step
-- guard (vg.proc.fence) SIGKILLs the step commands' process groups, even if
-- this process is spinning. Other workers take a task over only once its
-- lease or its owner's liveness has passed on the database clock.
--
-- Waiting for work costs nothing: the dispatcher sleeps on the LISTEN
-- connection until a vg_tasks notification, the next delayed task's run_at,
-- or the poll interval (a safety net), whichever comes first.
local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local queue = require "vg.queue"
local pipeline = require "vg.pipeline"
local proc = require "vg.proc"
local liveness = require "vg.liveness"

local M = {}

M.RENEW_PER_LIVENESS = liveness.RENEW_PER_LIVENESS
M.RESCUE_SLACK = 0.05     -- look for a lapsed lease this long after it lapses

-- Errors of the database's reachability rather than of the task: they
-- never use up a task's attempts, and writes retry through them.
local INFRA_CODES = {
  pool_timeout = true, connection_lost = true, connect_failed = true,
  database_unreachable = true,
}
function M.is_infra(e)
  if type(e) ~= "table" then return false end
  if INFRA_CODES[e.code] then return true end
  local st = type(e.sqlstate) == "string" and e.sqlstate or ""
  -- 08: connection exception; 57P: the server is shutting down or restarting.
  return st:sub(1, 2) == "08" or st:sub(1, 3) == "57P"
end

local function err_text(e)
  if type(e) == "table" and e.message then return tostring(e.code or "error") .. ": " .. tostring(e.message) end
  return tostring(e)
end

-- Claim errors that mean the statement was never sent.
local NOT_SENT = { pool_timeout = true, connect_failed = true, database_unreachable = true }

local Consumer = {}
Consumer.__index = Consumer
liveness.install(Consumer) -- liveness, leases and the fence (vg/liveness.lua)

-- cfg: the values of config.load; opts: { pipelines = table (else loaded
-- from VG_PIPELINES), context = fn(ctx, task, step) for pipeline steps }
function M.new(cfg, opts)
  opts = opts or {}
  local c = setmetatable({}, Consumer)
  c.cfg = cfg
  c.concurrency = cfg.VG_CONCURRENCY or 1
  c.batch = cfg.VG_BATCH and true or false
  c.poll_interval = cfg.VG_POLL_INTERVAL or 5
  c.lease_seconds = cfg.VG_LEASE_SECONDS or 60
  c.liveness = cfg.VG_LIVENESS_SECONDS or 5
  c.margin = cfg.VG_FENCE_MARGIN or 1
  if c.margin * 2 > c.liveness or c.margin * 2 > c.lease_seconds then
    error(string.format("VG_FENCE_MARGIN (%g s) must be at most half of VG_LIVENESS_SECONDS "
      .. "(%g s) and of VG_LEASE_SECONDS (%g s)", c.margin, c.liveness, c.lease_seconds), 0)
  end
  c.queue = queue.new {
    worker_id = cfg.worker_id, instance = cfg.instance, lease_seconds = c.lease_seconds,
    retry_base = opts.retry_base or cfg.VG_RETRY_BASE, retry_max = opts.retry_max or cfg.VG_RETRY_MAX,
    -- Owners are back within two renewal periods of a server start.
    restart_grace = 2 * c.liveness / M.RENEW_PER_LIVENESS + 1,
  }
  -- This worker's liveness: held while vg.now() < deadline. Tasks claimed
  -- under an earlier epoch are fenced.
  c.live = { epoch = 0, deadline = 0 }
  c.fence_wake = vg.event()   -- the earliest deadline may have changed
  c.busy = vg.event()         -- a task started: the keeper renews again
  c.pipelines = opts.pipelines or pipeline.load(cfg.VG_PIPELINES or "pipelines")
  c.env = {
    queue = M.retrying_queue(c),
    gates = opts.gates or function() return cfg.VG_REVIEW_GATES ~= false end,
    context = opts.context,
    files = opts.files,
    after_step = opts.after_step,
  }
  M.add_metrics(c, opts.after_step)
  if c.batch then
    c.env.complete = function(task, result)
      return c:retrying(task, c.complete_batched, c, task, result)
    end
  else
    c.env.complete = function(task, result)
      return c:retrying(task, c.complete_and_claim, c, task, result)
    end
  end
  c.running = {}          -- task id -> { task = row, handle = vg task }
  c.held = {}             -- task id -> true: claims whose answer arrived
  c.claims_in_flight = 0
  c.claim_gate = vg.event() -- set when no claim is on its way
  c.unknown_claims = false  -- a claim's answer may have been lost
  c.n_running = 0
  c.slot_free = vg.event()
  c.stats = { done = 0, failed = 0, retried = 0, released = 0, lost = 0, fenced = 0 }
  c.claim_now = true      -- try a claim before the first wait
  c.next_rescue = 0
  c.in_flight_seen = 0
  return c
end

-- Open the LISTEN connection in a task of its own; Consumer:start joins
-- it. lua/worker.lua calls this before it waits for the pool's first
-- connection, so the two connects overlap. The task returns true, or false
-- and the error (not logged as a failed task: start-up reports it, or
-- retries).
function M.listen(cfg)
  return vg.spawn(function()
    local ok, err = pcall(db.listen, "vg_tasks", {
      -- The session waits for notifications for hours: a role or server
      -- idle_session_timeout must not end it. (Liveness does not depend on
      -- this session: see docs/fencing.md.)
      on_connect = "SELECT set_config('idle_session_timeout', '0', false) "
        .. "WHERE current_setting('server_version_num')::int >= 140000",
    })
    if not ok and vg.is_cancelled(err) then error(err, 0) end
    return ok, err
  end)
end

-- Before the loop: LISTEN and the workers row (listening: the task of
-- M.listen, else one is started here), then the keeper (renewals) and the
-- fencer (the safety rule's clock).
-- Run fn in a task of its own for at most timeout seconds: true, or false
-- and why (its error, or a timeout, after which it is cancelled).
local function within(timeout, fn, ...)
  local t = vg.spawn(fn, ...)
  local ok, a, b = pcall(t.join, t, timeout)
  if not ok then
    if vg.is_cancelled(a) then t:cancel(); error(a, 0) end
    return false, a
  end
  if a == nil and not t:done() then
    t:cancel()
    return false, "no answer within " .. timeout .. " s"
  end
  return a ~= false, b
end

function Consumer:start(listening)
  listening = listening or M.listen(self.cfg)
  local register = function()
    self.queue:register("running", self:counts(), vg.version)
    return true
  end
  local ok, err = within(5, register)
  local listened, lerr = listening:join()
  -- Either may have been tried before the server could be reached, or while
  -- it restarted: again, with back-off, each try bounded, until
  -- VG_DB_CONNECT_TIMEOUT.
  local deadline = vg.now() + (self.cfg.VG_DB_CONNECT_TIMEOUT or 30)
  local backoff = 0.2
  while not (ok and listened) do
    if vg.now() >= deadline then error(ok and lerr or err, 0) end
    log.warning("worker_start_retry", { error = tostring(ok and lerr or err), retry_in = backoff })
    if not vg.sleep(math.min(backoff, deadline - vg.now())) then return end -- shutdown
    backoff = math.min(backoff * 2, 2)
    if not ok then ok, err = within(5, register) end
    if not listened then
      listened, lerr = within(5, function()
        local lok, e = M.listen(self.cfg):join()
        if not lok then error(e, 0) end
        return true
      end)
    end
  end
  self.keeper = vg.spawn(self.keep_alive, self)
  self.fencer = vg.spawn(self.fence_loop, self)
  -- The host's shutdown line counts Lua tasks (the loop, the heartbeat, the
  -- keeper...); this one counts the queue's tasks in flight.
  vg.on_shutdown(function()
    log.info("worker_draining", { in_flight = self.n_running })
  end)
  -- The first claim goes out at once; the first rescue check a little later.
  self.next_rescue = vg.now() + 1
end

function Consumer:counts()
  return { done = self.stats.done, failed = self.stats.failed, in_flight = self.n_running }
end

-- Whether this worker's liveness is held now, and for how much longer.
function Consumer:liveness_state()
  local left = self.live.deadline - vg.now()
  return { held = left > 0, seconds_left = math.max(0, left), epoch = self.live.epoch }
end

-- Heartbeat: the workers row and the fields of the heartbeat line.
function Consumer:heartbeat(fields)
  fields.tasks_done = self.stats.done
  fields.tasks_failed = self.stats.failed
  fields.tasks_retried = self.stats.retried
  fields.tasks_fenced = self.stats.fenced
  fields.in_flight = self.n_running
  fields.liveness = self:liveness_state().held and "held" or "not_held"
  self.queue:register(vg.shutdown_requested() and "draining" or "running", self:counts(), vg.version)
end

-- Claim up to n tasks under the held liveness. Each task carries the epoch
-- and lease deadline it was claimed under (timed from before the send); a
-- task whose liveness lapsed while the claim was on its way is given back
-- at once, not run.
function Consumer:claim(n, send)
  if not self:settle_claims() then return {} end
  if not self:ensure_live() then return {} end
  local epoch, t0 = self.live.epoch, vg.now()
  self.claims_in_flight = self.claims_in_flight + 1
  local ok, rows
  if send then ok, rows = pcall(send, n) else ok, rows = pcall(self.queue.claim, self.queue, n) end
  self.claims_in_flight = self.claims_in_flight - 1
  if self.claims_in_flight == 0 then self.claim_gate:set() end
  if not ok then
    if not (type(rows) == "table" and NOT_SENT[rows.code]) then
      self.unknown_claims = true
      self:recheck_claims(t0 + self.liveness)
    end
    error(rows, 0)
  end
  local keep, promote = {}, false
  for _, t in ipairs(rows) do
    promote = promote or t.promote == true
    t.promote = nil
    t.live_epoch = epoch
    t.lease_deadline = t0 + self.lease_seconds - self.margin
    self.held[t.id] = true
    if self:deadline_of(t) > vg.now() then
      keep[#keep + 1] = t
    else
      self.held[t.id] = nil
      local rok = pcall(self.queue.release, self.queue, t)
      log.warning("task_released", { task_id = t.id, released = rok,
                                     reason = "liveness lapsed during the claim" })
    end
  end
  -- Tasks fell due and wait for their fair keys: key them, in a task of
  -- its own, at most one at a time (the claims go on meanwhile).
  if promote and not self.promoting then
    self.promoting = true
    vg.spawn(function()
      pcall(self.promote, self) -- only a cancellation at shutdown is raised
      self.promoting = false
    end)
  end
  return keep
end

-- Give the tasks that fell due their fair keys (they are claimable from
-- the next claim on), PROMOTE_LIMIT at a time while more wait. A failure
-- is logged, not raised: the next claim's promote flag, or the next empty
-- claim while tasks are due, tries again.
function Consumer:promote()
  local ok, n
  repeat
    ok, n = pcall(self.queue.promote, self.queue)
  until not ok or n < queue.PROMOTE_LIMIT or vg.shutdown_requested()
  if not ok then
    if vg.is_cancelled(n) then error(n, 0) end
    log.warning("promote_failed", { error = err_text(n) })
  end
end

-- A claim whose answer may have been lost (the connection died, or the
-- claiming task was cancelled, after the server may have committed it)
-- leaves tasks claimed by this instance that it does not know of. Before
-- the next claim: wait for the claims on their way, then one statement gives
-- back every task claimed by this instance and not held (their attempt and
-- place kept), so they run again now, not when their lease expires. A
-- claim the server was still running when its connection was lost commits
-- later: the same statement runs once more, VG_LIVENESS_SECONDS after that
-- claim was sent. Returns false when shutdown came first.
function Consumer:settle_claims()
  while self.unknown_claims do
    if vg.shutdown_requested() then return false end
    if self.claims_in_flight == 0 and not self.settling then
      self.settling = true
      local ok, err = pcall(self.release_unknown, self)
      self.settling = false
      self.claim_gate:set()
      if not ok then error(err, 0) end
    else
      self.claim_gate:clear()
      self.claim_gate:wait()
    end
  end
  return true
end

-- Settle the claims again at time `at` (vg.now() clock), in a task of its
-- own, so that it happens even when no claim comes.
function Consumer:recheck_claims(at)
  self.recheck_due = math.max(self.recheck_due or 0, at)
  if self.rechecker then return end
  self.rechecker = vg.spawn(function()
    while self.recheck_due do
      local due = self.recheck_due
      if not vg.sleep(math.max(0, due - vg.now())) then break end -- shutdown: stop() settles
      if self.recheck_due == due then self.recheck_due = nil end
      self.unknown_claims = true
      local ok, err = pcall(self.settle_claims, self)
      if not ok then
        if vg.is_cancelled(err) then break end
        log.warning("claims_not_settled", { error = err_text(err) }) -- the next claim settles them
      end
    end
    self.rechecker = nil
  end)
end

function Consumer:release_unknown()
  local ids = {}
  for id in pairs(self.held) do ids[#ids + 1] = id end
  local released = self.queue:release_unknown(ids)
  self.unknown_claims = false
  if #released > 0 then
    self.claim_now = true
    log.warning("tasks_released", { task_ids = released, reason = "the answer to their claim was lost" })
  end
end

-- Writes for a task (and its reads), retried through infrastructure errors
-- with back-off while the task's deadline holds, so a finished step whose
-- result could not be written at once is not lost (nor counted as failed).
function Consumer:retrying(task, fn, ...)
  local delay = 0.1
  while true do
    local res = table.pack(pcall(fn, ...))
    if res[1] then return table.unpack(res, 2, res.n) end
    local e = res[2]
    if vg.is_cancelled(e) or not M.is_infra(e) then error(e, 0) end
    if task.live_epoch == nil or vg.now() + delay >= self:deadline_of(task) then error(e, 0) end
    log.warning("task_write_retry", { task_id = task.id, error = tostring(e), retry_in = delay })
    vg.sleep(delay, { interruptible = false })
    delay = math.min(delay * 2, 2)
  end
end

-- The queue as pipelines see it: every method that takes a task retries
-- through infrastructure errors (Consumer:retrying).
function M.retrying_queue(c)
  local q = c.queue
  return setmetatable({}, { __index = function(proxy, name)
    local f = q[name]
    if type(f) ~= "function" then return f end
    local wrapped = function(_, task, ...) return c:retrying(task, f, q, task, ...) end
    rawset(proxy, name, wrapped)
    return wrapped
  end })
end

local function traceback(e)
  if vg.is_cancelled(e) or e == pipeline.LEASE_LOST then return e end
  return { err = e, traceback = debug.traceback(err_text(e), 2) }
end

-- Run the pipeline in a Lua task of its own and wait for it, so that a
-- step that never yields can be ended by the scheduler's slice
-- (VG_TASK_SLICE) while this slot lives on to record the failed attempt.
-- Returns as xpcall does.
function Consumer:execute(entry, pipe, task)
  local child = vg.spawn(function()
    return xpcall(pipeline.execute, traceback, self.env, pipe, task)
  end)
  entry.child = child
  local ok, a, b = pcall(child.join, child)
  if ok then return a, b end
  if vg.is_cancelled(a) then
    -- This slot was cancelled (fenced, or the grace ended): so is the
    -- pipeline, whose cleanup (terminating its step command) runs first.
    -- Its own outcome decides (it may have finished meanwhile).
    if not child:done() then child:cancel() end
    local jok, x, y = pcall(child.join, child)
    if jok then return x, y end
    return false, a
  end
  -- The pipeline's task itself was ended (the slice): this attempt failed.
  return false, { err = a }
end

-- Run one claimed task in the current Lua task.
function Consumer:run_task(task, entry)
  log.context({ correlation_id = task.id })
  log.info("task_claimed", { channel_id = task.channel_id, pipeline = task.pipeline,
                             attempt = task.attempts, priority = task.priority })
  self:count("claimed", task)
  local pipe = self.pipelines[task.pipeline]
  local ok, e
  if not pipe then
    ok, e = false, { err = pipeline.fatal(string.format("unknown pipeline %q", tostring(task.pipeline))) }
  else
    ok, e = self:execute(entry, pipe, task)
  end
  if ok then
    if e == "completed" then
      self.stats.done = self.stats.done + 1
      self:count("completed", task)
      log.info("task_completed", { attempt = task.attempts })
    end
    return
  end
  if e == pipeline.LEASE_LOST or (vg.is_cancelled(e) and entry.lease_lost) then
    self.stats.lost = self.stats.lost + 1
    log.warning("task_abandoned", { reason = "lease lost" })
    return
  end
  if vg.is_cancelled(e) then
    -- The shutdown grace ended: give the task back, attempt not counted.
    local rok, released = pcall(self.queue.release, self.queue, task)
    self.stats.released = self.stats.released + 1
    log.warning("task_released", { released = rok and released or false,
                                   error = (not rok) and tostring(released) or nil })
    error(e, 0)
  end
  local err = e.err
  local retriable = not (type(err) == "table" and err.retriable == false)
  local infra = M.is_infra(err)
  local status, run_at = self:retrying(task, self.queue.fail, self.queue, task, err_text(err),
                                       retriable, infra)
  if status == "retry" then
    self.stats.retried = self.stats.retried + 1
    self:count("retried", task)
    log.warning("task_retry", { error = err_text(err), attempt = task.attempts,
                                attempt_counted = not infra, run_at = run_at,
                                traceback = e.traceback })
  elseif status == "failed" then
    self.stats.failed = self.stats.failed + 1
    self:count("failed", task)
    log.error("task_failed", { error = err_text(err), attempt = task.attempts,
                               retriable = retriable, traceback = e.traceback })
  else
    log.warning("task_abandoned", { reason = "lease lost", error = err_text(err) })
  end
end

-- A slot: runs the task, then, while the queue had work at the last look
-- (claim_now) and no shutdown is under way, claims the next task itself and
-- runs it, so a busy slot goes from one task to the next without waiting
-- for the dispatcher (one claim per task either way; unbatched, the claim
-- usually goes with the task's complete, see complete_and_claim). It ends
-- when a claim comes back empty; the dispatcher then refills free slots as
-- before.
-- Batch mode leaves claiming to the dispatcher.
function Consumer:run_slot(task, handle)
  while true do
    local entry = { task = task, handle = handle }
    self.running[task.id] = entry
    self.fence_wake:set()
    local ok, err = pcall(self.run_task, self, task, entry)
    self.running[task.id] = nil
    self.held[task.id] = nil
    log.clear_context("correlation_id")
    -- The next task, when the complete claimed it (complete_and_claim).
    entry.closed = true
    local nxt = entry.next
    if entry.claimed then
      -- The task ended between its claim's answer and taking the tasks.
      for _, t in ipairs(entry.claimed) do self:forget_claim(t) end
    end
    if not ok then
      if nxt and vg.is_cancelled(err) then
        self:forget_claim(nxt) -- no statement from a cancelled slot
      elseif nxt then
        self:give_back(nxt)
      end
      if vg.is_cancelled(err) then error(err, 0) end
      -- A database error while recording the outcome, past the task's
      -- deadline: the task is given back when this worker takes its
      -- liveness again, or rescued once it lapses.
      log.error("task_outcome_not_recorded", { task_id = task.id, error = err_text(err) })
      return
    end
    -- The fencer cancelled this slot for that task (it may have raced the
    -- task's own completion): the cancel may still be pending, so claim
    -- nothing more here, where it would interrupt the claim after the
    -- server made it.
    if entry.lease_lost then
      if nxt then self:forget_claim(nxt) end
      return
    end
    if nxt then
      task = nxt
    else
      -- The complete's claim found nothing: the queue is empty.
      if entry.claimed_none or not self:claims_next() then return end
      local cok, rows = pcall(self.claim, self, 1)
      if not cok then
        if vg.is_cancelled(rows) then error(rows, 0) end
        log.warning("claim_failed", { error = err_text(rows) })
        return
      end
      task = rows[1]
      if not task then return end
    end
    if vg.shutdown_requested() then
      -- Shutdown began while the claim was on its way: give the task back
      -- at once (the attempt not counted) rather than start it now.
      self:give_back(task)
      return
    end
  end
end

-- Give back a task claimed for a slot that will not run it (the attempt
-- not counted). If that fails, see forget_claim.
function Consumer:give_back(task)
  local rok, released = pcall(self.queue.release, self.queue, task)
  if rok then self.held[task.id] = nil else self:forget_claim(task) end
  self.stats.released = self.stats.released + 1
  log.info("task_released", { task_id = task.id, released = rok and released or false })
  if not rok and vg.is_cancelled(released) then error(released, 0) end
end

-- A task claimed for a slot that will not run it, and cannot send the
-- release itself (its cancel may be pending): its claim counts as one
-- whose answer was lost, given back at once by a task of its own (or by
-- the next claim, or by stop()), its attempt and place kept.
function Consumer:forget_claim(task)
  self.held[task.id] = nil
  self.unknown_claims = true
  self:recheck_claims(vg.now())
end

function Consumer:spawn_runner(task)
  self.n_running = self.n_running + 1
  self.busy:set()
  local handle
  -- spawn only queues the new Lua task, so handle is set before it runs.
  handle = vg.spawn(function()
    local ok, err = pcall(self.run_slot, self, task, handle)
    self.n_running = self.n_running - 1
    self.slot_free:set()
    if not ok and not vg.is_cancelled(err) then
      log.error("worker_slot_failed", { error = err_text(err) })
    end
  end)
end

-- The maintenance statement: rescue orphaned tasks, count the tasks in
-- flight, and learn when the next queued task is due (returned) and when
-- the next lease or liveness could lapse: the next check is then, or after
-- the poll interval, whichever comes first.
function Consumer:rescue()
  local in_flight, rescued, due, expiry = self.queue:rescue()
  self.in_flight_seen = in_flight
  local wait = self.poll_interval
  if expiry then wait = math.min(wait, math.max(M.RESCUE_SLACK, expiry + M.RESCUE_SLACK)) end
  if #rescued >= 100 then wait = 0 end -- more may be waiting
  self.next_rescue = vg.now() + wait
  if #rescued > 0 then self.claim_now = true end
  return due
end

-- While claims keep succeeding the worker never waits, so the rescue runs
-- from here when it is due.
function Consumer:maybe_rescue()
  if vg.now() < self.next_rescue then return false end
  self.last_due = self:rescue()
  return true
end

-- Wait until there may be work: a notification, the next due task, a
-- rescue check, or the poll interval. One statement per wait (the rescue
-- statement, which also says when the next task is due), none when the
-- caller has just run it.
function Consumer:wait_for_work(just_rescued)
  local due
  if just_rescued then due = self.last_due else due = self:rescue() end
  if self.claim_now then return end
  local timeout = self.poll_interval
  if due and due <= 0 and not self.due_retried then
    -- Due tasks exist but the claim found none: they may be waiting for
    -- their fair keys. Give them theirs, then claim again at once, once.
    self.due_retried = true
    self:promote()
    self.claim_now = true
    return
  elseif due and due <= 0 then
    -- Due tasks exist but were locked by other claimers: look again soon.
    timeout = 0.05
  else
    self.due_retried = false
    if due then timeout = math.min(timeout, due) end
  end
  timeout = math.max(0, math.min(timeout, self.next_rescue - vg.now()))
  local note = db.wait_notification(timeout)
  if note then
    self.claim_now = true
    -- Drain notifications that arrived together; one claim serves them.
    while db.wait_notification(0) do end
  elseif due and due <= timeout + 0.001 then
    -- The next task fell due: it has no fair key yet if it was delayed.
    self:promote()
    self.claim_now = true
  end
end

-- Claim up to n tasks with n concurrent one-task claims (each its own
-- short transaction). Returns the tasks claimed; raises only when every
-- claim failed.
function Consumer:claim_concurrently(n)
  if n == 1 then return self:claim(1) end
  local claims = {}
  for i = 1, n do claims[i] = vg.spawn(self.claim, self, 1) end
  local tasks, first_err = {}, nil
  for i = 1, n do
    local ok, rows = pcall(claims[i].join, claims[i])
    if ok then
      for _, t in ipairs(rows) do tasks[#tasks + 1] = t end
    elseif vg.is_cancelled(rows) then
      error(rows, 0) -- this task itself was cancelled
    elseif not (type(rows) == "table" and rows.code == "task_cancelled") then
      first_err = first_err or rows
    end
  end
  if #tasks == 0 and first_err then error(first_err, 0) end
  if first_err then log.warning("claim_failed", { error = err_text(first_err) }) end
  return tasks
end

-- Batch mode: results of tasks that finish close together are recorded
-- in one statement. The first runner to finish opens a batch and a flusher
-- task that gives the others a moment (1 ms) to join; each runner waits for
-- its batch's statement and learns whether its own fence held.
M.BATCH_WINDOW = 0.001

function Consumer:complete_batched(task, result)
  local batch = self.open_batch
  if not batch then
    batch = { items = {}, done = vg.event() }
    self.open_batch = batch
    vg.spawn(function()
      vg.sleep(M.BATCH_WINDOW, { interruptible = false })
      self.open_batch = nil
      batch.ok, batch.held = pcall(self.queue.complete_many, self.queue, batch.items)
      batch.done:set()
    end)
  end
  batch.items[#batch.items + 1] = { task, result }
  batch.done:wait(nil, { interruptible = false })
  if not batch.ok then error(batch.held, 0) end
  return batch.held[task.id] == true
end

-- Unbatched: a slot that will claim its next task after this one (see
-- run_slot) sends the claim with the complete, in one statement
-- (queue.COMPLETE_CLAIM_SQL): one round trip and one commit instead of
-- two. The task claimed waits in the slot's entry (entry.next), which
-- run_slot runs next or gives back. Only when the claim could go at once:
-- no claim's answer is in doubt and the liveness is held with its margin;
-- otherwise a plain complete, and run_slot claims as before.
function Consumer:complete_and_claim(task, result)
  local entry = self.running[task.id]
  if not entry or entry.closed or entry.lease_lost or entry.next or entry.claimed
     or not self:claims_next() or self.unknown_claims
     or vg.now() >= self.live.deadline - self.margin then
    return self.queue:complete(task, result)
  end
  local completed
  local ok, rows = pcall(self.claim, self, 1, function(n)
    local done, claimed = self.queue:complete_claim(task, result, n)
    completed = done
    -- Until they are taken below: run_slot gives them back if this task
    -- ends before that.
    entry.claimed = claimed
    return claimed
  end)
  if ok then
    -- No statement was sent (shutdown came while the claim waited for the
    -- liveness): the outcome is recorded alone.
    if completed == nil then return self.queue:complete(task, result) end
    entry.claimed = nil
    if entry.closed then
      -- The slot ended while this was on its way (it was cancelled, and
      -- this task with it only later): nobody will run them.
      for _, t in ipairs(rows) do self:forget_claim(t) end
    else
      entry.next = rows[1]
      entry.claimed_none = rows[1] == nil
    end
    return completed
  end
  -- Through an infrastructure error the caller retries (a plain complete
  -- now: the claim's answer is in doubt). Any other error may be the
  -- claim's: the task's outcome is recorded alone.
  if vg.is_cancelled(rows) or M.is_infra(rows) then error(rows, 0) end
  log.warning("claim_failed", { error = err_text(rows) })
  return self.queue:complete(task, result)
end

-- Whether a slot goes on to claim its next task when its task is done.
function Consumer:claims_next()
  return not self.batch and self.claim_now and not vg.shutdown_requested()
end

-- One iteration of the worker loop.
--
-- Claims widen while they keep finding work: one claim at first, then
-- twice as many concurrent claims each round (up to the free slots) while
-- every claim returns a task, back to one as soon as one comes back empty.
-- A lone new task costs one statement; a backlog fills every slot quickly.
-- With VG_BATCH one statement claims as many tasks as there are free slots,
-- at most half of VG_CONCURRENCY: so while one batch's results are being
-- recorded the next batch is already being claimed (on another pool
-- connection), instead of the two statements taking turns.
function Consumer:step()
  if self.n_running >= self.concurrency then
    self.slot_free:clear()
    if self.n_running >= self.concurrency then
      -- Every slot busy (they claim their next tasks themselves): wake up
      -- for the rescue check when it is due.
      if not self.slot_free:wait(math.max(0, self.next_rescue - vg.now()))
         and not vg.shutdown_requested() then
        self:maybe_rescue()
      end
    end
    -- Notifications that came while every slot was busy: read them (so they
    -- do not pile up during long tasks); any of them means work may wait.
    while db.wait_notification(0) do self.claim_now = true end
    return
  end
  if vg.shutdown_requested() then return end
  local just_rescued = false
  if self.claim_now then
    just_rescued = self:maybe_rescue()
    local free = self.concurrency - self.n_running
    local tasks
    if self.batch then
      tasks = self:claim(math.min(free, math.max(1, self.concurrency // 2)))
    else
      local width = math.min(free, self.claim_width or 1)
      tasks = self:claim_concurrently(width)
      self.claim_width = #tasks == width and width * 2 or 1
    end
    for _, t in ipairs(tasks) do self:spawn_runner(t) end
    if #tasks > 0 then self.due_retried = false return end
    self.claim_now = false
  end
  self:wait_for_work(just_rescued)
end

-- The worker loop's back-off after an error: delay seconds, or less when
-- the database answers again first (a probe, at most one at a time, about
-- once a second), so the loop resumes as soon as an outage ends.
function Consumer:backoff(delay)
  local deadline = vg.now() + delay
  local up = vg.event()
  while vg.now() < deadline and not vg.shutdown_requested() do
    if not self.probe or self.probe:done() then
      self.probe = vg.spawn(function()
        if pcall(db.query, "SELECT 1") then up:set() end
      end)
    end
    if up:wait(math.min(1, math.max(0, deadline - vg.now()))) then
      log.info("database_reachable", { after_error = true })
      return
    end
  end
end

-- ---- metrics (read by vg.observe for the worker's /metrics) -------------
-- Counters only: nothing here decides anything. Tasks by pipeline and
-- outcome, step durations by pipeline and step (a histogram), renewals.

M.STEP_BUCKETS = { 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800 }

function M.add_metrics(c, after_step)
  c.metrics = {
    tasks = { claimed = {}, completed = {}, failed = {}, retried = {} },
    steps = {},              -- "pipeline\0step" -> { pipeline, step, counts, sum, n }
    liveness_renewals = 0, lease_renewals = 0,
  }
  c.env.after_step = function(ctx, out, took)
    if took then c:observe_step(ctx.task and ctx.task.pipeline, ctx.step, took) end
    if after_step then return after_step(ctx, out, took) end
  end
end

function Consumer:count(what, task)
  local t = self.metrics.tasks[what]
  local p = tostring(task.pipeline or "unknown")
  t[p] = (t[p] or 0) + 1
end

function Consumer:observe_step(pipe, step, seconds)
  pipe, step = tostring(pipe or "unknown"), tostring(step)
  local key = pipe .. "\0" .. step
  local h = self.metrics.steps[key]
  if not h then
    h = { pipeline = pipe, step = step, counts = {}, sum = 0, n = 0 }
    for i = 1, #M.STEP_BUCKETS do h.counts[i] = 0 end
    self.metrics.steps[key] = h
  end
  for i, le in ipairs(M.STEP_BUCKETS) do
    if seconds <= le then h.counts[i] = h.counts[i] + 1 end
  end
  h.sum = h.sum + seconds
  h.n = h.n + 1
end

-- After shutdown: wait for the runners (the host cancels them when the
-- grace ends; they release their tasks), then mark the worker stopped.
function Consumer:stop()
  while self.n_running > 0 do
    self.slot_free:clear()
    if self.n_running > 0 then self.slot_free:wait(nil, { interruptible = false }) end
  end
  for _, t in ipairs({ self.keeper, self.fencer, self.rechecker }) do
    t:cancel()
    pcall(t.join, t)
  end
  proc.fence(nil)
  if self.unknown_claims or self.recheck_due then
    local ok, err = pcall(self.release_unknown, self)
    if not ok then log.warning("tasks_not_released", { error = err_text(err) }) end
  end
  self:close_live_pool()
  local ok, err = pcall(self.queue.register, self.queue, "stopped", self:counts(), vg.version)
  if not ok then log.warning("worker_row_not_updated", { error = tostring(err) }) end
end

return M
