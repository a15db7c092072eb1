-- vg.db when the server goes away: terminated backends, a server restart,
-- a query in flight on a dying connection; LISTEN/NOTIFY and its
-- reconnection; waiting for the database at start-up; and passwords that
-- never reach a log line. Against TEST_DATABASE_URL (restart: PGTMP_DIR).
local dbs = require "spec.support.db"
if not dbs.available() then
  describe("vg.db failover", function() pending("TEST_DATABASE_URL is not set") end)
  return
end
local URL = dbs.url

local vg = require "vg"
local db = require "vg.db"
local proc = require "vg.proc"
local cjson = require "cjson"

local PGTMP_DIR = os.getenv("PGTMP_DIR")
local BIN = os.getenv("VG_HOST_BIN") or "build/vg-host"

local new_pool = dbs.pool_maker("vgspec-fo")

local wait_until = dbs.wait_until

local function pids(admin, app, extra)
  local rows = admin:query("select pid from pg_stat_activity where application_name = $1 "
    .. (extra or ""), app)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.pid end
  return out
end

-- Terminate every backend of app and wait until they are gone.
local function terminate_all(admin, app, extra)
  local killed = admin:query("select pg_terminate_backend(pid) as ok from pg_stat_activity "
    .. "where application_name = $1 " .. (extra or ""), app)
  assert.is_true(wait_until(function() return #pids(admin, app, extra) == 0 end))
  return #killed
end

-- Open n connections in pool at once.
local function warm(pool, n)
  local ts = {}
  for i = 1, n do ts[i] = vg.spawn(function() pool:query("select pg_sleep(0.1)") end) end
  for i = 1, n do ts[i]:join() end
end

-- A temp file NAME.lua holding src (the empty NAME os.tmpname made is
-- removed); the caller removes the script.
local function script_file(src)
  local stem = os.tmpname()
  local path = stem .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  os.remove(stem)
  return path
end

-- Run a Lua snippet in a fresh vg-host; returns result, decoded log lines.
local function run_script(src, env, timeout)
  local path = script_file(src)
  local base = { TEST_DATABASE_URL = URL, DATABASE_URL = URL, LOG_LEVEL = "debug" }
  for k, v in pairs(env or {}) do base[k] = v end
  local res = proc.run({ BIN, path }, { env = base, timeout = timeout or 30 })
  os.remove(path)
  local lines = {}
  for line in res.stdout:gmatch("[^\n]+") do
    local ok, obj = pcall(cjson.decode, line)
    if ok and type(obj) == "table" then lines[#lines + 1] = obj end
  end
  return res, lines
end

local function find(lines, event)
  local out = {}
  for _, l in ipairs(lines) do if l.event == event then out[#out + 1] = l end end
  return out
end

describe("stale connections", function()
  local admin
  setup(function() admin = new_pool() end)
  teardown(function() admin:close(0) end)

  it("replaces pooled connections whose backends were terminated, without an error", function()
    local pool, app = new_pool { pool_size = 3 }
    warm(pool, 3)
    assert.equal(3, pool:stats().idle)
    assert.equal(3, terminate_all(admin, app))
    -- Straight away (used within the last second: no ping, the socket tells).
    local tasks = {}
    for i = 1, 3 do
      tasks[i] = vg.spawn(function() return pool:query("select $1::int as i", i)[1].i end)
    end
    for i = 1, 3 do assert.equal(i, tasks[i]:join()) end
    assert.is_true(pool:stats().closed_total >= 3)
    pool:close(0)
  end)

  it("replaces them too after they sat idle (pre-ping)", function()
    local pool, app = new_pool { pool_size = 2 }
    warm(pool, 2)
    vg.sleep(1.1)
    terminate_all(admin, app)
    for _ = 1, 4 do assert.equal(1, pool:query("select 1 as v")[1].v) end
    pool:close(0)
  end)

  it("raises a retriable connection_lost for a query in flight when its backend dies", function()
    local pool, app = new_pool { pool_size = 2 }
    local q = vg.spawn(function() return pcall(pool.query, pool, "select pg_sleep(30)") end)
    local extra = "and query like '%pg_sleep(30)%' and state = 'active'"
    assert.is_true(wait_until(function() return #pids(admin, app, extra) == 1 end))
    terminate_all(admin, app, extra)
    local ok, err = q:join()
    assert.is_false(ok)
    assert.equal("connection_lost", err.code)
    assert.is_true(err.retriable)
    assert.matches("may or may not have been applied", err.message)
    -- The next query gets a fresh connection.
    assert.equal(1, pool:query("select 1 as v")[1].v)
    assert.equal(0, pool:stats().checked_out)
    pool:close(0)
  end)

  it("survives a server restart: the next queries succeed", function()
    if not PGTMP_DIR then
      pending("PGTMP_DIR is not set (needs the throw-away cluster)")
      return
    end
    local pool = new_pool { pool_size = 3 }
    warm(pool, 3)
    pool:listen("vgspec_restart")
    local res = proc.run({ "sh", "tests/pgtmp.sh", "restart", PGTMP_DIR }, { timeout = 120 })
    assert.equal(0, res.code, res.stderr)
    local tasks = {}
    for i = 1, 3 do
      tasks[i] = vg.spawn(function() return pool:query("select $1::int as i", i)[1].i end)
    end
    for i = 1, 3 do assert.equal(i, tasks[i]:join()) end
    -- Old admin connections died too: the admin pool recovers the same way.
    assert.equal(1, admin:query("select 1 as v")[1].v)
    -- The LISTEN connection subscribes again on its own.
    local other = new_pool()
    local got
    assert.is_true(wait_until(function()
      other:query("select pg_notify('vgspec_restart', 'after')")
      local n = pool:wait_notification(0.2)
      if n and n.payload == "after" then got = n end
      return got ~= nil
    end, 20))
    other:close(0)
    pool:close(0)
  end)
end)

describe("notifications", function()
  local admin, pool, app
  before_each(function()
    admin = new_pool()
    pool, app = new_pool()
  end)
  after_each(function()
    pool:close(0)
    admin:close(0)
  end)

  it("wake a waiting task with channel, payload and pid", function()
    assert.is_true(pool:listen("vgspec_chan"))
    local waiter = vg.spawn(function() return pool:wait_notification(10) end)
    vg.sleep(0.05)
    local sender_pid = admin:query("select pg_backend_pid() as p, pg_notify('vgspec_chan', 'hello')")[1].p
    local n = waiter:join()
    assert.equal("vgspec_chan", n.channel)
    assert.equal("hello", n.payload)
    assert.equal(sender_pid, n.pid)
  end)

  it("return nil when the timeout passes", function()
    pool:listen("vgspec_quiet")
    assert.is_nil(pool:wait_notification(0.2))
  end)

  it("queue notifications that arrive while nobody waits, in order", function()
    pool:listen("vgspec_q")
    admin:query("select pg_notify('vgspec_q', 'one'); select pg_notify('vgspec_q', 'two')")
    admin:query("notify vgspec_q, 'three'")
    local got = {}
    for _ = 1, 3 do got[#got + 1] = pool:wait_notification(5).payload end
    assert.same({ "one", "two", "three" }, got)
  end)

  it("stop after unlisten", function()
    pool:listen("vgspec_un")
    pool:unlisten("vgspec_un")
    admin:query("notify vgspec_un, 'x'")
    assert.is_nil(pool:wait_notification(0.3))
  end)

  it("use one dedicated connection outside the pool's limit", function()
    local small, sapp = new_pool { pool_size = 1, max_overflow = 0 }
    small:listen("vgspec_a")
    small:listen("vgspec_b")
    small:query("select 1")
    assert.equal(2, #pids(admin, sapp))
    assert.equal(1, small:stats().open)
    small:close(0)
  end)

  it("subscribe again after the listen connection's backend is terminated", function()
    pool:listen("vgspec_re")
    local extra = "and query like 'LISTEN%'"
    assert.is_true(wait_until(function() return #pids(admin, app, extra) == 1 end))
    terminate_all(admin, app, extra)
    -- A waiter is woken (with nil) once the connection is back: notifications
    -- sent in between may have been missed.
    local woke = pool:wait_notification(10)
    assert.is_nil(woke)
    admin:query("notify vgspec_re, 'back'")
    local n = pool:wait_notification(5)
    assert.is_not_nil(n)
    assert.equal("back", n.payload)
  end)
end)

describe("listen on_connect", function()
  local admin
  setup(function() admin = new_pool() end)
  teardown(function() admin:close(0) end)

  local function lock_holder(key)
    local rows = admin:query("select l.pid from pg_locks l where l.locktype = 'advisory' "
      .. "and l.granted and (l.classid::bigint << 32 | l.objid::bigint) = "
      .. "hashtextextended($1, 0)", key)
    return rows[1] and rows[1].pid
  end

  it("runs its statement on every new LISTEN connection", function()
    local key = "vgspec-live-" .. math.random(1e9)
    local pool, app = new_pool()
    pool:listen("vgspec_oc", {
      on_connect = { "select pg_advisory_lock(hashtextextended($1, 0))", key },
    })
    local first = lock_holder(key)
    assert.is_not_nil(first, "the lock is held by the LISTEN session")
    assert.same({ first }, pids(admin, app, "and query like 'LISTEN%'"))
    terminate_all(admin, app, "and pid = " .. first)
    assert.is_nil(pool:wait_notification(10)) -- woken once reconnected
    local second = lock_holder(key)
    assert.is_not_nil(second, "the lock is taken again after reconnecting")
    assert.are_not.equal(first, second)
    admin:query("notify vgspec_oc, 'still'")
    assert.equal("still", pool:wait_notification(5).payload)
    pool:close(0)
    assert.is_true(wait_until(function() return lock_holder(key) == nil end))
  end)

  it("retries its statement after a reconnection until it succeeds, never listening without it", function()
    admin:query([[CREATE TABLE IF NOT EXISTS vgspec_gate (closed boolean NOT NULL);
                  TRUNCATE vgspec_gate; INSERT INTO vgspec_gate VALUES (false);
                  CREATE SEQUENCE IF NOT EXISTS vgspec_gate_tries;
                  CREATE OR REPLACE FUNCTION vgspec_gate() RETURNS void LANGUAGE plpgsql AS $$
                  BEGIN
                    PERFORM nextval('vgspec_gate_tries');
                    IF (SELECT closed FROM vgspec_gate) THEN RAISE EXCEPTION 'gate closed'; END IF;
                  END $$]])
    local function tries() return admin:query("SELECT last_value FROM vgspec_gate_tries")[1].last_value end
    local pool, app = new_pool()
    pool:listen("vgspec_gate", { on_connect = "select vgspec_gate()" })
    admin:query("UPDATE vgspec_gate SET closed = true")
    local before = tries()
    terminate_all(admin, app, "and query like 'LISTEN%'")
    -- It fails, is dropped and is tried again, with back-off.
    assert.is_true(wait_until(function() return tries() >= before + 3 end))
    assert.same({}, pids(admin, app, "and query like 'LISTEN%'"))
    admin:query("UPDATE vgspec_gate SET closed = false")
    assert.is_nil(pool:wait_notification(15)) -- woken once reconnected
    admin:query("notify vgspec_gate, 'open'")
    assert.equal("open", pool:wait_notification(5).payload)
    pool:close(0)
    admin:query("DROP FUNCTION vgspec_gate(); DROP TABLE vgspec_gate; DROP SEQUENCE vgspec_gate_tries")
  end)

  it("makes listen fail with the statement's error", function()
    local pool = new_pool()
    local ok, err = pcall(pool.listen, pool, "vgspec_bad", { on_connect = "select 1/0" })
    assert.is_false(ok)
    assert.equal("listen_failed", err.code)
    assert.matches("division by zero", err.message)
    pool:close(0)
  end)
end)

describe("a first LISTEN connection that fails", function()
  it("wakes the tasks waiting for a notification, with none", function()
    local pool = db.pool { url = "postgresql://vg@127.0.0.1:1/none", connect_timeout = 5 }
    local waiting = vg.spawn(function() return pool:wait_notification(60) end)
    vg.sleep(0)
    local ok, err = pcall(pool.listen, pool, "vgspec_never")
    assert.is_false(ok)
    assert.equal("listen_failed", err.code)
    -- Woken with no notification (join returns nothing), not by its timeout.
    local r = table.pack(waiting:join(30))
    assert.equal(0, r.n, tostring(r[2]))
    pool:close(0)
  end)
end)

describe("process level", function()
  it("exits 1 with database_unreachable when nothing listens, retrying with back-off", function()
    local res, lines = run_script([[
      local db = require "vg.db"
      db.connect { wait = true }
    ]], { DATABASE_URL = "postgresql://app:topsecretpw@127.0.0.1:1/vg",
          VG_DB_CONNECT_TIMEOUT = "1.5", LOG_LEVEL = "info" })
    assert.equal(1, res.code)
    local fails = find(lines, "database_connect_failed")
    assert.is_true(#fails >= 3, "expected several attempts, got " .. #fails)
    for _, l in ipairs(fails) do
      assert.equal("warning", l.level)
      assert.equal("127.0.0.1:1/vg", l.host)
      assert.equal("refused", l.reason)
    end
    assert.is_true(fails[2].retry_in > fails[1].retry_in, "back-off grows")
    local crit = find(lines, "script_error")[1]
    assert.is_not_nil(crit)
    assert.equal("critical", crit.level)
    assert.matches("database_unreachable", crit.error)
    assert.is_nil(res.stdout:find("topsecretpw", 1, true))
    assert.is_nil(res.stderr:find("topsecretpw", 1, true))
  end)

  it("never writes the password in any log line", function()
    local with_pw = URL:gsub("^(postgresql://[^:@/]+)@", "%1:hunter2secret@")
    assert.is_not_nil(with_pw:find("hunter2secret", 1, true), "could not add a password")
    local res, lines = run_script([[
      local vg = require "vg"
      local db = require "vg.db"
      assert(db.connect { wait = true })
      db.query("select 1")
      pcall(db.query, "select * from no_such_table")
      db.listen("vgspec_pw")
      local admin = db.pool { url = os.getenv("TEST_DATABASE_URL") }
      admin:query("select pg_terminate_backend(pid) from pg_stat_activity where "
        .. "application_name = 'vgspec-pw' and pid <> pg_backend_pid()")
      db.wait_notification(3)
      local bad = db.pool { url = (os.getenv("DATABASE_URL"):gsub("/vg%?", "/nope?")) }
      pcall(bad.wait_ready, bad, 0.5)
      db.close()
    ]], { DATABASE_URL = with_pw .. "?application_name=vgspec-pw", LOG_LEVEL = "debug" })
    assert.equal(0, res.code, res.stdout .. res.stderr)
    assert.is_true(#lines > 3)
    assert.is_nil(res.stdout:find("hunter2secret", 1, true))
    assert.is_nil(res.stderr:find("hunter2secret", 1, true))
    assert.is_not_nil(find(lines, "db_listen_reconnected")[1], "the reconnect is logged")
    assert.is_not_nil(find(lines, "database_connections_closed")[1])
  end)

  it("logs a normal pool close at debug level and a forced one as a warning", function()
    local res, lines = run_script([[
      local vg = require "vg"
      local db = require "vg.db"
      local calm = db.pool { url = os.getenv("DATABASE_URL") }
      calm:query("select 1")
      assert(calm:close(5))
      local busy = db.pool { url = os.getenv("DATABASE_URL"), pool_size = 1 }
      local q = vg.spawn(function() return pcall(busy.query, busy, "select pg_sleep(5)") end)
      while busy:stats().checked_out == 0 do vg.sleep(0.05) end
      vg.sleep(0.1)
      assert(not busy:close(0.1))
      q:join()
    ]], { LOG_LEVEL = "info" })
    assert.equal(0, res.code, res.stdout .. res.stderr)
    local closed = find(lines, "database_connections_closed")
    assert.equal(1, #closed, res.stdout)
    assert.equal("warning", closed[1].level)
    assert.is_true(closed[1].forced)
  end)

  it("wakes a task waiting for a notification at once on SIGTERM", function()
    local path = script_file([[
      local db = require "vg.db"
      local log = require "vg.log"
      db.listen("vgspec_term")
      log.info("waiting_now")
      local n = db.wait_notification()
      log.info("woke", { got = n ~= nil })
      db.close()
    ]])
    local p = proc.spawn({ BIN, path }, { env = { DATABASE_URL = URL, LOG_LEVEL = "debug" } })
    local ok = p:wait_output('"event":"waiting_now"', 20, { plain = true })
    os.remove(path)
    assert.is_truthy(ok)
    p:kill("TERM")
    local res = p:wait(10)
    assert.equal(0, res.code)
    assert.is_not_nil(res.stdout:find('"event":"woke"', 1, true))
    assert.is_not_nil(res.stdout:find('"event":"database_connections_closed"', 1, true))
  end)
end)
