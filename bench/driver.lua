-- bench/driver.lua: the benchmark driver (issue 6, DESIGN section 8), run by
-- bench/run.sh under vg-host, which has created, migrated and handed over an
-- empty database (BENCH_URL). It starts real workers (lua/worker.lua) and
-- pgbench, measures them, prints the tables (markdown) to stdout and writes
-- every figure as JSON to BENCH_OUT. BENCH_PARTS says what runs: main (this
-- file's measurements), scale and claims (the matrices, bench/scale.lua).
--
-- What the main part measures (see bench/README.md for the method):
--   raw       the queue's own claim and complete SQL (vg.queue CLAIM_SQL and
--             COMPLETE_SQL, turned into pgbench scripts here, so they never
--             drift) at 1 and 10 clients, one task per claim and 10 per claim;
--             and the plain FIFO SKIP LOCKED claim a user writes by hand
--   throughput  noop tasks queued beforehand, workers started; rate from the
--             database's timestamps: completed / (max(completed_at) -
--             min(claimed_at)); CPU of the workers and of PostgreSQL
--   pickup    idle workers, one task enqueued at a time: claimed_at - created_at
--   delayed   tasks with run_at 0.3-0.93 s ahead: claimed_at - run_at
--   idle      one worker for BENCH_IDLE_SECONDS: CPU, RSS, statements, conns
--   start/stop  process start to worker_started, to database_connected, to
--             its first claim; SIGTERM to exit when idle
--
-- Every query of this driver carries the comment /* vg-bench */, so that
-- pg_stat_statements deltas count only what the workers (or pgbench) sent.
local vg = require "vg"
local proc = require "vg.proc"
local cjson = require "cjson"
local queue = require "vg.queue"
local report = require "report"   -- bench/report.lua
local C = require "common"        -- bench/common.lua
local scale = require "scale"     -- bench/scale.lua

local TMP, VG_HOST, PGBENCH, PGBENCH_MODE = C.TMP, C.VG_HOST, C.PGBENCH, C.PGBENCH_MODE
local SMOKE, TAP, OUT = C.SMOKE, C.TAP, C.OUT
local num_env, say, tap, read_file, write_file = C.num_env, C.say, C.tap, C.read_file, C.write_file
local round, pct, median, nap, err_text = C.round, C.pct, C.median, C.nap, C.err_text
local q, q1, pgss_delta = C.q, C.q1, C.pgss_delta
local cpu_seconds, memory_kb, pg_cpu, driver_backends = C.cpu_seconds, C.memory_kb, C.pg_cpu, C.driver_backends
local pgss_snapshot, xact_count = C.pgss_snapshot, C.xact_count
local stop, stop_all, spawn_worker, wait_line = C.stop, C.stop_all, C.spawn_worker, C.wait_line
local sql_params = C.sql_params

-- Sizes: the full run (make bench) and the smoke run (make test).
local P = {
  tasks = math.floor(num_env("BENCH_TASKS", SMOKE and 200 or 20000)),
  channels = math.floor(num_env("BENCH_CHANNELS", 10)),
  batch = 10,                      -- tasks per claim in the batched raw runs
  -- VG_CONCURRENCY of the batched worker run: batch mode claims up to half
  -- of it per statement, so one claim overlaps the previous batch's finish.
  batch_concurrency = math.floor(num_env("BENCH_BATCH_CONCURRENCY", SMOKE and 20 or 1000)),
  run_limit = num_env("BENCH_RUN_SECONDS", 10),
  repeat_runs = math.floor(num_env("BENCH_REPEAT", SMOKE and 1 or 3)),
  pickups = math.floor(num_env("BENCH_PICKUPS", SMOKE and 10 or 200)),
  pickup_gap = 0.03,               -- seconds between a pickup and the next enqueue
  delayed_rounds = SMOKE and 1 or 5,
  delayed_per_round = SMOKE and 4 or 10,
  idle_seconds = num_env("BENCH_IDLE_SECONDS", SMOKE and 3 or 30),
  startstop_reps = SMOKE and 1 or 5,
  scrapes = math.floor(num_env("BENCH_SCRAPES", SMOKE and 3 or 30)),  -- /metrics, one a second
}

