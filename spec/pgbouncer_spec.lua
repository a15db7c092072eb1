-- Workers behind a real PgBouncer in transaction mode (Debian's pgbouncer,
-- 1.18: no prepared statements in transaction mode, no "options" startup
-- parameter), started and stopped by these tests in front of the test
-- cluster with tests/pgbouncer.sh. DATABASE_URL names the bouncer;
-- DATABASE_DIRECT_URL the server, for LISTEN and the liveness renewals.
local vg = require "vg"
local proc = require "vg.proc"
local host = require "spec.support.host"
local tdb = require "spec.support.db"

local describe_db = tdb.available() and describe or pending

-- Start a bouncer with at most pool_size server connections; returns its
-- URL and its folder.
local function start_bouncer(pool_size)
  local dir = os.tmpname()
  os.remove(dir)
  local r = proc.run({ "sh", "tests/pgbouncer.sh", "start", dir, tdb.url },
                     { env = { PGB_POOL_SIZE = tostring(pool_size) }, timeout = 60 })
  assert(r.code == 0, "pgbouncer did not start: " .. r.stdout .. r.stderr)
  return (r.stdout:gsub("%s+$", "")), dir
end

local function stop_bouncer(dir)
  if not dir then return end
  proc.run({ "sh", "tests/pgbouncer.sh", "stop", dir }, { timeout = 30 })
  proc.run({ "rm", "-rf", dir })
end

-- psql through url; returns its output (raises when it fails).
local function psql(url, sql)
  local r = proc.run({ "psql", "-X", "-q", "-t", "-A", "-F", "|", url, "-c", sql }, { timeout = 30 })
  assert(r.code == 0, "psql failed: " .. r.stdout .. r.stderr)
  return r.stdout
end

describe_db("workers behind PgBouncer in transaction mode", function()
  local db, url, dir
  local procs = {}

  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)
  after_each(function()
    for _, p in ipairs(procs) do if p:running() then p:kill("KILL"); p:wait(10) end end
    procs = {}
    stop_bouncer(dir)
    dir = nil
  end)

  it("keeps the pool's session settings (UTC, ISO dates) on server connections other clients changed", function()
    url, dir = start_bouncer(1) -- one server connection, shared by every client
    -- Other clients with settings of their own, from their startup packet
    -- and from SET, on that same server connection.
    local function other(sql)
      local r = proc.run({ "psql", "-X", "-q", "-t", "-A", url, "-c", sql, "-c", "SHOW TimeZone" },
                         { env = { PGTZ = "Asia/Tokyo", PGDATESTYLE = "German, DMY" }, timeout = 30 })
      assert(r.code == 0, "psql failed: " .. r.stdout .. r.stderr)
      return (r.stdout:gsub("%s+$", ""))
    end
    assert.equal("Asia/Tokyo", other("SHOW DateStyle"):match("[^\n]+$"))
    assert.equal("America/New_York", other("SET TimeZone = 'America/New_York'"))
    local pool = require("vg.db").pool { url = url, pooler = true, pool_size = 2 }
    for _ = 1, 3 do
      local row = pool:query([[SELECT current_setting('TimeZone') AS tz,
                                      current_setting('DateStyle') AS ds,
                                      $1::timestamptz AS t, $2::int + 1 AS n]],
                             "2026-01-02 03:04:05+00", 41)[1]
      assert.equal("UTC", row.tz)
      assert.equal("ISO, YMD", row.ds)
      assert.matches("^2026%-01%-02[T ]03:04:05", row.t)
      assert.equal(42, row.n)
      -- and the other clients get their own settings back
      assert.equal("German, DMY\nAsia/Tokyo", other("SHOW DateStyle"))
    end
    -- nothing was prepared (PgBouncer 1.18 cannot keep prepared statements)
    assert.equal(0, pool:stats().prepared_total)
    -- transactions work: one server connection for the whole block
    local n = pool:transaction(function(tx)
      tx:query("CREATE TEMP TABLE spec_pgb (x int) ON COMMIT DROP")
      tx:query("INSERT INTO spec_pgb VALUES ($1), ($2)", 1, 2)
      return tx:query("SELECT sum(x)::int AS s FROM spec_pgb")[1].s
    end)
    assert.equal(3, n)
    pool:close()
  end)

  it("three workers complete every task exactly once, their LISTEN sessions straight to the server", function()
    url, dir = start_bouncer(4)
    for i = 1, 3 do tdb.channel("pb" .. i) end
    for i = 1, 3 do tdb.enqueue("pb" .. i, 200, { pipeline = "record" }) end
    for i = 1, 3 do
      local env = tdb.worker_env {
        DATABASE_URL = url, DATABASE_DIRECT_URL = tdb.url,
        VG_CONCURRENCY = "4", WORKER_ID = "pgb" .. i,
        -- new work must arrive by notification, not by polling
        VG_POLL_INTERVAL = "60",
      }
      local p = host.spawn({ "lua/worker.lua" }, { env = env })
      procs[#procs + 1] = p
      assert.truthy(host.wait_event(p, "worker_started"), "worker " .. i .. " did not start")
    end
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 600
    end, 120, 0.25))
    assert.equal(600, tdb.count("SELECT count(*) FROM test_executions"))
    assert.equal(600, tdb.count("SELECT count(DISTINCT task_id) FROM test_executions"))
    assert.equal(3, tdb.count("SELECT count(DISTINCT worker_id) FROM test_executions"))

    -- The sessions that are not the bouncer's server connections: each
    -- worker's LISTEN session is among them.
    local ports = {}
    for line in psql(url:gsub("/[^/]*$", "/pgbouncer"), "SHOW SERVERS"):gmatch("[^\n]+") do
      local cols = {}
      for c in (line .. "|"):gmatch("([^|]*)|") do cols[#cols + 1] = c end
      -- type|user|database|state|addr|port|local_addr|local_port|...
      ports[#ports + 1] = tonumber(cols[8])
    end
    local port_list = "{" .. table.concat(ports, ",") .. "}"
    assert.is_true(#ports >= 1 and #ports <= 4, "server connections of the bouncer: " .. #ports)
    assert.is_true(tdb.eventually(function()
      return tdb.count([[SELECT count(*) FROM pg_stat_activity
                          WHERE backend_type = 'client backend' AND query LIKE 'LISTEN%'
                            AND NOT (client_port = ANY ($1::int[]))]], port_list) == 3
    end, 30, 0.1))

    -- An idle worker picks a new task up by notification (the poll is 60 s).
    tdb.enqueue("pb1", 1, { pipeline = "record" })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 601
    end, 30, 0.05))

    for _, p in ipairs(procs) do
      p:kill("TERM")
      local r = p:wait(60)
      assert.is_not_nil(r, "worker did not exit after SIGTERM")
      assert.equal(0, r.code)
      local lines = host.lines(r.stdout)
      assert.equal("worker_shutdown", lines[#lines].event)
      for _, l in ipairs(lines) do
        assert.is_true(l.level ~= "error" and l.level ~= "critical", r.stdout)
      end
    end
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks WHERE status <> 'completed'"))
  end)
end)
