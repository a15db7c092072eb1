-- A worker's own health and metrics over HTTP (VG_HTTP_PORT; off when
-- unset): GET /healthz and GET /metrics (Prometheus text format 0.0.4).
--
-- Health. 200 when all of these hold, else 503 with the first that fails
-- as `reason` in the JSON body:
--   starting        the worker has not finished starting (database
--                   reachable, schema migrated, LISTEN open)
--   shutting_down   a shutdown signal arrived (a draining worker takes no
--                   new work; the platform should send it none either)
--   database_unreachable
--                   `SELECT 1` on a connection of its own (so a busy pool
--                   cannot make a healthy worker look dead) failed or took
--                   longer than HEALTH_TIMEOUT
--   liveness_lapsed the worker holds tasks but not its liveness: they are
--                   being fenced (docs/fencing.md)
-- An idle worker holds no liveness by design (it takes it again before its
-- next claim), so for it liveness is reported ("idle") but not required.
--
-- /metrics sends no statement: it reads the counters kept by the consumer,
-- the pool's figures and the HTTP server's, and measures the loop's lag
-- (how late a zero-length timer fires) while it answers.
local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local http = require "vg.http"
local consumer_mod = require "vg.consumer"

local M = {}

M.HEALTH_TIMEOUT = 2

-- ---- Prometheus text -------------------------------------------------------

