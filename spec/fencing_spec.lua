-- At most one run of a task at a time, under the faults that break it in
-- real life (docs/fencing.md): a SIGKILLed owner with a step and its child
-- running, the LISTEN session terminated, a role with idle_session_timeout,
-- renewals that fail, a partition from PostgreSQL, a step that never yields,
-- and a pool too small for the slots.
--
-- Each run is judged from the step command's own record: the step and a
-- child of its, in one process group, append "task pid nanoseconds" to a
-- file every 50 ms while they live (spec/support/test_pipelines.lua,
-- "ticker"). Two runs of a task overlap when one ticks after the other's
-- first tick. Time bounds are generous; the tight figures are measured by
-- make chaos.
local vg = require "vg"
local proc = require "vg.proc"
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local ticks = require "spec.support.ticks"
local proxy = require "spec.support.proxy"

local describe_db = tdb.available() and describe or pending

-- Fails when two runs of a task were alive at the same time.
local function assert_no_overlap(path)
  local runs = ticks.runs(path)
  local o = ticks.overlaps(runs)[1]
  assert(o == nil, o and string.format("task %d: a run (pid %s) started while the one before it "
    .. "(pid %s) still ran (overlap %.3f s)", o.task, o.pids[2], o.pids[1], o.seconds))
  return runs
end

-- Every process of a process group (pgid) is gone (a zombie, dead and
-- waiting for its new parent to reap it, counts as gone).
local function group_gone(pgid)
  local r = proc.run({ "ps", "-e", "-o", "pgid=,stat=" })
  for line in r.stdout:gmatch("[^\n]+") do
    local g, stat = line:match("^%s*(%d+)%s+(%S+)")
    if g == tostring(pgid) and stat:sub(1, 1) ~= "Z" then return false end
  end
  return true
end

