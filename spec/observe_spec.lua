-- A worker's /healthz and /metrics (VG_HTTP_PORT), over real sockets, with
-- real workers against the test database; a database outage made by
-- cutting a real TCP proxy between the worker and PostgreSQL.
local vg = require "vg"
local proc = require "vg.proc"
local cjson = require "cjson"
local http = require "vg.http"
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local proxy = require "spec.support.proxy"
local support_http = require "spec.support.http"
local curl, free_port = support_http.curl, support_http.free_port

local describe_db = tdb.available() and describe or pending

local function health(port)
  local code, body = curl("http://127.0.0.1:" .. port .. "/healthz")
  return code, body and body ~= "" and cjson.decode(body) or nil
end

-- The value of one sample in a metrics text, by name and label text.
local function sample(text, name_and_labels)
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) (%S+)$")
    if k == name_and_labels then return tonumber(v) end
  end
end

local function promtool_check(text)
  if not io.open("/usr/bin/promtool") then return nil, "promtool missing" end
  local r = proc.run({ "promtool", "check", "metrics" }, { stdin = text, timeout = 30 })
  return r.code == 0, r.stdout .. r.stderr
end

describe_db("worker /healthz and /metrics", function()
  local db
  local procs = {}

  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)
  after_each(function()
    for _, p in ipairs(procs) do if p:running() then p:kill("KILL", { group = true }); p:wait(10) end end
    procs = {}
    proxy.cleanup()
  end)

  local function worker(name, extra)
    local env = tdb.worker_env(extra)
    env.WORKER_ID = name
    env.VG_HTTP_HOST = "127.0.0.1"
    local p = host.spawn({ "lua/worker.lua" }, { env = env })
    procs[#procs + 1] = p
    assert.truthy(host.wait_event(p, "http_listening"), p:stdout())
    return p
  end

  it("answers 200 for an idle worker and 200 with the liveness held while it runs a task", function()
    local port = free_port()
    local p = worker("h1", { VG_HTTP_PORT = tostring(port) })
    assert.truthy(host.wait_event(p, "worker_started"))
    assert.is_true(tdb.eventually(function() return (health(port)) == 200 end, 30))
    local code, body = health(port)
    assert.are.equal(200, code)
    assert.are.equal("ok", body.status)
    assert.are.equal("reachable", body.database)
    -- idle, or held for a while after its first claim
    assert.is_truthy(body.liveness == "idle" or body.liveness == "held")
    assert.are.equal("h1", body.worker_id)
    -- A task that runs until the test has looked.
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 30 } })
    assert.truthy(host.wait_event(p, "step_started"))
    code, body = health(port)
    assert.are.equal(200, code)
    assert.are.equal("held", body.liveness)
    assert.are.equal(1, body.in_flight)
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
  end)

  it("answers 503 shutting_down and still serves /metrics while it drains", function()
    local port = free_port()
    local p = worker("d1", { VG_HTTP_PORT = tostring(port), VG_SHUTDOWN_GRACE = "120" })
    assert.truthy(host.wait_event(p, "worker_started"))
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 60 } })
    assert.truthy(host.wait_event(p, "step_started"))
    p:kill("TERM")
    assert.truthy(host.wait_event(p, "worker_draining"))
    local code, body = health(port)
    assert.are.equal(503, code)
    assert.are.equal("shutting_down", body.reason)
    local text
    code, text = curl("http://127.0.0.1:" .. port .. "/metrics")
    assert.are.equal(200, code)
    assert.are.equal(1, sample(text, "vg_tasks_in_flight"))
    -- A second signal ends the grace; the task is given back, the exit clean.
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
    assert.are.equal(0, (curl("http://127.0.0.1:" .. port .. "/healthz")) or 0)
  end)

  it("exits 1 with the listener open when its configuration fails after the listener started", function()
    local port = free_port()
    local p = worker("f1", { VG_HTTP_PORT = tostring(port), VG_FENCE_MARGIN = "3" })
    local r = p:wait(60)
    assert.is_truthy(r)
    assert.are.equal(1, r.code)
  end)

  it("counts tasks by pipeline and step durations, in text promtool accepts", function()
    local port = free_port()
    local p = worker("m1", { VG_HTTP_PORT = tostring(port), VG_MAX_ATTEMPTS = "1" })
    assert.truthy(host.wait_event(p, "worker_started"))
    tdb.channel("c1")
    tdb.enqueue("c1", 3, { pipeline = "three" })
    tdb.enqueue("c1", 1, { pipeline = "fatal", max_attempts = 1 })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed')") == 4
    end, 60))
    local code, text = curl("http://127.0.0.1:" .. port .. "/metrics")
    assert.are.equal(200, code)
    assert.are.equal(3, sample(text, 'vg_tasks_completed_total{pipeline="three"}'))
    assert.are.equal(3, sample(text, 'vg_tasks_claimed_total{pipeline="three"}'))
    assert.are.equal(1, sample(text, 'vg_tasks_failed_total{pipeline="fatal"}'))
    assert.are.equal(0, sample(text, 'vg_tasks_retried_total{pipeline="fatal"}'))
    assert.are.equal(3, sample(text, 'vg_step_duration_seconds_count{pipeline="three",step="two"}'))
    assert.are.equal(3, sample(text, 'vg_step_duration_seconds_bucket{pipeline="three",step="two",le="+Inf"}'))
    assert.is_truthy(sample(text, "vg_db_pool_connections_in_use"))
    assert.is_truthy(sample(text, "vg_db_pool_timeouts_total"))
    assert.is_truthy(sample(text, "vg_loop_lag_seconds"))
    assert.is_truthy(sample(text, "vg_lease_renewals_total"))
    assert.is_truthy(sample(text, "vg_leases_lost_total"))
    local ok, out = promtool_check(text)
    if ok ~= nil then assert(ok, "promtool check metrics: " .. out) end
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
  end)

  it("answers 503 database_unreachable while the database is cut off, and 200 once it is back", function()
    local px = proxy.start()
    local port = free_port()
    local p = worker("o1", { VG_HTTP_PORT = tostring(port), DATABASE_URL = px.url })
    assert.truthy(host.wait_event(p, "worker_started"))
    assert.is_true(tdb.eventually(function() return (health(port)) == 200 end, 30))
    -- The outage: the proxy and every connection through it die.
    px:kill()
    local code, body = health(port)
    assert.are.equal(503, code)
    assert.are.equal("database_unreachable", body.reason)
    assert.are.equal("unreachable", body.database)
    -- Back:
    px:up()
    assert.is_true(tdb.eventually(function() return (health(port)) == 200 end, 30))
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
  end)

  it("answers 503 starting while the worker cannot reach the database at start-up", function()
    local port = free_port()
    local p = worker("s1", { VG_HTTP_PORT = tostring(port), VG_DB_CONNECT_TIMEOUT = "60",
                             DATABASE_URL = "postgresql://postgres@127.0.0.1:1/none" })
    local code, body = health(port)
    assert.are.equal(503, code)
    assert.are.equal("database_unreachable", body.reason)
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
  end)

  it("refuses malformed, oversized and slow requests without harming the worker's tasks", function()
    local port = free_port()
    local p = worker("b1", { VG_HTTP_PORT = tostring(port), VG_CONCURRENCY = "2" })
    assert.truthy(host.wait_event(p, "worker_started"))
    tdb.channel("c1")
    local ids = tdb.enqueue("c1", 20, { pipeline = "three", payload = { sleep = 0.02 } })
    -- Slow clients that never finish their requests, up to the limit.
    local slow = {}
    for i = 1, 40 do
      slow[i] = proc.spawn({ "sh", "-c", "(printf 'GET /healthz HTTP/1.1\\r\\nX: '; exec sleep 60) | "
                             .. "{ socat -t 1 - TCP:127.0.0.1:" .. port .. "; echo closed; }" }, {})
    end
    -- Garbage, oversized headers, a body where none is allowed.
    local r = proc.run({ "socat", "-t", "5", "-", "TCP:127.0.0.1:" .. port }, { stdin = "\0\1\2 GARBAGE\r\n\r\n" })
    assert.is_truthy(r.stdout:match("^HTTP/1.1 [45]0%d"))
    local code = curl("http://127.0.0.1:" .. port .. "/metrics", { "-H", "X-Big: " .. string.rep("a", 20000) })
    assert.is_truthy(code == 431 or code == 503)
    code = curl("http://127.0.0.1:" .. port .. "/healthz", { "--data", "x" })
    assert.is_truthy(code == 413 or code == 405 or code == 503)
    -- The tasks finish all the same.
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == #ids
    end, 120))
    -- The slow clients were cut off, and the port answers again.
    for _, s in ipairs(slow) do
      assert.is_truthy(s:wait_output("closed", 60, { plain = true }))
      s:kill("KILL", { group = true })
    end
    assert.is_true(tdb.eventually(function() return (curl("http://127.0.0.1:" .. port .. "/healthz")) == 200 end, 30))
    p:kill("TERM")
    assert.are.equal(0, p:wait(60).code)
  end)

  it("is off without VG_HTTP_PORT", function()
    local env = tdb.worker_env()
    env.VG_HTTP_PORT = nil
    local p = host.spawn({ "lua/worker.lua" }, { env = env })
    procs[#procs + 1] = p
    assert.truthy(host.wait_event(p, "worker_started"))
    p:kill("TERM")
    local r = p:wait(60)
    assert.are.equal(0, r.code)
    assert(not r.stdout:find('"event":"http_listening"', 1, true), r.stdout)
  end)
end)
