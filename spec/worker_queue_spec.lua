-- Real worker processes sharing one queue: exactly-once completion, crashes,
-- SIGTERM in the middle of a task, grace expiry, a PostgreSQL restart,
-- retries, bad payloads, correlation ids.
local vg = require "vg"
local host = require "spec.support.host"
local tdb = require "spec.support.db"

local describe_db = tdb.available() and describe or pending

local function start_worker(name, extra)
  local env = tdb.worker_env(extra)
  env.WORKER_ID = name
  local p = host.spawn({ "lua/worker.lua" }, { env = env })
  assert.truthy(host.wait_event(p, "worker_started"), "worker " .. name .. " did not start")
  return p
end

local function stop(p)
  if p:running() then p:kill("TERM") end
  local r = p:wait(60)
  assert.is_not_nil(r, "worker did not exit after SIGTERM")
  return r
end

describe_db("worker processes", function()
  local db
  local procs = {}

  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)
  after_each(function()
    for _, p in ipairs(procs) do if p:running() then p:kill("KILL"); p:wait(10) end end
    procs = {}
  end)

  local function worker(name, extra)
    local p = start_worker(name, extra)
    procs[#procs + 1] = p
    return p
  end

  local function status_of(id)
    return db.query("SELECT status FROM tasks WHERE id = $1", id)[1].status
  end

  it("three workers complete several thousand tasks, each exactly once", function()
    for i = 1, 3 do tdb.channel("ch" .. i) end
    for i = 1, 3 do tdb.enqueue("ch" .. i, 1000, { pipeline = "record" }) end
    local ws = {}
    for i = 1, 3 do ws[i] = worker("w" .. i, { VG_CONCURRENCY = "4" }) end
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 3000
    end, 120, 0.25))
    assert.equal(3000, tdb.count("SELECT count(*) FROM test_executions"))
    assert.equal(3000, tdb.count("SELECT count(DISTINCT task_id) FROM test_executions"))
    -- the work was shared
    local per = db.query("SELECT worker_id, count(*)::int AS n FROM test_executions GROUP BY worker_id")
    assert.equal(3, #per)
    for i = 1, 3 do
      local r = stop(ws[i])
      assert.equal(0, r.code)
      local lines = host.lines(r.stdout)
      assert.equal("worker_shutdown", lines[#lines].event)
    end
    assert.equal(3, tdb.count("SELECT count(*) FROM workers WHERE status = 'stopped'"))
  end)

  it("claims a slot's next task in the statement that completes its task", function()
    tdb.channel("one")
    tdb.enqueue("one", 40, { pipeline = "record" })
    -- The claim statements sent, counted by pg_stat_statements (which the
    -- test cluster preloads) in this database.
    db.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    db.query("SELECT pg_stat_statements_reset()")
    local function calls(like)
      return tdb.count([[SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
                          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                            AND query LIKE $1]], like)
    end
    local w = worker("w", { VG_CONCURRENCY = "1" })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 40
    end, 60, 0.1))
    assert.equal(40, tdb.count("SELECT count(DISTINCT task_id) FROM test_executions"))
    -- One statement, one transaction: the same now(). Every task but the
    -- first was claimed at the instant its predecessor completed.
    assert.equal(39, tdb.count([[SELECT count(*) FROM tasks n
                                  WHERE EXISTS (SELECT 1 FROM tasks p
                                                 WHERE p.id <> n.id AND p.completed_at = n.claimed_at)]]))
    assert.equal(0, stop(w).code)
    -- 40 completes with a claim (the last found nothing), and two claims of
    -- their own: the first, and the worker's look once its slot ran dry.
    -- The slot itself sends none after its complete's claim came back empty.
    assert.equal(40, calls("WITH done AS%picked AS%"))
    assert.equal(2, calls("WITH picked AS%"))
  end)

  it("in batch mode claims and records results in batches, each task exactly once", function()
    for i = 1, 3 do tdb.channel("bc" .. i) end
    for i = 1, 3 do tdb.enqueue("bc" .. i, 200, { pipeline = "record", payload = { sleep = 0.001 } }) end
    local w1 = worker("b1", { VG_CONCURRENCY = "8", VG_BATCH = "on" })
    local w2 = worker("b2", { VG_CONCURRENCY = "8", VG_BATCH = "on" })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 600
    end, 120, 0.25))
    assert.equal(600, tdb.count("SELECT count(*) FROM test_executions"))
    assert.equal(600, tdb.count("SELECT count(DISTINCT task_id) FROM test_executions"))
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks WHERE result IS NULL"))
    for _, p in ipairs { w1, w2 } do assert.equal(0, stop(p).code) end
  end)

  it("runs a SIGKILLed worker's task again on another worker", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 1.5 } })[1]
    local a = worker("victim")
    assert.is_true(tdb.eventually(function() return status_of(id) == "processing" end, 20))
    local b = worker("survivor")
    a:kill("KILL")
    a:wait(10)
    local killed_at = vg.now()
    assert.is_true(tdb.eventually(function() return status_of(id) == "completed" end, 30))
    local took = vg.now() - killed_at
    local ex = db.query("SELECT worker_id FROM test_executions WHERE task_id = $1 ORDER BY id", id)
    assert.equal(2, #ex)
    assert.equal("victim", ex[1].worker_id)
    assert.equal("survivor", ex[2].worker_id)
    -- reported for information; the bound itself belongs to the benchmarks
    print(string.format("# rescued and completed %.2f s after SIGKILL", took))
    assert.equal(0, stop(b).code)
  end)

  it("finishes the task in flight after SIGTERM, then exits 0", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 1 } })[1]
    -- debug: the pool's normal close is logged at that level
    local p = worker("w1", { LOG_LEVEL = "debug" })
    assert.is_true(tdb.eventually(function() return status_of(id) == "processing" end, 20))
    p:kill("TERM")
    local r = p:wait(30)
    assert.equal(0, r.code)
    assert.equal("completed", status_of(id))
    local lines = host.lines(r.stdout)
    local _, i_sig = host.find(lines, "shutdown_signal_received")
    local _, i_done = host.find(lines, "task_completed")
    assert.is_true(i_sig < i_done)
    local closed = host.find(lines, "database_connections_closed")
    assert.is_not_nil(closed)
    assert.equal("debug", closed.level)
    assert.is_false(closed.forced)
    assert.equal("worker_shutdown", lines[#lines].event)
  end)

  it("releases the task when the grace ends, without counting the attempt", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 30 } })[1]
    local p = worker("w1", { VG_SHUTDOWN_GRACE = "0.5" })
    assert.is_true(tdb.eventually(function() return status_of(id) == "processing" end, 20))
    p:kill("TERM")
    local r = p:wait(30)
    assert.equal(0, r.code)
    local row = db.query("SELECT status, attempts FROM tasks WHERE id = $1", id)[1]
    assert.equal("retry", row.status)
    assert.equal(0, row.attempts)
    local lines = host.lines(r.stdout)
    assert.is_not_nil(host.find(lines, "shutdown_grace_expired"))
    local rel = host.find(lines, "task_released")
    assert.is_true(rel.released)
    assert.equal(id, rel.correlation_id)
  end)

  it("claims no new task after SIGTERM", function()
    tdb.channel("c1")
    local first = tdb.enqueue("c1", 1, { pipeline = "record", payload = { sleep = 1 } })[1]
    local p = worker("w1")
    assert.is_true(tdb.eventually(function() return status_of(first) == "processing" end, 20))
    p:kill("TERM")
    assert.truthy(host.wait_event(p, "shutdown_signal_received"))
    local later = tdb.enqueue("c1", 1, { pipeline = "record" })[1]
    assert.equal(0, p:wait(30).code)
    assert.equal("completed", status_of(first))
    assert.equal("pending", status_of(later))
  end)

  it("serves priorities in order and channels fairly", function()
    tdb.channel("busy")
    tdb.channel("quiet")
    tdb.enqueue("busy", 50, { pipeline = "record", priority = "low" })
    tdb.enqueue("busy", 50, { pipeline = "record" })
    local quiet = tdb.enqueue("quiet", 1, { pipeline = "record" })[1]
    local high = tdb.enqueue("busy", 1, { pipeline = "record", priority = "high" })[1]
    local p = worker("w1")
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status <> 'completed'") == 0
    end, 60))
    stop(p)
    local order = db.query("SELECT task_id FROM test_executions ORDER BY id")
    assert.equal(high, order[1].task_id)
    assert.is_true(order[2].task_id == quiet or order[3].task_id == quiet)
    -- every normal task ran before any low one
    local last_normal = tdb.count([[SELECT max(e.id) FROM test_executions e JOIN tasks t ON t.id = e.task_id
                                    WHERE t.priority = 'normal']])
    local first_low = tdb.count([[SELECT min(e.id) FROM test_executions e JOIN tasks t ON t.id = e.task_id
                                   WHERE t.priority = 'low']])
    assert.is_true(last_normal < first_low)
  end)

  it("gives delayed tasks that fall due while it is busy their turn, not a place after the backlog", function()
    tdb.channel("busy")
    tdb.channel("later")
    tdb.enqueue("busy", 5000)
    local p = worker("w1", { VG_CONCURRENCY = "4" })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") >= 100
    end, 60, 0.02))
    -- due in 0.3 s: only the promote flag of the busy worker's claims gets
    -- them their keys (its slots claim their next tasks without waiting)
    tdb.enqueue("later", 3, { delay = 0.3 })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE channel_id = 'later' AND status = 'completed'") == 3
    end, 60, 0.02))
    local left = tdb.count([[SELECT count(*) FROM tasks WHERE channel_id = 'busy'
                               AND (completed_at IS NULL OR completed_at > (
                                    SELECT max(completed_at) FROM tasks WHERE channel_id = 'later'))]])
    stop(p)
    assert.is_true(left >= 1000, ("only %d of the backlog's tasks were left when the delayed ones ran"):format(left))
  end)

  it("retries with back-off until it succeeds, and fails when attempts run out", function()
    tdb.channel("c1")
    local ok_id = tdb.enqueue("c1", 1, { pipeline = "flaky", payload = { succeed_on = 3 }, max_attempts = 3 })[1]
    local bad_id = tdb.enqueue("c1", 1, { pipeline = "flaky", payload = { succeed_on = 9 }, max_attempts = 2 })[1]
    local p = worker("w1", { VG_RETRY_BASE = "0.2" })
    assert.is_true(tdb.eventually(function()
      return status_of(ok_id) == "completed" and status_of(bad_id) == "failed"
    end, 60))
    local r = stop(p)
    assert.equal(3, tdb.count("SELECT count(*) FROM test_executions WHERE task_id = $1", ok_id))
    assert.equal(2, tdb.count("SELECT count(*) FROM test_executions WHERE task_id = $1", bad_id))
    local row = db.query("SELECT last_error FROM tasks WHERE id = $1", bad_id)[1]
    assert.matches("not yet", row.last_error)
    local lines = host.lines(r.stdout)
    assert.is_not_nil(host.find(lines, "task_retry"))
  end)

  it("fails bad payloads, unknown pipelines and fatal errors at once, and carries on", function()
    tdb.channel("c1")
    local bad = tdb.enqueue("c1", 1, { pipeline = "strict", payload = { title = 42 } })[1]
    local unknown = tdb.enqueue("c1", 1, { pipeline = "no_such_pipeline" })[1]
    local fatal = tdb.enqueue("c1", 1, { pipeline = "fatal", max_attempts = 5 })[1]
    local arr = db.query([[INSERT INTO tasks (channel_id, pipeline, payload) VALUES ('c1', 'strict', '[1,2]')
                           RETURNING id]])[1].id
    local good = tdb.enqueue("c1", 1, { pipeline = "record" })[1]
    local p = worker("w1")
    assert.is_true(tdb.eventually(function() return status_of(good) == "completed" end, 30))
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'failed'") == 4
    end, 30))
    stop(p)
    local function err(id) return db.query("SELECT last_error, attempts FROM tasks WHERE id = $1", id)[1] end
    assert.matches("invalid payload: .*title must be a string", err(bad).last_error)
    assert.matches('unknown pipeline "no_such_pipeline"', err(unknown).last_error)
    assert.matches("this can never work", err(fatal).last_error)
    assert.equal(1, err(fatal).attempts)
    assert.matches("payload must be a JSON object", err(arr).last_error)
  end)

  it("puts the task id on every line logged while the task runs", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "chatty" })[1]
    local p = worker("w1")
    assert.is_true(tdb.eventually(function() return status_of(id) == "completed" end, 20))
    local lines = host.lines(stop(p).stdout)
    for _, ev in ipairs { "task_claimed", "step_started", "deep_line", "spawned_line", "task_completed" } do
      local l = host.find(lines, ev)
      assert.is_not_nil(l, ev)
      assert.equal(id, l.correlation_id, ev)
    end
    assert.is_nil(host.find(lines, "worker_heartbeat") and host.find(lines, "worker_heartbeat").correlation_id)
  end)

  it("starts during a PostgreSQL restart: waits for the server instead of exiting 1", function()
    local pgdir = os.getenv("PGTMP_DIR")
    if not pgdir then return pending("needs the throw-away cluster (PGTMP_DIR)") end
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "record" })[1]
    local restart = require("vg.proc").spawn({ "sh", "tests/pgtmp.sh", "restart", pgdir })
    local env = tdb.worker_env { WORKER_ID = "early", VG_DB_CONNECT_TIMEOUT = "60" }
    local p = host.spawn({ "lua/worker.lua" }, { env = env })
    procs[#procs + 1] = p
    assert.equal(0, restart:wait(60).code)
    assert.truthy(host.wait_event(p, "database_connected", 60), "the worker did not connect")
    local done = tdb.eventually(function()
      local ok, st = pcall(status_of, id)
      return ok and st == "completed"
    end, 60)
    local r = stop(p)
    assert.is_true(done, "the task did not complete; the worker logged: " .. r.stdout:sub(-3000))
    assert.equal(0, r.code, r.stdout:sub(-2000))
  end)

  it("survives a PostgreSQL restart in the middle of a run", function()
    local pgdir = os.getenv("PGTMP_DIR")
    if not pgdir then return pending("needs the throw-away cluster (PGTMP_DIR)") end
    tdb.channel("c1")
    tdb.channel("c2")
    tdb.enqueue("c1", 150, { pipeline = "record", payload = { sleep = 0.02 } })
    tdb.enqueue("c2", 150, { pipeline = "record", payload = { sleep = 0.02 } })
    -- A claim whose answer the restart cut off leaves its task to its lease:
    -- a short one here, so such a task runs again within the spec's wait.
    local short = { VG_CONCURRENCY = "2", VG_LEASE_SECONDS = "10" }
    local ws = { worker("w1", short), worker("w2", short) }
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") >= 20
    end, 30))
    local r = require("vg.proc").run({ "sh", "tests/pgtmp.sh", "restart", pgdir }, { timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    local done = tdb.eventually(function()
      local ok, n = pcall(tdb.count, "SELECT count(*) FROM tasks WHERE status = 'completed'")
      return ok and n == 300
    end, 240, 0.5)
    if not done then
      -- Say where the rest are, and what the workers said, in the failure.
      local lines = { "not every task completed after the restart" }
      for _, row in ipairs(db.query([[SELECT status, count(*)::int AS n, max(last_error) AS err,
                                             min(lease_expires_at) AS lease FROM tasks GROUP BY 1]])) do
        lines[#lines + 1] = string.format("%s: %d (%s, lease %s)", row.status, row.n, tostring(row.err), tostring(row.lease))
      end
      for _, row in ipairs(db.query([[SELECT pid, state, wait_event_type, wait_event, backend_start::text,
                                             left(query, 60) AS query FROM pg_stat_activity
                                       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()]])) do
        lines[#lines + 1] = string.format("backend %d %s %s/%s since %s: %s", row.pid, tostring(row.state),
          tostring(row.wait_event_type), tostring(row.wait_event), row.backend_start, tostring(row.query))
      end
      -- The tasks still held, and every line each worker logged about
      -- them or about the database, then the end of its output.
      local held = {}
      for _, row in ipairs(db.query("SELECT id FROM tasks WHERE status IN ('claimed', 'processing')")) do
        held[#held + 1] = row.id
      end
      lines[#lines + 1] = "held: " .. table.concat(held, ", ")
      for i, p in ipairs(ws) do
        local out = stop(p).stdout
        local said = {}
        for line in out:gmatch("[^\n]+") do
          local cid = tonumber(line:match('"correlation_id":(%d+)'))
          local about_held = false
          for _, id in ipairs(held) do if cid == id then about_held = true end end
          if about_held or line:find('"level":"warning"') or line:find('"level":"error"')
             or line:find('"event":"db_') or line:find('"event":"database_') then
            said[#said + 1] = line:sub(1, 400)
          end
        end
        lines[#lines + 1] = string.format("worker w%d about the held tasks and the database:\n%s",
                                          i, table.concat(said, "\n", math.max(1, #said - 60)))
        lines[#lines + 1] = string.format("worker w%d output ends:\n%s", i, out:sub(-1500))
      end
      error(table.concat(lines, "\n"))
    end
    for _, p in ipairs(ws) do assert.equal(0, stop(p).code) end
    -- nothing ran twice except tasks whose outcome could not be recorded
    -- while the server was down (they are retried, never lost)
    assert.equal(300, tdb.count("SELECT count(DISTINCT task_id) FROM test_executions"))
  end)
end)
