-- The queue side of a worker: the loop body that claims tasks and runs each
-- in its own Lua task (up to VG_CONCURRENCY at once), the lease keeper, the
-- rescue of orphaned work, and the release of unfinished tasks at the end
-- of the shutdown grace.
--
-- Waiting for work costs nothing: the dispatcher sleeps on the LISTEN
-- connection until a vg_tasks notification, the next delayed task's run_at,
-- or the poll interval (a safety net), whichever comes first.
local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local queue = require "vg.queue"
local pipeline = require "vg.pipeline"

local M = {}

M.RESCUE_INTERVAL = 2 -- seconds between rescue checks while work is in flight

local Consumer = {}
Consumer.__index = Consumer

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
  c.queue = queue.new {
    worker_id = cfg.worker_id, instance = cfg.instance, lease_seconds = c.lease_seconds,
    retry_base = opts.retry_base or cfg.VG_RETRY_BASE, retry_max = opts.retry_max or cfg.VG_RETRY_MAX,
  }
  c.pipelines = opts.pipelines or pipeline.load(cfg.VG_PIPELINES or "pipelines")
  c.env = {
    queue = c.queue,
    gates = opts.gates or function() return cfg.VG_REVIEW_GATES ~= false end,
    context = opts.context,
    after_step = opts.after_step,
  }
  if c.batch then
    c.env.complete = function(task, result) return c:complete_batched(task, result) end
  end
  c.running = {}          -- task id -> { task = row, handle = vg task }
  c.n_running = 0
  c.slot_free = vg.event()
  c.stats = { done = 0, failed = 0, retried = 0, released = 0, lost = 0 }
  c.claim_now = true      -- try a claim before the first wait
  c.next_rescue = 0
  c.in_flight_seen = 0
  return c
end

-- Open the LISTEN connection, taking the liveness lock on it, in a task of
-- its own; Consumer:start joins it. lua/worker.lua calls this before it
-- waits for the pool's first connection, so the two connects overlap.
-- The task returns true, or false and the error (not logged as a failed
-- task: start-up reports it, or retries).
function M.listen(cfg)
  return vg.spawn(function()
    local ok, err = pcall(db.listen, "vg_tasks", {
      -- Held by the listen connection's session for the life of the
      -- process: when this process dies its session ends and the lock is
      -- released, which is how other workers know its tasks are orphaned.
      on_connect = { queue.LIVENESS_LOCK_SQL, cfg.instance },
    })
    if not ok and vg.is_cancelled(err) then error(err, 0) end
    return ok, err
  end)
end

-- Before the loop: LISTEN, the liveness lock, the workers row (listening:
-- the task of M.listen, else one is started here). The workers row is
-- written while the LISTEN connection opens, and no task is claimed before
-- the lock is held.
function Consumer:start(listening)
  listening = listening or M.listen(self.cfg)
  local ok, err = pcall(self.queue.register, self.queue, "running", self:counts(), vg.version)
  local listened, lerr = listening:join()
  if not listened then
    -- Tried before the database could be reached: again, now that it can.
    listened, lerr = M.listen(self.cfg):join()
    if not listened then error(lerr, 0) end
  end
  if not ok then error(err, 0) end
  self.keeper = vg.spawn(self.keep_leases, self)
  -- The first claim goes out at once; the first rescue check a little later.
  self.next_rescue = vg.now() + M.RESCUE_INTERVAL
end

function Consumer:counts()
  return { done = self.stats.done, failed = self.stats.failed, in_flight = self.n_running }
end

-- Heartbeat: the workers row and the fields of the heartbeat line.
function Consumer:heartbeat(fields)
  fields.tasks_done = self.stats.done
  fields.tasks_failed = self.stats.failed
  fields.tasks_retried = self.stats.retried
  fields.in_flight = self.n_running
  self.queue:register(vg.shutdown_requested() and "draining" or "running", self:counts(), vg.version)
end