-- ---------------------------------------------------------------- queue state

-- An empty queue with P.channels channels and n noop tasks due now,
-- analysed (as autovacuum would have done) and checkpointed, so every run
-- starts from the same state.
local function seed(n)
  q([[TRUNCATE channels, tasks, task_steps, videos, video_costs, audit_logs, workers
      RESTART IDENTITY CASCADE]])
  q([[INSERT INTO channels (id, name)
      SELECT 'bench-' || i, 'bench ' || i FROM generate_series(0, $1::int - 1) i]], P.channels)
  if n > 0 then
    q([[INSERT INTO tasks (channel_id, pipeline, payload)
        SELECT 'bench-' || (i % $1::int), 'noop', '{}' FROM generate_series(1, $2::int) i]],
      P.channels, n)
  end
  q("VACUUM ANALYZE tasks")
  q("VACUUM ANALYZE channels")
  q("CHECKPOINT")
end

local function remaining()
  return q1([[SELECT count(*)::bigint AS n FROM tasks
              WHERE status IN ('pending', 'retry', 'approved', 'claimed', 'processing')]]).n
end

-- ---------------------------------------------------------------- raw limit (pgbench)

-- The pgbench scripts, made from vg.queue's SQL so that they cannot drift.
local function pgbench_scripts()
  -- Single: what an unbatched slot sends while it goes from task to task,
  -- COMPLETE_CLAIM_SQL: complete the task claimed by the transaction
  -- before (none in the first: id 0, pgbench -D) and claim the next, whose
  -- id and token the final SELECT also gives as numbers (0 when nothing was
  -- claimed, which \aset would otherwise keep as an empty string).
  local ctail = "SELECT %(SELECT count%(%*%) FROM done%)::int AS completed, claimed%.%*"
  local combined = queue.COMPLETE_CLAIM_SQL
  assert(combined:find(ctail), "COMPLETE_CLAIM_SQL's final SELECT changed; update bench/driver.lua")
  combined = combined:gsub(ctail, "%0, coalesce(claimed.id, 0) AS next_id, "
    .. "coalesce(claimed.lease_token, 0) AS next_token")
  local single = sql_params(combined, { ":worker", ":instance", ":lease", ":n", ":next_id", ":next_token",
                                        ":result" }):gsub("%s*;?%s*$", "") .. " \\aset\n"

  -- Batched: what a worker with VG_BATCH=on sends: CLAIM_MANY_SQL with
  -- $4 = 10, its rows gathered into one JSON value (the final SELECT is the
  -- only change), then COMPLETE_MANY_SQL for them.
  local tail_pat = "SELECT %* FROM claimed%s*;?%s*$"
  local bclaim = C.claim_sql(queue.CLAIM_MANY_SQL)
  assert(bclaim:find(tail_pat), "CLAIM_MANY_SQL no longer ends with SELECT * FROM claimed; update bench/driver.lua")
  bclaim = bclaim:gsub(tail_pat,
    "SELECT coalesce(json_agg(json_build_array(id, lease_token, :result::jsonb)), '[]')::text AS batch FROM claimed")
  local batched = C.pgbench_script(bclaim, sql_params(queue.COMPLETE_MANY_SQL, { ":batch" }))
  write_file(TMP .. "/raw_single.sql", single)
  write_file(TMP .. "/raw_batched.sql", batched)
  return TMP .. "/raw_single.sql", TMP .. "/raw_batched.sql"
end

local results = { raw = {}, throughput = {}, errors = {} }