describe_db("fencing", function()
  local db
  local procs = {}
  local tick_file

  setup(function()
    db = tdb.setup()
    -- Roles for the faults that need a worker of its own login.
    db.query([[DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vg_owner') THEN
        CREATE ROLE vg_owner LOGIN SUPERUSER; END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vg_idle') THEN
        CREATE ROLE vg_idle LOGIN SUPERUSER; END IF;
    END $$]])
    db.query("ALTER ROLE vg_idle SET idle_session_timeout = '2s'")
  end)
  before_each(function()
    tdb.reset()
    db.query("ALTER ROLE vg_owner LOGIN")
    tick_file = os.tmpname()
  end)
  after_each(function()
    for _, p in ipairs(procs) do if p:running() then p:kill("KILL"); p:wait(10) end end
    procs = {}
    os.remove(tick_file)
    db.query("ALTER ROLE vg_owner LOGIN")
    db.query("DROP TRIGGER IF EXISTS test_claim_gate ON tasks")
    proxy.cleanup()
    host.cleanup()
  end)

  local function as_role(role)
    return (tdb.url:gsub("//postgres@", "//" .. role .. "@"))
  end

  local function worker(name, extra)
    local env = tdb.worker_env(extra)
    env.WORKER_ID = name
    local p = host.spawn({ "lua/worker.lua" }, { env = env })
    procs[#procs + 1] = p
    assert.truthy(host.wait_event(p, "worker_started"), "worker " .. name .. " did not start")
    return p
  end

  local function enqueue_ticker(ticks)
    return tdb.enqueue("c1", 1, { pipeline = "ticker", payload = { log = tick_file, ticks = ticks } })[1]
  end

  local function task_row(id)
    return db.query("SELECT status, attempts, last_error FROM tasks WHERE id = $1", id)[1]
  end

  local function wait_ticking(id)
    assert.is_true(tdb.eventually(function()
      local r = ticks.runs(tick_file)[id]
      return r ~= nil and r[1].n >= 2
    end, 30), "the step did not start")
  end

  local function wait_status(id, status, timeout)
    assert.is_true(tdb.eventually(function() return task_row(id).status == status end, timeout or 60),
                   "task did not become " .. status .. " (is " .. task_row(id).status .. ")")
  end

  it("kills the step and its child with a SIGKILLed worker; another worker reruns it after", function()
    tdb.channel("c1")
    local id = enqueue_ticker(400)
    local victim = worker("victim")
    wait_ticking(id)
    local survivor = worker("survivor")
    local pgid = ticks.runs(tick_file)[id][1].pid
    victim:kill("KILL")
    victim:wait(10)
    local killed = vg.now()
    -- The guard kills the group as soon as the worker is gone.
    assert.is_true(tdb.eventually(function() return group_gone(pgid) end, 10, 0.05),
                   "the step's process group outlived its worker")
    print(string.format("# step group gone %.2f s after SIGKILL", vg.now() - killed))
    wait_status(id, "completed", 90)
    local runs = assert_no_overlap(tick_file)[id]
    assert.equal(2, #runs)
    local ex = db.query("SELECT worker_id FROM test_executions WHERE task_id = $1", id)
    assert.equal(1, #ex)
    assert.equal("survivor", ex[1].worker_id)
    survivor:kill("TERM")
    assert.equal(0, survivor:wait(60).code)
  end)

  it("keeps running a task when its LISTEN session is terminated; nobody rescues it", function()
    tdb.channel("c1")
    local id = enqueue_ticker(100) -- about 5 s
    local owner = worker("owner")
    local peer = worker("peer")
    wait_ticking(id)
    local killed = db.query([[SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
                               WHERE backend_type = 'client backend' AND query ILIKE 'LISTEN%'
                                 AND pid <> pg_backend_pid()]])[1].n
    assert.is_true(killed >= 1)
    wait_status(id, "completed", 60)
    local runs = assert_no_overlap(tick_file)[id]
    assert.equal(1, #runs)
    assert.equal(1, task_row(id).attempts)
    for _, p in ipairs { owner, peer } do p:kill("TERM") end
    local owner_out, peer_out = owner:wait(60).stdout, peer:wait(60).stdout
    local out = owner_out .. peer_out
    assert.is_nil(out:find('"event":"task_rescued"', 1, true))
    assert.is_nil(out:find('"event":"task_fenced"', 1, true))
    -- The heartbeat says whether the liveness is held: it was while the
    -- task ran (one in flight), on whichever worker claimed it.
    local held = false
    for _, l in ipairs(host.lines(owner_out .. peer_out)) do
      if l.event == "worker_heartbeat" and l.in_flight == 1 then
        assert.equal("held", l.liveness)
        held = true
      end
    end
    assert.is_true(held, "no heartbeat while the task ran")
  end)

  it("runs a task once on a role whose idle sessions the server ends after 2 s", function()
    tdb.channel("c1")
    local id = enqueue_ticker(120) -- about 6 s
    local owner = worker("owner", { DATABASE_URL = as_role("vg_idle"), VG_POLL_INTERVAL = "3" })
    local peer = worker("peer")
    wait_status(id, "completed", 60)
    local runs = assert_no_overlap(tick_file)[id]
    assert.equal(1, #runs)
    -- The role's idle sessions really were ended meanwhile, and the worker
    -- still took the next task.
    local id2 = enqueue_ticker(2)
    wait_status(id2, "completed", 60)
    owner:kill("TERM")
    peer:kill("TERM")
    local out = owner:wait(60).stdout
    peer:wait(60)
    assert.is_nil(out:find('"event":"task_fenced"', 1, true))
  end)

  it("stops its step when renewals fail (role NOLOGIN, backends ended) before another worker takes it", function()
    tdb.channel("c1")
    local id = enqueue_ticker(400) -- 20 s unless stopped
    local owner = worker("owner", { DATABASE_URL = as_role("vg_owner") })
    wait_ticking(id)
    local peer = worker("peer")
    db.query("ALTER ROLE vg_owner NOLOGIN")
    db.query([[SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'vg_owner']])
    assert.truthy(host.wait_event(owner, "task_fenced", 30), "the owner did not fence its task")
    wait_status(id, "completed", 90)
    local runs = assert_no_overlap(tick_file)[id]
    assert.equal(2, #runs)
    assert.equal("peer", db.query("SELECT worker_id FROM test_executions WHERE task_id = $1", id)[1].worker_id)
    peer:kill("TERM")
    assert.equal(0, peer:wait(60).code)
  end)

  it("stops its step when a partition cuts it off, and its late writes are refused", function()
    tdb.channel("c1")
    local px = proxy.start()
    local id = enqueue_ticker(300) -- 15 s unless stopped
    local owner = worker("owner", { DATABASE_URL = px.url })
    wait_ticking(id)
    local peer = worker("peer")
    -- The partition: the proxy and every connection it forwards stop
    -- moving bytes (SIGSTOP to its process group); connections stay open.
    px:stop()
    assert.truthy(host.wait_event(owner, "task_fenced", 30), "the owner did not fence its task")
    wait_status(id, "processing", 30)
    vg.sleep(8, { interruptible = false }) -- a partition of about ten seconds
    px:cont()
    wait_status(id, "completed", 90)
    local runs = assert_no_overlap(tick_file)[id]
    assert.equal(2, #runs)
    assert.equal("peer", db.query("SELECT worker_id FROM test_executions WHERE task_id = $1", id)[1].worker_id)
    owner:kill("TERM")
    peer:kill("TERM")
    assert.equal(0, owner:wait(60).code)
    assert.equal(0, peer:wait(60).code)
  end)

  -- From here on, a statement that claims a task waits on the server, in a
  -- trigger of this spec's, for an advisory lock the spec holds. Returns
  -- the function that lets the claims go (and removes nothing: after_each
  -- drops the trigger).
  local function gate_claims()
    db.query([[CREATE OR REPLACE FUNCTION test_claim_gate() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$]])
    db.query([[CREATE TRIGGER test_claim_gate BEFORE UPDATE ON tasks FOR EACH ROW
               WHEN (NEW.status = 'claimed' AND OLD.status <> 'claimed')
               EXECUTE FUNCTION test_claim_gate()]])
    local locked, unlock = vg.event(), vg.event()
    local lock = vg.spawn(function()
      db.transaction(function(tx)
        tx:query("SELECT pg_advisory_xact_lock(4242)")
        locked:set()
        unlock:wait(nil, { interruptible = false })
      end)
    end)
    assert.is_true(locked:wait(30))
    return function()
      unlock:set()
      lock:join()
    end
  end

  -- A statement of the worker's (its text matching like) waits on the gate.
  local function wait_gated(like, what)
    assert.is_true(tdb.eventually(function()
      return tdb.count([[SELECT count(*) FROM pg_stat_activity
                          WHERE wait_event = 'advisory' AND query LIKE $1]], like) == 1
    end, 30), what .. " did not reach the server")
  end

  -- The worker gave back id itself, as a task whose claim answer was lost
  -- (its lease, 600 s, and its liveness, held by the other step, would keep
  -- it claimed otherwise), ran it once, attempt kept, and exits 0.
  local function assert_given_back(w, id)
    wait_status(id, "completed", 60)
    assert.equal(1, task_row(id).attempts)
    assert.equal(1, #assert_no_overlap(tick_file)[id])
    w:kill("TERM")
    local r = w:wait(60)
    assert.equal(0, r.code)
    local released = host.find(host.lines(r.stdout), "tasks_released")
    assert.truthy(released, "no tasks_released line")
    assert.same({ id }, released.task_ids)
  end

  -- A worker of two slots through a proxy, one slot busy with a step that
  -- keeps the worker's liveness held (so nothing but the worker itself
  -- gives a lost claim's task back before its lease).
  local function worker_holding()
    tdb.channel("c1")
    local px = proxy.start()
    local holder = enqueue_ticker(2000)
    local w = worker("w", { DATABASE_URL = px.url, VG_CONCURRENCY = "2", VG_LEASE_SECONDS = "600",
                            VG_SHUTDOWN_GRACE = "1" })
    wait_ticking(holder)
    return px, w
  end

  -- A task queued while the claims are gated; the worker's statement that
  -- claims it (its text matching like) waits on the gate, its connection
  -- dies while the server still runs it, then the gate opens and the
  -- server commits a claim whose answer nobody reads. Returns the task.
  local function lose_claim_answer(px, like, what)
    local unlock = gate_claims()
    local id = enqueue_ticker(2)
    wait_gated(like, what)
    px:kill()
    px:up()
    unlock()
    return id
  end

  it("gives back at once a task whose claim answer was lost, its attempt kept", function()
    local px, w = worker_holding()
    local id = lose_claim_answer(px, "%claimed%", "the claim")
    assert_given_back(w, id)
  end)

  it("gives back at once a task claimed with a complete whose answer was lost", function()
    local px, w = worker_holding()
    -- The second slot runs a task of about 5 s; the next task is queued
    -- while both slots are busy, so that slot claims it with its complete
    -- (queue.COMPLETE_CLAIM_SQL, the only statement with a "done" part).
    local first = enqueue_ticker(100)
    wait_ticking(first)
    local id = lose_claim_answer(px, "%done AS%claimed%", "the complete with the next claim")
    -- The first task's completion committed with the claim.
    wait_status(first, "completed", 60)
    assert.equal(1, task_row(first).attempts)
    assert.equal(1, #assert_no_overlap(tick_file)[first])
    assert_given_back(w, id)
  end)

  it("ends a step that never yields at the slice; heartbeats go on and SIGTERM is honoured", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1, { pipeline = "spin", max_attempts = 5 })[1]
    local p = worker("spinner", { VG_TASK_SLICE = "1", VG_HEARTBEAT_INTERVAL = "0.5" })
    assert.truthy(host.wait_event(p, "task_slice_exceeded", 30))
    -- The attempt failed (retried later), and the worker is alive: its
    -- heartbeat goes on while the retried task spins again.
    assert.is_true(tdb.eventually(function() return task_row(id).status == "retry" end, 30))
    assert.matches("slice_exceeded", task_row(id).last_error)
    p:kill("TERM")
    local r = p:wait(30)
    assert.is_not_nil(r, "SIGTERM was not honoured")
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    local _, i_slice = host.find(lines, "task_slice_exceeded")
    local beats_after = 0
    for i = i_slice + 1, #lines do
      if lines[i].event == "worker_heartbeat" then beats_after = beats_after + 1 end
    end
    assert.is_true(beats_after >= 1)
    assert.equal("worker_shutdown", lines[#lines].event)
  end)

  it("spends no attempt on a pool too small for its slots", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 60, { pipeline = "record", payload = { sleep = 0.3 }, max_attempts = 1 })
    local p = worker("tight", { VG_CONCURRENCY = "40", VG_DB_POOL_SIZE = "1",
                                VG_DB_MAX_OVERFLOW = "1", VG_DB_POOL_TIMEOUT = "0.5" })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 60
    end, 120, 0.25), "not every task completed: "
      .. tostring(tdb.count("SELECT count(*) FROM tasks WHERE status = 'failed'")) .. " failed")
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks WHERE attempts > 1"))
    p:kill("TERM")
    assert.equal(0, p:wait(60).code)
  end)
end)