-- Renew the leases of the running tasks every third of the lease; a task
-- whose lease could not be renewed (rescued, released elsewhere) is
-- cancelled: its step command is terminated and it writes nothing more.
function Consumer:keep_leases()
  local every = self.lease_seconds / 3
  while not (vg.shutdown_requested() and self.n_running == 0) do
    vg.sleep(every, { interruptible = false })
    local list = {}
    for _, r in pairs(self.running) do list[#list + 1] = r.task end
    if #list > 0 then
      local ok, still = pcall(self.queue.renew, self.queue, list)
      if not ok then
        if vg.is_cancelled(still) then error(still, 0) end
        log.warning("lease_renewal_failed", { error = tostring(still), tasks = #list })
      else
        for _, t in ipairs(list) do
          local r = self.running[t.id]
          if r and not still[t.id] then
            r.lease_lost = true
            log.warning("task_lease_lost", { task_id = t.id })
            r.handle:cancel()
          end
        end
      end
    end
  end
end

local function err_text(e)
  if type(e) == "table" and e.message then return tostring(e.code or "error") .. ": " .. tostring(e.message) end
  return tostring(e)
end

local function traceback(e)
  if vg.is_cancelled(e) or e == pipeline.LEASE_LOST then return e end
  return { err = e, traceback = debug.traceback(err_text(e), 2) }
end

-- Run one claimed task in the current Lua task.
function Consumer:run_task(task)
  log.context({ correlation_id = task.id })
  log.info("task_claimed", { channel_id = task.channel_id, pipeline = task.pipeline,
                             attempt = task.attempts, priority = task.priority })
  local pipe = self.pipelines[task.pipeline]
  local ok, e
  if not pipe then
    ok, e = false, { err = pipeline.fatal(string.format("unknown pipeline %q", tostring(task.pipeline))) }
  else
    ok, e = xpcall(pipeline.execute, traceback, self.env, pipe, task)
  end
  if ok then
    if e == "completed" then
      self.stats.done = self.stats.done + 1
      log.info("task_completed", { attempt = task.attempts })
    end
    return
  end
  if e == pipeline.LEASE_LOST or (vg.is_cancelled(e) and self.running[task.id].lease_lost) then
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
  local status, run_at = self.queue:fail(task, err_text(err), retriable)
  if status == "retry" then
    self.stats.retried = self.stats.retried + 1
    log.warning("task_retry", { error = err_text(err), attempt = task.attempts,
                                run_at = run_at, traceback = e.traceback })
  elseif status == "failed" then
    self.stats.failed = self.stats.failed + 1
    log.error("task_failed", { error = err_text(err), attempt = task.attempts,
                               retriable = retriable, traceback = e.traceback })
  else
    log.warning("task_abandoned", { reason = "lease lost", error = err_text(err) })
  end
end

-- A slot: runs the task, then, while the queue had work at the last look
-- (claim_now) and no shutdown is under way, claims the next task itself and
-- runs it, so a busy slot goes from one task to the next without waiting
-- for the dispatcher (one claim per task either way). It ends when a claim
-- comes back empty; the dispatcher then refills free slots as before.
-- Batch mode leaves claiming to the dispatcher.
function Consumer:run_slot(task, handle)
  while true do
    local entry = { task = task, handle = handle }
    self.running[task.id] = entry
    local ok, err = pcall(self.run_task, self, task)
    self.running[task.id] = nil
    log.clear_context("correlation_id")
    if not ok then
      if vg.is_cancelled(err) then error(err, 0) end
      -- A database error while recording the outcome: the lease will
      -- expire and another worker (or this one) runs the task again.
      log.error("task_outcome_not_recorded", { task_id = task.id, error = err_text(err) })
      return
    end
    -- The lease keeper cancelled this slot for that task (its renewal may
    -- have raced the task's own completion): the cancel may still be
    -- pending, so claim nothing more here, where it would interrupt the
    -- claim after the server made it.
    if entry.lease_lost then return end
    if self.batch or not self.claim_now or vg.shutdown_requested() then return end
    local cok, rows = pcall(self.queue.claim, self.queue, 1)
    if not cok then
      if vg.is_cancelled(rows) then error(rows, 0) end
      log.warning("claim_failed", { error = err_text(rows) })
      return
    end
    task = rows[1]
    if not task then return end
    if vg.shutdown_requested() then
      -- Shutdown began while the claim was on its way: give the task back
      -- at once (the attempt not counted) rather than start it now.
      local rok, released = pcall(self.queue.release, self.queue, task)
      self.stats.released = self.stats.released + 1
      log.info("task_released", { task_id = task.id, released = rok and released or false })
      return
    end
  end
end

function Consumer:spawn_runner(task)
  self.n_running = self.n_running + 1
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
-- flight, and learn when the next queued task is due. Returns that.
function Consumer:rescue()
  local in_flight, rescued, due = self.queue:rescue()
  self.in_flight_seen = in_flight
  self.next_rescue = vg.now() + (in_flight > 0 and M.RESCUE_INTERVAL or self.poll_interval)
  if #rescued > 0 then self.claim_now = true end
  return due
end

-- While claims keep succeeding the worker never waits, so the rescue runs
-- from here every RESCUE_INTERVAL.
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
  if due and due <= 0 then
    -- Due tasks exist but were locked by other claimers: look again soon.
    timeout = 0.05
  elseif due then
    timeout = math.min(timeout, due)
  end
  timeout = math.max(0, math.min(timeout, self.next_rescue - vg.now()))
  local note = db.wait_notification(timeout)
  if note then
    self.claim_now = true
    -- Drain notifications that arrived together; one claim serves them.
    while db.wait_notification(0) do end
  elseif due and due <= timeout + 0.001 then
    self.claim_now = true
  end
end

-- Claim up to n tasks with n concurrent one-task claims (each its own
-- short transaction). Returns the tasks claimed; raises only when every
-- claim failed.
function Consumer:claim_concurrently(n)
  if n == 1 then return self.queue:claim(1) end
  local claims = {}
  for i = 1, n do claims[i] = vg.spawn(self.queue.claim, self.queue, 1) end
  local tasks, first_err = {}, nil
  for i = 1, n do
    local ok, rows = pcall(claims[i].join, claims[i])
    if ok then
      for _, t in ipairs(rows) do tasks[#tasks + 1] = t end
    else
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
      tasks = self.queue:claim(math.min(free, math.max(1, self.concurrency // 2)))
    else
      local width = math.min(free, self.claim_width or 1)
      tasks = self:claim_concurrently(width)
      self.claim_width = #tasks == width and width * 2 or 1
    end
    for _, t in ipairs(tasks) do self:spawn_runner(t) end
    if #tasks > 0 then return end
    self.claim_now = false
  end
  self:wait_for_work(just_rescued)
end

-- After shutdown: wait for the runners (the host cancels them when the
-- grace ends; they release their tasks), then mark the worker stopped.
function Consumer:stop()
  while self.n_running > 0 do
    self.slot_free:clear()
    if self.n_running > 0 then self.slot_free:wait(nil, { interruptible = false }) end
  end
  if self.keeper then
    self.keeper:cancel()
    pcall(self.keeper.join, self.keeper)
  end
  local ok, err = pcall(self.queue.register, self.queue, "stopped", self:counts(), vg.version)
  if not ok then log.warning("worker_row_not_updated", { error = tostring(err) }) end
end

return M
