-- Database helpers for specs: the schema (applied once per run by the real
-- migration script) and a clean slate between tests.
local host = require "spec.support.host"

local M = {}

M.url = os.getenv("TEST_DATABASE_URL")

local migrated = false

-- Skip a describe block's tests when no database is configured.
function M.available() return M.url ~= nil and M.url ~= "" end

-- Apply the migrations with lua/migrate.lua (once), then open the pool.
function M.setup()
  local db = require "vg.db"
  if not migrated then
    local r = host.run({ "lua/migrate.lua" }, { env = host.env { DATABASE_URL = M.url } })
    assert(r.code == 0, "migrate failed: " .. r.stdout .. r.stderr)
    migrated = true
  end
  db.configure { url = M.url }
  db.query([[CREATE TABLE IF NOT EXISTS test_executions (
               id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               task_id bigint NOT NULL, worker_id text NOT NULL, step text NOT NULL,
               attempt int NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT now())]])
  return db
end

-- Remove every task, channel, worker row and recorded execution.
function M.reset()
  local db = require "vg.db"
  db.query([[TRUNCATE tasks, task_steps, channels, workers, videos, video_costs,
                      audit_logs, test_executions RESTART IDENTITY CASCADE]])
end

function M.channel(id, extra)
  local db = require "vg.db"
  extra = extra or {}
  db.query("INSERT INTO channels (id, name, review_gates) VALUES ($1, $2, $3)",
           id, extra.name or id, extra.review_gates ~= false)
end

-- Insert n tasks for a channel; returns their ids.
function M.enqueue(channel, n, opts)
  local db = require "vg.db"
  opts = opts or {}
  local rows = db.query([[
    INSERT INTO tasks (channel_id, pipeline, payload, priority, max_attempts, run_at)
    SELECT $1, $2, $3::jsonb, $4, $5, now() + make_interval(secs => $6::float8)
      FROM generate_series(1, $7)
    RETURNING id]], channel, opts.pipeline or "noop", opts.payload or {},
    opts.priority or "normal", opts.max_attempts or 3, opts.delay or 0, n)
  local ids = {}
  for i, r in ipairs(rows) do ids[i] = r.id end
  return ids
end

function M.count(sql, ...)
  local db = require "vg.db"
  local row = db.query(sql, ...)[1]
  for _, v in pairs(row) do return v end
end

-- Environment for worker processes in these specs.
function M.worker_env(extra)
  local env = host.env {
    DATABASE_URL = M.url,
    VG_PIPELINES = "spec.support.test_pipelines",
    LUA_PATH = host.root .. "/?.lua;;",
    VG_POLL_INTERVAL = "1",
    VG_HEARTBEAT_INTERVAL = "1",
  }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

-- A function that opens a pool of its own on the test database, named
-- "<prefix>-<n>-<random>" so its connections can be found on the server
-- (pg_stat_activity.application_name). Returns the pool and that name.
function M.pool_maker(prefix)
  local seq = 0
  return function(opts)
    local db = require "vg.db"
    seq = seq + 1
    opts = opts or {}
    opts.url = opts.url or M.url
    opts.application_name = opts.application_name
      or (prefix .. "-" .. seq .. "-" .. math.random(1e6))
    return db.pool(opts), opts.application_name
  end
end

-- A fresh table name ("spec_<stem>_<n>_<random>").
local table_seq = 0
function M.table_name(stem)
  table_seq = table_seq + 1
  return ("spec_%s_%d_%d"):format(stem, table_seq, math.random(1e6))
end

-- Wait (without blocking the loop) until cond() is true; false after
-- timeout seconds (default 5).
function M.wait_until(cond, timeout)
  local vg = require "vg"
  local deadline = vg.now() + (timeout or 5)
  while not cond() do
    if vg.now() > deadline then return false end
    vg.sleep(0.01)
  end
  return true
end

-- Wait (without busy polling the CPU: a short sleep between queries) until
-- fn() is true, up to timeout seconds. Returns whether it became true.
function M.eventually(fn, timeout, every)
  local vg = require "vg"
  local deadline = vg.now() + (timeout or 30)
  while vg.now() < deadline do
    if fn() then return true end
    vg.sleep(every or 0.1, { interruptible = false })
  end
  return fn()
end

return M
