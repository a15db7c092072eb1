-- vg-host lua/worker.lua: one worker process. Start more of them against the
-- same database to add capacity; they share the queue through PostgreSQL
-- and never talk to each other.
require("vg.admin").only_help("worker", { ... }, "usage: vg-host lua/worker.lua\n"
  .. "Runs one worker until SIGTERM, SIGINT or SIGHUP; configuration comes from the\n"
  .. "environment (README: Configuration).\n")

local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local worker = require "vg.worker"
local consumer = require "vg.consumer"

local c
local observed = false

worker.run {
  -- Step commands and their settings are checked with the rest, in the one
  -- configuration_invalid line, before anything is claimed.
  required = { "DATABASE_URL", "FERNET_KEY", check = require("vg.steps").config_check },
  start = function(state)
    -- Health and metrics (VG_HTTP_PORT): up before the database is, so
    -- /healthz can say why the worker is not ready yet.
    if (state.config.VG_HTTP_PORT or 0) > 0 then
      require("vg.observe").serve(state.config, function() return c end)
      observed = true
    end
    -- The worker sends the queue's fixed statements over and over: generic
    -- plans spare the server planning them again (see vg.db).
    db.configure { generic_plans = true }
    -- The LISTEN connection opens while the pool makes its first one.
    local listening = consumer.listen(state.config)
    local ok, ready = pcall(db.wait_ready)
    if not ok then
      if vg.is_cancelled(ready) then error(ready, 0) end
      log.critical("database_unreachable", { error = tostring(ready) })
      os.exit(1)
    end
    if not ready then -- shutdown came first
      listening:cancel()
      return
    end
    -- (A server that went away again meanwhile is retried by c:start.)
    local sok, problem = pcall(require("vg.admin").schema_problem)
    if sok and problem then
      log.critical("database_not_migrated", { error = problem })
      os.exit(1)
    end
    c = consumer.new(state.config, require("vg.steps").options(state.config))
    c:start(listening)
  end,
  body = function() c:step() end,
  heartbeat = function(_, fields) if c then c:heartbeat(fields) end end,
  backoff = function(_, delay)
    if c then c:backoff(delay) else vg.sleep(delay) end
  end,
  stop = function()
    if c then c:stop() end
    if observed then require("vg.observe").close() end
    db.close()
  end,
}
