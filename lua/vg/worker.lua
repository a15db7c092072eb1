-- The worker loop (Story 4.1): configuration, start-up line, heartbeat,
-- error accounting and graceful shutdown. What one iteration does is a
-- function the caller passes in (`body`), so other scripts can replace it;
-- lua/worker.lua passes the queue's.
local vg = require "vg"
local log = require "vg.log"
local config = require "vg.config"

local M = {}

M.EXCESSIVE_ERRORS = 10      -- more than this many errors within ERROR_WINDOW,
M.ERROR_WINDOW = 60          -- or this many in a row, is excessive
M.MAX_BACKOFF = 30
M.BACKOFF_BASE = 0.5         -- first back-off after an error, doubling

local function traceback(err)
  if vg.is_cancelled(err) then return err end
  return { err = err, traceback = debug.traceback(tostring(err), 2) }
end

-- Errors in the last ERROR_WINDOW seconds, with the new one added.
local function count_recent(state, now)
  local recent = {}
  for _, t in ipairs(state.error_times) do
    if now - t < M.ERROR_WINDOW then recent[#recent + 1] = t end
  end
  recent[#recent + 1] = now
  state.error_times = recent
  return #recent
end

local function on_error(state, e, opts)
  state.consecutive_errors = state.consecutive_errors + 1
  state.errors_total = state.errors_total + 1
  local now = vg.now()
  local recent = count_recent(state, now)
  log.error("worker_loop_error", {
    error = tostring(e.err), traceback = e.traceback,
    consecutive_errors = state.consecutive_errors,
  })
  -- The back-off caps the rate of errors at a few a minute, so a long
  -- outage is told by the errors in a row as well as by the rate.
  if recent > M.EXCESSIVE_ERRORS or state.consecutive_errors >= M.EXCESSIVE_ERRORS then
    log.critical("worker_excessive_errors", {
      errors_last_minute = recent, consecutive_errors = state.consecutive_errors,
    })
  end
  -- A short back-off that grows while errors repeat, so a broken
  -- dependency is not hammered; shutdown interrupts it, and so does (with
  -- opts.backoff) the dependency coming back.
  local delay = math.min(M.MAX_BACKOFF, M.BACKOFF_BASE * 2 ^ (state.consecutive_errors - 1))
  if opts.backoff then opts.backoff(state, delay) else vg.sleep(delay) end
end

local function heartbeat(state, opts)
  while true do
    if not vg.sleep(state.config.VG_HEARTBEAT_INTERVAL) then break end
    local fields = {
      iterations = state.iterations,
      consecutive_errors = state.consecutive_errors,
      errors_total = state.errors_total,
      uptime_seconds = math.floor(vg.now() - state.started),
    }
    if opts.heartbeat then
      local ok, err = pcall(opts.heartbeat, state, fields)
      if not ok then
        if vg.is_cancelled(err) then error(err, 0) end
        log.warning("worker_heartbeat_failed", { error = tostring(err) })
      end
    end
    log.info("worker_heartbeat", fields)
  end
end

-- Run the worker until shutdown. opts:
--   body(state)       one iteration (required); waits for work itself
--   required          configuration variables that must be set
--   start(state)      after configuration, before the loop (may raise: fatal)
--   heartbeat(state, fields)  adds fields / records the heartbeat
--   stop(state)       after the loop ends (shutdown), before exit
--   backoff(state, s) waits after an error (default vg.sleep(s)); may end
--                     early when what failed works again
function M.run(opts)
  local cfg = config.load(opts.required or { "DATABASE_URL", "FERNET_KEY" })
  local state = {
    config = cfg,
    iterations = 0,
    consecutive_errors = 0,
    errors_total = 0,
    error_times = {},
    started = vg.now(),
  }
  local summary = config.redacted(cfg)
  log.info("worker_started", {
    instance = cfg.instance, version = vg.version, config = summary,
  })
  if opts.start then opts.start(state) end
  local hb = vg.spawn(heartbeat, state, opts)
  while not vg.shutdown_requested() do
    state.iterations = state.iterations + 1
    local ok, e = xpcall(opts.body, traceback, state)
    if ok then
      state.consecutive_errors = 0
    elseif vg.is_cancelled(e) then
      error(e, 0)
    else
      on_error(state, e, opts)
    end
  end
  log.info("worker_stopping", { iterations = state.iterations })
  hb:cancel()
  pcall(hb.join, hb)
  if opts.stop then opts.stop(state) end
  return state
end

return M