-- What runs (BENCH_PARTS, set by bench/run.sh): main (the main table),
-- scale (the scale matrix, bench/scale.lua), claims (the claim matrix).
local PARTS = {}
for p in (os.getenv("BENCH_PARTS") or "main scale"):gmatch("%S+") do PARTS[p] = true end
results.parts = {}
for _, p in ipairs({ "main", "scale", "claims" }) do
  if PARTS[p] then results.parts[#results.parts + 1] = p end
end

-- Runs are repeated (P.repeat_runs) and the best kept: the machine may be
-- shared, and interference only ever makes a run slower. Every run is kept
-- in .runs.
local function keep(tbl, name, res)
  local best = tbl[name]
  local runs = best and best.runs or {}
  local copy = {}
  for k, v in pairs(res) do copy[k] = v end
  runs[#runs + 1] = copy
  if not best or (res.tasks_per_s or 0) > (best.tasks_per_s or 0) then best = res end
  best.runs = runs
  tbl[name] = best
end

local function run_raw(name, clients, per_claim, script)
  seed(P.tasks)
  say("raw %s: pgbench, %d client(s), %d task(s) per claim", name, clients, per_claim)
  local res, check = C.run_pgbench { clients = clients, per_claim = per_claim, script = script,
    per_client = math.max(1, P.tasks // (per_claim * clients)), timeout = P.run_limit }
  res.name = name
  keep(results.raw, name, res)
  check()
  return res
end

-- ---------------------------------------------------------------- throughput (workers)

local function run_workers(name, n_workers, concurrency, batch)
  seed(P.tasks)
  say("throughput %s: %d worker(s), VG_CONCURRENCY=%d, VG_BATCH=%s, %d tasks queued",
    name, n_workers, concurrency, batch and "on" or "off", P.tasks)
  local res, check = C.run_workers { name = name, n = n_workers, limit = P.run_limit,
    env = { VG_CONCURRENCY = tostring(concurrency), VG_BATCH = batch and "on" or "off" },
    finished = function() return remaining() == 0 end }
  res.name, res.concurrency, res.batch, res.tasks_queued = name, concurrency, batch, P.tasks
  keep(results.throughput, name, res)
  check()
  return res
end

-- ---------------------------------------------------------------- pickup and delayed

local function wait_claimed(id, timeout)
  local deadline = vg.now() + timeout
  while true do
    local r = q1("SELECT claimed_at IS NOT NULL AS c FROM tasks WHERE id = $1", id)
    if r and r.c then return true end
    if vg.now() >= deadline then return false end
    nap(0.005)
  end
end

local function ms_list(rows)
  local l = {}
  for _, r in ipairs(rows) do l[#l + 1] = r.ms end
  return l
end

local function run_pickup(ps)
  say("pickup: %d tasks enqueued one at a time, 2 idle workers", P.pickups)
  local insert_ms, late, committed = {}, 0, {}
  for i = 1, P.pickups do
    local t0 = vg.now()
    local id = q1([[INSERT INTO tasks (channel_id, pipeline, payload)
                    VALUES ($1, 'noop', '{"pickup": true}') RETURNING id]],
                  "bench-" .. (i % P.channels)).id
    -- When the enqueuer saw its COMMIT done (wall clock, the same clock as
    -- the server's on this machine): the notification leaves at that commit.
    committed[id] = vg.time()
    insert_ms[#insert_ms + 1] = (vg.now() - t0) * 1000
    nap(P.pickup_gap)
    if not wait_claimed(id, 10) then late = late + 1 end
  end
  local rows = q([[SELECT id, (extract(epoch FROM claimed_at - created_at) * 1000)::float8 AS ms,
                          extract(epoch FROM claimed_at)::float8 AS claimed
                     FROM tasks WHERE payload ? 'pickup' AND claimed_at IS NOT NULL]])
  local l, after_commit = ms_list(rows), {}
  for _, r in ipairs(rows) do
    if committed[r.id] then after_commit[#after_commit + 1] = (r.claimed - committed[r.id]) * 1000 end
  end
  local res = { n = #l, enqueued = P.pickups, not_picked_up_in_10s = late,
    p50_ms = round(pct(l, 50)), p95_ms = round(pct(l, 95)), p99_ms = round(pct(l, 99)),
    max_ms = round(pct(l, 100)), enqueue_roundtrip_p50_ms = round(median(insert_ms)),
    after_commit_p50_ms = round(pct(after_commit, 50)), after_commit_p95_ms = round(pct(after_commit, 95)),
    after_commit_p99_ms = round(pct(after_commit, 99)),
    definition = "claimed_at - created_at (both now() in the database: the start of the claim "
      .. "and of the enqueuing INSERT's transaction, so the enqueuer's own commit is included); "
      .. "after_commit: claimed_at - the wall-clock time the INSERT returned to the enqueuer" }
  results.pickup = res
  if #l == 0 then error("no task was picked up", 0) end
  return res
end

local function run_delayed()
  local n = P.delayed_per_round
  say("delayed: %d round(s) of %d tasks due 0.3-%.2f s ahead", P.delayed_rounds, n, 0.3 + 0.7 * (n - 1) / n)
  for _ = 1, P.delayed_rounds do
    local rows = q([[
      INSERT INTO tasks (channel_id, pipeline, payload, run_at)
      SELECT 'bench-' || (i % $1::int), 'noop', '{"delayed": true}',
             now() + make_interval(secs => 0.3 + 0.7 * i / $2::float8)
        FROM generate_series(0, $2::int - 1) i
      RETURNING id]], P.channels, n)
    nap(0.3 + 0.7 * (n - 1) / n)
    for _, r in ipairs(rows) do wait_claimed(r.id, 5) end
  end
  local l = ms_list(q([[SELECT (extract(epoch FROM claimed_at - run_at) * 1000)::float8 AS ms
                          FROM tasks WHERE payload ? 'delayed' AND claimed_at IS NOT NULL]]))
  local total = q1("SELECT count(*)::bigint AS n FROM tasks WHERE payload ? 'delayed'").n
  local res = { n = #l, enqueued = total, p50_ms = round(pct(l, 50)), p95_ms = round(pct(l, 95)),
                max_ms = round(pct(l, 100)) }
  results.delayed = res
  if #l == 0 then error("no delayed task started", 0) end
  return res
end

-- ---------------------------------------------------------------- idle

-- A free TCP port on 127.0.0.1 (bound, then released).
local function free_port()
  local srv = require("vg.http").serve { port = 0, routes = {} }
  local port = srv.port()
  srv.close()
  srv.task:join()
  return port
end

-- key: where the result goes (results[key]); extra: the worker's settings.
local function run_idle(key, extra)
  key = key or "idle"
  seed(0)
  say("%s: one worker for %s s", key, P.idle_seconds)
  local env = { WORKER_ID = "bench-idle" }
  for k, v in pairs(extra or {}) do env[k] = v end
  local p = spawn_worker(env)
  wait_line(p, "database_connected")
  nap(1.5) -- its start-up statements are not idle cost
  local pid = p:pid()
  local c0, s0, x0 = cpu_seconds(pid), pgss_snapshot(), xact_count()
  local pg0 = pg_cpu(driver_backends())
  local t0 = vg.now()
  nap(P.idle_seconds)
  local t1 = vg.now()
  local c1, s1, x1 = cpu_seconds(pid), pgss_snapshot(), xact_count()
  local pg1 = pg_cpu(driver_backends())
  local rss, hwm, pss, private = memory_kb(pid)
  local conns = q1([[SELECT count(*)::bigint AS n FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name <> $1
                       AND backend_type = 'client backend']], C.DRIVER_APP).n
  local alive = p:running()
  stop(p)
  local secs = t1 - t0
  local res = { seconds = round(secs, 3), cpu_s = round(c1 - c0, 5),
    cpu_s_per_30s = round((c1 - c0) * 30 / secs, 5), rss_kb = rss, peak_rss_kb = hwm,
    pss_kb = pss, private_kb = private,
    server_connections = conns,
    pg_cpu_s_per_30s = (pg0 and pg1) and round((pg1 - pg0) * 30 / secs, 3) or nil }
  local st = pgss_delta(s0, s1)
  if st then
    res.statements_method = "pg_stat_statements"
    res.statements_per_s = round(st.total / secs, 3)
    res.statements = {}
    for _, e in ipairs(st.by) do
      res.statements[#res.statements + 1] = { statement = e.label, calls = e.calls,
        per_s = round(e.calls / secs, 3) }
    end
  elseif x0 and x1 then
    -- Transactions in the database, less the driver's own between the two
    -- readings (the first reading's, the pgss and CPU queries: about 3).
    res.statements_method = "pg_stat_database xact (approximate)"
    res.statements_per_s = round(math.max(0, x1 - x0 - 3) / secs, 3)
  end
  results[key] = res
  if not alive then error("the idle worker exited", 0) end
  return res
end

-- /metrics latency: a worker with VG_HTTP_PORT works through a backlog of
-- noop tasks while /metrics is scraped once a second (as Prometheus would,
-- with curl's time_total: connect, request, whole answer).
local function run_scrapes()
  seed(P.tasks)
  local port = free_port()
  say("metrics: %d scrapes, one a second, of a busy worker", P.scrapes)
  local p = spawn_worker({ WORKER_ID = "bench-scrape", VG_HTTP_PORT = tostring(port),
                           VG_HTTP_HOST = "127.0.0.1", VG_CONCURRENCY = "10" })
  wait_line(p, "database_connected")
  local ms, busy = {}, 0
  for _ = 1, P.scrapes do
    local r = proc.run({ "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                         "http://127.0.0.1:" .. port .. "/metrics" }, { timeout = 30 })
    local code, t = r.stdout:match("^(%d+) ([%d.]+)$")
    if code ~= "200" then error("a scrape failed: " .. r.stdout .. r.stderr, 0) end
    ms[#ms + 1] = tonumber(t) * 1000
    local left = q1("SELECT count(*)::bigint AS n FROM tasks WHERE status <> 'completed'").n
    if left > 0 then busy = busy + 1 end
    nap(1)
  end
  stop(p)
  table.sort(ms)
  results.scrapes = { n = #ms, busy = busy, p50_ms = round(median(ms), 2), p99_ms = round(pct(ms, 99), 2),
                      max_ms = round(ms[#ms], 2) }
  return results.scrapes
end

-- ---------------------------------------------------------------- start and stop

local function db_connect_ms()
  if PGBENCH == "" then return nil end
  local script = TMP .. "/select1.sql"
  write_file(script, "SELECT 1;\n")
  local r = proc.run({ PGBENCH, "-n", "-C", "-c", "1", "-t", "20", "-f", script, C.URL }, { timeout = 30 })
  return r.code == 0 and tonumber(r.stdout:match("average connection time = ([%d%.]+) ms")) or nil
end

-- The floor under "start to worker_started": the same binary started and
-- ended without a script (vg-host --version): loading it and its shared
-- libraries (libpq's dependency chain is most of them).
local function exec_floor_ms()
  local t = {}
  for i = 1, 5 do
    local t0 = vg.now()
    local r = proc.run({ VG_HOST, "--version" }, { timeout = 10 })
    if r.code ~= 0 then return nil end
    t[i] = (vg.now() - t0) * 1000
  end
  return median(t)
end

local function run_startstop()
  say("start/stop: %d start(s) with one task waiting, then SIGTERM when idle", P.startstop_reps)
  local started, connected, ready, term, codes = {}, {}, {}, {}, {}
  seed(0)
  for rep = 1, P.startstop_reps do
    q("DELETE FROM tasks")
    local id = q1("INSERT INTO tasks (channel_id, pipeline) VALUES ('bench-0', 'noop') RETURNING id").id
    nap(0.2)
    local w0, m0 = vg.time(), vg.now()
    local p = spawn_worker({ WORKER_ID = "bench-start" .. rep })
    wait_line(p, "worker_started")
    started[#started + 1] = (vg.now() - m0) * 1000
    wait_line(p, "database_connected")
    connected[#connected + 1] = (vg.now() - m0) * 1000
    wait_line(p, "task_completed")
    local c = q1("SELECT extract(epoch FROM claimed_at)::float8 AS t FROM tasks WHERE id = $1", id)
    ready[#ready + 1] = (c.t - w0) * 1000
    nap(0.5) -- idle again
    local k0 = vg.now()
    p:kill("TERM")
    local r = p:wait(10)
    if not r then
      stop(p)
      error("the idle worker did not exit within 10 s of SIGTERM", 0)
    end
    term[#term + 1] = (vg.now() - k0) * 1000
    codes[#codes + 1] = r.code
    if r.code ~= 0 then error("the worker exited " .. tostring(r.code) .. " after SIGTERM", 0) end
  end
  local res = { reps = P.startstop_reps,
    to_worker_started_ms = round(median(started), 2),
    to_database_connected_ms = round(median(connected), 2),
    to_ready_to_claim_ms = round(median(ready), 2),
    sigterm_to_exit_ms = round(median(term), 2),
    db_connect_ms = round(db_connect_ms(), 3),
    exec_floor_ms = round(exec_floor_ms(), 2),
    samples = { worker_started = started, database_connected = connected, ready = ready, sigterm = term } }
  for k, l in pairs(res.samples) do
    for i, v in ipairs(l) do l[i] = round(v, 2) end
    res.samples[k] = l
  end
  results.startstop = res
  return res
end

-- ---------------------------------------------------------------- main

local function machine()
  local cpuinfo = read_file("/proc/cpuinfo") or ""
  local load = (read_file("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)")
  local m = { nproc = C.nproc(), cpu = cpuinfo:match("model name%s*:%s*([^\n]+)"), load_average_start = load }
  local ok, v = pcall(q1, "SELECT current_setting('server_version') AS v, current_setting('fsync') AS f, "
                        .. "current_setting('synchronous_commit') AS s")
  if ok then m.postgres, m.fsync, m.synchronous_commit = v.v, v.f, v.s end
  return m
end

local function step(desc, fn)
  local ok, err = xpcall(fn, function(e)
    if type(e) == "string" and not e:find("\n") then return debug.traceback(e, 2) end
    return e
  end)
  stop_all()
  if not ok then
    results.errors[#results.errors + 1] = { step = desc, error = err_text(err) }
  end
  tap(ok, desc, not ok and err_text(err) or nil)
  if vg.shutdown_requested() then error("interrupted by a signal", 0) end
  return ok
end

-- The main table: raw limits, throughput, pickup, delayed, idle, /metrics,
-- start and stop.
local function run_main()
  local single, batched, fifo
  step("pgbench scripts made from vg.queue CLAIM_SQL and COMPLETE_SQL", function()
    single, batched = pgbench_scripts()
    fifo = scale.fifo_script()
  end)
  -- Each worker configuration right after the pgbench run it is compared
  -- with, both repeated, so the pair sees the same machine.
  local order, outcome = {}, {}
  local function attempt(desc, fn)
    local ok, err = xpcall(fn, function(e)
      if type(e) == "string" and not e:find("\n") then return debug.traceback(e, 2) end
      return e
    end)
    stop_all()
    local o = outcome[desc]
    if not o then
      o = {}
      outcome[desc] = o
      order[#order + 1] = desc
    end
    if ok then o.ok = true elseif not o.err then o.err = err end
    if vg.shutdown_requested() then error("interrupted by a signal", 0) end
  end
  local function raw(name, clients, per_claim)
    attempt(string.format("raw limit measured with pgbench (%s)", name), function()
      assert(single, "no pgbench scripts")
      run_raw(name, clients, per_claim, per_claim > 1 and batched or single)
    end)
  end
  -- The plain FIFO claim a user writes by hand, with its own index (only
  -- while it runs: the other runs would pay for keeping it up to date).
  local function raw_fifo(name, clients)
    attempt(string.format("raw limit measured with pgbench (%s)", name), function()
      assert(fifo, "no pgbench scripts")
      q(scale.FIFO_INDEX)
      local ok, err = pcall(run_raw, name, clients, 1, fifo)
      q("DROP INDEX tasks_fifo_idx")
      if not ok then error(err, 0) end
    end)
  end
  local function workers(name, n, conc, batch)
    attempt(string.format("throughput measured (%s%s)", name, batch and ", VG_BATCH=on" or ""), function()
      run_workers(name, n, conc, batch)
    end)
  end
  for _ = 1, P.repeat_runs do
    raw("single-1", 1, 1); workers("1x1", 1, 1, false)
  end
  for _ = 1, P.repeat_runs do
    raw("single-10", 10, 1); raw_fifo("fifo-10", 10); workers("1x10", 1, 10, false)
  end
  for _ = 1, P.repeat_runs do workers("2x10", 2, 10, false) end
  for _ = 1, P.repeat_runs do
    -- The batched worker's own shape: two statements in flight (a claim
    -- and a batch of results), claims of half its slots.
    raw("batched-w", 2, math.max(2, P.batch_concurrency // 2))
    workers("batch", 1, P.batch_concurrency, true)
  end
  -- The issue's reference shape: 10 clients, claims of 10.
  raw("batched-10", 10, P.batch)
  for _, desc in ipairs(order) do
    local o = outcome[desc]
    if not o.ok then results.errors[#results.errors + 1] = { step = desc, error = err_text(o.err) } end
    tap(o.ok == true, desc, (not o.ok) and err_text(o.err) or nil)
  end
  local pickup_workers, delayed_error
  step("pickup latency measured", function()
    seed(0)
    pickup_workers = { spawn_worker({ WORKER_ID = "bench-p1" }), spawn_worker({ WORKER_ID = "bench-p2" }) }
    for _, p in ipairs(pickup_workers) do wait_line(p, "database_connected") end
    nap(1.0)
    run_pickup(pickup_workers)
    -- The same idle workers serve the delayed tasks.
    local ok, e = pcall(run_delayed)
    if not ok then delayed_error = e end
  end)
  step("delayed work measured", function()
    if delayed_error then error(delayed_error, 0) end
    if not results.delayed then error("not measured: the pickup step failed first", 0) end
  end)
  step("idle cost measured", function() return run_idle("idle") end)
  step("idle cost with VG_HTTP_PORT measured", function()
    return run_idle("idle_http", { VG_HTTP_PORT = tostring(free_port()), VG_HTTP_HOST = "127.0.0.1" })
  end)
  step("/metrics latency measured", run_scrapes)
  step("start and stop measured", run_startstop)
end

local function main()
  C.setup()
  results.date = os.date("!%Y-%m-%dT%H:%M:%SZ")
  results.machine = machine()
  results.smoke = SMOKE
  results.lua_dir = C.LUA_DIR
  results.params = P
  results.method = {
    rate = "completed / (max(completed_at) - min(claimed_at)) of the completed tasks, database clock",
    worker_cpu = "schedstat (or utime+stime) of the worker processes at the end of the run, start-up included",
    pg_cpu = "utime+stime delta of the postmaster, its children and reaped children, less the driver's backend",
    pgbench = "pgbench -M " .. PGBENCH_MODE .. " (prepared: generic plans, as the worker sends them; "
      .. "extended: unnamed statements, as with VG_DB_PREPARE=off, which the workers then get too), "
      .. "scripts made from vg.queue's SQL",
  }

  if PARTS.main then run_main() end
  if PARTS.scale then results.scale = scale.run_scale() end
  if PARTS.claims then results.claims = scale.run_claims() end

  local lines, tbl, notes
  lines, tbl, notes, results.targets = report.render(results, P)
  results.table = tbl
  results.notes = notes
  local prefix = TAP and "# " or ""
  for _, l in ipairs(lines) do io.stdout:write(prefix, l, "\n") end
  io.stdout:flush()

  if OUT and OUT ~= "" then
    local ok, err = pcall(function()
      local f = assert(io.open(OUT, "w"))
      f:write(cjson.encode(results), "\n")
      f:close()
    end)
    tap(ok, "figures written to " .. OUT, not ok and tostring(err) or nil)
  end
  if TAP then io.stdout:write("1.." .. C.tap_count() .. "\n") end
  C.pool:close(5)
end

local ok, err = pcall(main)
stop_all()
if not ok then
  io.stderr:write("bench: ", err_text(err), "\n")
  if TAP then io.stdout:write("not ok " .. (C.tap_count() + 1) .. " - benchmark driver\n# " .. err_text(err) .. "\n") end
  os.exit(1)
end
os.exit(C.failures() == 0 and 0 or 1)