local function esc(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end
M.escape_label = esc

local function fmt(v)
  if v == math.huge then return "+Inf" end
  if v ~= v then return "NaN" end
  if math.type(v) == "integer" then return tostring(v) end
  return string.format("%.17g", v)
end
M.format_value = fmt

-- A metrics writer: w.family(name, type, help) then w.sample(name, labels,
-- value); w.single(name, type, help, value) for a family of one unlabelled
-- sample.
function M.writer()
  local out = {}
  local w = {}
  function w.family(name, kind, help)
    out[#out + 1] = "# HELP " .. name .. " " .. help:gsub("\\", "\\\\"):gsub("\n", "\\n")
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
  end
  function w.sample(name, labels, value)
    local l = {}
    for _, kv in ipairs(labels or {}) do l[#l + 1] = kv[1] .. '="' .. esc(kv[2]) .. '"' end
    out[#out + 1] = name .. (#l > 0 and "{" .. table.concat(l, ",") .. "}" or "") .. " " .. fmt(value)
  end
  function w.single(name, kind, help, value)
    w.family(name, kind, help)
    w.sample(name, nil, value)
  end
  function w.text() return table.concat(out, "\n") .. "\n" end
  return w
end

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

local function sorted_keys(t)
  local k = {}
  for name in pairs(t) do k[#k + 1] = name end
  table.sort(k)
  return k
end

-- The worker's metrics text. c: the consumer (nil while starting).
function M.metrics(c, server)
  local w = M.writer()
  local wid = vg.worker_id()
  w.family("vg_worker_info", "gauge", "This worker process (value 1).")
  w.sample("vg_worker_info", { { "worker_id", wid }, { "version", vg.version } }, 1)
  local m = c and c.metrics
  local pipes = {}
  if c then for name in pairs(c.pipelines or {}) do pipes[name] = true end end
  if m then for _, t in pairs(m.tasks) do for p in pairs(t) do pipes[p] = true end end end
  pipes = sorted_keys(pipes)
  for _, what in ipairs { "claimed", "completed", "failed", "retried" } do
    local name = "vg_tasks_" .. what .. "_total"
    w.family(name, "counter", "Tasks " .. what .. " by this worker, by pipeline.")
    for _, p in ipairs(pipes) do
      w.sample(name, { { "pipeline", p } }, m and m.tasks[what][p] or 0)
    end
  end
  w.single("vg_tasks_in_flight", "gauge", "Tasks this worker is running now.", c and c.n_running or 0)

  w.family("vg_step_duration_seconds", "histogram", "Duration of finished pipeline steps.")
  if m then
    for _, key in ipairs(sorted_keys(m.steps)) do
      local h = m.steps[key]
      local labels = { { "pipeline", h.pipeline }, { "step", h.step } }
      for i, le in ipairs(consumer_mod.STEP_BUCKETS) do
        w.sample("vg_step_duration_seconds_bucket",
                 { labels[1], labels[2], { "le", fmt(le + 0.0) } }, h.counts[i])
      end
      w.sample("vg_step_duration_seconds_bucket", { labels[1], labels[2], { "le", "+Inf" } }, h.n)
      w.sample("vg_step_duration_seconds_sum", labels, h.sum + 0.0)
      w.sample("vg_step_duration_seconds_count", labels, h.n)
    end
  end

  local ok, s = pcall(db.stats)
  if not ok then s = {} end
  w.single("vg_db_pool_connections_in_use", "gauge", "Pool connections checked out by tasks.",
           s.checked_out or 0)
  w.single("vg_db_pool_connections_open", "gauge",
           "Pool connections open (in use, idle or connecting).", s.open or 0)
  w.single("vg_db_pool_waiting", "gauge", "Tasks waiting for a pool connection.", s.waiters or 0)
  w.single("vg_db_pool_timeouts_total", "counter", "Checkouts that failed with pool_timeout.",
           s.timeouts_total or 0)
  w.single("vg_db_pool_connect_failures_total", "counter", "Connection attempts that failed.",
           s.failed_total or 0)

  local st = c and c.stats or {}
  w.single("vg_liveness_renewals_total", "counter", "Successful renewals of this worker's liveness.",
           m and m.liveness_renewals or 0)
  w.single("vg_liveness_held", "gauge", "1 while this worker holds its liveness.",
           c and c:liveness_state().held and 1 or 0)
  w.single("vg_lease_renewals_total", "counter", "Successful renewals of task leases.",
           m and m.lease_renewals or 0)
  w.single("vg_leases_lost_total", "counter", "Tasks abandoned because their lease was lost.",
           st.lost or 0)
  w.single("vg_tasks_fenced_total", "counter", "Tasks this worker stopped itself (the fence).",
           st.fenced or 0)
  w.single("vg_tasks_released_total", "counter", "Tasks given back unfinished (shutdown).",
           st.released or 0)

  local t0 = vg.now()
  vg.sleep(0, { interruptible = false })
  w.single("vg_loop_lag_seconds", "gauge", "How late a zero-length timer fired, measured at this scrape.",
           vg.now() - t0)

  if server then
    local hs = server.stats()
    w.single("vg_http_requests_total", "counter", "HTTP requests handed to handlers.",
             hs.requests_total)
    w.single("vg_http_rejected_total", "counter",
             "HTTP requests refused by the server's limits (400, 408, 413, 431, 503).",
             hs.rejected_total)
    w.single("vg_http_connections_open", "gauge", "Open HTTP connections.", hs.open_connections)
  end
  return w.text()
end

-- ---- health ----------------------------------------------------------------

local health_pool

local function probe_database(cfg)
  if not health_pool then
    health_pool = db.pool {
      url = cfg.DATABASE_URL, pool_size = 1, max_overflow = 0,
      pool_timeout = M.HEALTH_TIMEOUT, connect_timeout = M.HEALTH_TIMEOUT,
      application_name = "vg-host health",
    }
  end
  local t = vg.spawn(function() return health_pool:query("SELECT 1 AS ok") end)
  local ok, res, err = pcall(t.join, t, M.HEALTH_TIMEOUT)
  if ok and res then return true end
  if not t:done() then t:cancel() end
  if ok then return false, "no answer within " .. M.HEALTH_TIMEOUT .. " s" end
  if vg.is_cancelled(res) then error(res, 0) end
  return false, tostring(type(res) == "table" and (res.message or res.code) or res or err)
end

-- status, body
function M.health(cfg, c)
  local body = { worker_id = vg.worker_id(), version = vg.version }
  if vg.shutdown_requested() then
    body.status, body.reason = "unhealthy", "shutting_down"
    return 503, body
  end
  local up, why = probe_database(cfg)
  body.database = up and "reachable" or "unreachable"
  if not up then
    body.status, body.reason, body.error = "unhealthy", "database_unreachable", why
    return 503, body
  end
  if not c then
    body.status, body.reason = "unhealthy", "starting"
    return 503, body
  end
  local live = c:liveness_state()
  body.in_flight = c.n_running
  if c.n_running == 0 then
    body.liveness = live.held and "held" or "idle"
  else
    body.liveness = live.held and "held" or "lapsed"
    body.liveness_seconds_left = live.seconds_left
    if not live.held then
      body.status, body.reason = "unhealthy", "liveness_lapsed"
      return 503, body
    end
  end
  body.status = "ok"
  return 200, body
end

-- Serve /healthz and /metrics on VG_HTTP_HOST:VG_HTTP_PORT. consumer():
-- the consumer, or nil while the worker is starting.
function M.serve(cfg, consumer)
  local server
  server = http.serve {
    host = cfg.VG_HTTP_HOST or "0.0.0.0", port = cfg.VG_HTTP_PORT,
    max_connections = 32, max_body_bytes = 0, request_timeout = 10,
    -- Through the drain: /healthz says shutting_down, /metrics shows it.
    serve_during_shutdown = true,
    routes = {
      ["/healthz"] = function()
        local status, body = M.health(cfg, consumer())
        if status ~= 200 then log.warning("health_check_failed", { reason = body.reason, error = body.error }) end
        return status, body
      end,
      ["/metrics"] = function()
        return 200, M.metrics(consumer(), server), { ["Content-Type"] = M.CONTENT_TYPE }
      end,
    },
  }
  M.server = server
  return server
end

-- After the worker's drain (lua/worker.lua's stop): the listener closes.
function M.close()
  if M.server then
    M.server.close()
    M.server = nil
  end
  if health_pool then
    local p = health_pool
    health_pool = nil
    pcall(p.close, p, 0)
  end
end

return M
