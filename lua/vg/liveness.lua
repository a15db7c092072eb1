-- A worker's liveness, its tasks' leases and the fence (docs/fencing.md),
-- as methods of vg.consumer's Consumer (install adds them): the renewal
-- connection, the keeper that renews while tasks are held, the fencer that
-- stops a task at its deadline (and tells the step guard that deadline),
-- and the check before every claim that the liveness is held.
--
-- Fields they use on the consumer: cfg, queue, liveness, margin,
-- lease_seconds, live = { epoch, deadline }, running, n_running, busy,
-- fence_wake, stats, metrics, claim_now.
local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local proc = require "vg.proc"

local M = {}

M.RENEW_PER_LIVENESS = 5  -- liveness renewals per VG_LIVENESS_SECONDS

local C = {}

-- The connection for liveness and lease renewals: a pool of one, so that a
-- renewal never waits behind task queries. Opened by the first renewal of
-- a busy spell, closed once the worker has been idle for a liveness period
-- (an idle worker keeps its two connections: the pool's and LISTEN).
function C:live_pool()
  if not self.live_db then
    -- Straight to the server when DATABASE_DIRECT_URL is set (DATABASE_URL
    -- then goes through PgBouncer), so renewals never queue for one of the
    -- bouncer's server connections; through the bouncer with
    -- VG_LIVENESS_DIRECT off, for fleets whose direct connections would
    -- not fit the server's max_connections (README: connection arithmetic).
    local direct = self.cfg.DATABASE_DIRECT_URL
    local via_bouncer = direct ~= nil and not self.cfg.VG_LIVENESS_DIRECT
    self.live_db = db.pool {
      url = (not via_bouncer and direct) or self.cfg.DATABASE_URL, pooler = via_bouncer,
      pool_size = 1, max_overflow = 0,
      pool_timeout = self.liveness, application_name = "vg-host liveness",
    }
  end
  return self.live_db
end

-- The monotonic time by which this task must be stopped: the earlier of
-- its lease's and the liveness's deadlines; -inf once it was claimed under
-- a liveness epoch that has ended.
function C:deadline_of(task)
  if task.live_epoch ~= self.live.epoch then return -math.huge end
  return math.min(task.lease_deadline or -math.huge, self.live.deadline)
end

-- Stop a task now: it is cancelled (its step command's process group gets
-- SIGTERM, and the guard has SIGKILLed it at the deadline already) and
-- writes nothing more.
function C:fence(entry, reason)
  if entry.lease_lost then return end
  entry.lease_lost = true
  self.stats.fenced = self.stats.fenced + 1
  log.warning("task_fenced", { task_id = entry.task.id, reason = reason })
  entry.handle:cancel()
end

-- The fencer: sleeps until the earliest deadline of the tasks it holds,
-- tells the step guard that deadline, and stops every task whose deadline
-- has passed. Nothing overrides it.
function C:fence_loop()
  while true do
    local now, earliest = vg.now(), math.huge
    for _, r in pairs(self.running) do
      if not r.lease_lost then
        local d = self:deadline_of(r.task)
        if d <= now then
          self:fence(r, d == -math.huge and "claimed under a liveness that has lapsed"
            or "no successful renewal within the lease minus the margin")
        else
          earliest = math.min(earliest, d)
        end
      end
    end
    proc.fence(earliest < math.huge and earliest or nil)
    self.fence_wake:clear()
    self.fence_wake:wait(earliest < math.huge and math.max(0, earliest - vg.now()) or nil,
                         { interruptible = false })
  end
end

-- Take the liveness (again): gives back, in the same statement, every task
-- still held in the database under an earlier one. t0: before the send.
function C:acquire(t0)
  local held, released = self.queue:acquire_liveness(nil, self.liveness)
  if not held then error("the workers row could not be written", 0) end
  self.live.epoch = self.live.epoch + 1
  self.live.deadline = t0 + self.liveness - self.margin
  if released > 0 then
    log.warning("tasks_given_back", { count = released, reason = "liveness lapsed" })
    self.claim_now = true
  end
  self.fence_wake:set()
end

-- Renew the liveness (and, every third of the lease, the tasks' leases).
-- Lapsed on the database: every task is stopped at once. Lapsed here
-- first: acquired again, which gives the stopped tasks back.
function C:renew()
  local t0 = vg.now()
  if t0 >= self.live.deadline then
    if self.live.epoch > 0 then self:acquire(t0) end
    return
  end
  local held = self.queue:renew_liveness(self:live_pool(), self.liveness)
  if held then self.metrics.liveness_renewals = self.metrics.liveness_renewals + 1 end
  if not held then
    log.warning("liveness_lapsed", { reason = "the database says it expired" })
    self.live.deadline = 0
    self.fence_wake:set()
    return
  end
  if t0 + self.liveness - self.margin > self.live.deadline then
    self.live.deadline = t0 + self.liveness - self.margin
    self.fence_wake:set()
  end
  if t0 < (self.next_lease_renewal or 0) then return end
  self.next_lease_renewal = t0 + self.lease_seconds / 3
  local list = {}
  for _, r in pairs(self.running) do
    if not r.lease_lost then list[#list + 1] = r.task end
  end
  if #list == 0 then return end
  local still = self.queue:renew(list, self:live_pool())
  for _, t in ipairs(list) do
    local r = self.running[t.id]
    if still[t.id] then
      self.metrics.lease_renewals = self.metrics.lease_renewals + 1
      t.lease_deadline = math.max(t.lease_deadline or 0, t0 + self.lease_seconds - self.margin)
    elseif r and r.task == t then
      self:fence(r, "lease lost (the task was rescued or released elsewhere)")
    end
  end
  self.fence_wake:set()
end

-- One renewal or acquisition at a time: the keeper's and those before
-- claims take turns. Returns false, without running fn, when shutdown came
-- while it waited for its turn.
function C:with_live_lock(fn)
  while self.acquiring do
    if not self.acquiring:wait() and vg.shutdown_requested() then return false end
  end
  local ev = vg.event()
  self.acquiring = ev
  local ok, err = pcall(fn)
  self.acquiring = nil
  ev:set()
  if not ok then error(err, 0) end
  return true
end

-- The keeper: renews every VG_LIVENESS_SECONDS / 5 while this worker holds
-- tasks; an idle worker sends nothing.
function C:close_live_pool()
  local pool = self.live_db
  self.live_db = nil
  if pool then pool:close(0) end
end

function C:keep_alive()
  local every = self.liveness / M.RENEW_PER_LIVENESS
  local renew = function() self:renew() end
  local wait = { interruptible = false }
  while true do
    if self.n_running == 0 then
      self.busy:clear()
      if self.n_running == 0 and not self.busy:wait(self.liveness, wait) then
        self:close_live_pool()
        if self.n_running == 0 then self.busy:wait(nil, wait) end
      end
    end
    vg.sleep(every, { interruptible = false })
    if self.n_running > 0 then
      local ok, err = pcall(self.with_live_lock, self, renew)
      if not ok then
        if vg.is_cancelled(err) then error(err, 0) end
        log.warning("liveness_renewal_failed", { error = tostring(err),
          seconds_left = math.max(0, self.live.deadline - vg.now()) })
      end
    end
  end
end

-- Called before every claim: never claim without the liveness held, with
-- at least the margin to spare. About to lapse: renewed first; lapsed:
-- acquired again. Returns false when shutdown came first (claim nothing).
function C:ensure_live()
  if vg.now() < self.live.deadline - self.margin then return true end
  local done = self:with_live_lock(function()
    local t0 = vg.now()
    if t0 < self.live.deadline - self.margin then return end -- done meanwhile
    if t0 < self.live.deadline then self:renew() else self:acquire(t0) end
  end)
  if not done then return false end
  if vg.now() >= self.live.deadline - self.margin then
    error(setmetatable({ code = "liveness_not_held", retriable = true,
                         message = "the worker's liveness could not be renewed: claiming nothing" },
                       { __tostring = function(e) return e.code .. ": " .. e.message end }), 0)
  end
  return true
end

function M.install(class)
  for name, fn in pairs(C) do class[name] = fn end
end

return M
