-- bench/driver.lua: the benchmark driver (issue 6, DESIGN section 8), run by
-- bench/run.sh under vg-host, which has created, migrated and handed over an
-- empty database (BENCH_URL). It starts real workers (lua/worker.lua) and
-- pgbench, measures them, prints one table (markdown) to stdout and writes
-- every figure as JSON to BENCH_OUT.
--
-- What it measures (see bench/README.md for the method):
--   raw       the queue's own claim and complete SQL (vg.queue CLAIM_SQL and
--             COMPLETE_SQL, turned into pgbench scripts here, so they never
--             drift) at 1 and 10 clients, one task per claim and 10 per claim
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
local db = require "vg.db"
local proc = require "vg.proc"
local cjson = require "cjson"
local lfs = require "lfs"
local queue = require "vg.queue"
local report = require "report"   -- bench/report.lua

local getenv = os.getenv
local ROOT = assert(getenv("BENCH_ROOT"), "BENCH_ROOT is not set (run bench/run.sh)")
local URL = assert(getenv("BENCH_URL"), "BENCH_URL is not set (run bench/run.sh)")
local TMP = assert(getenv("BENCH_TMP"), "BENCH_TMP is not set (run bench/run.sh)")
local VG_HOST = assert(getenv("BENCH_VG_HOST"), "BENCH_VG_HOST is not set")
local LUA_DIR = getenv("BENCH_LUA_DIR") or (ROOT .. "/lua")
local PGBENCH = getenv("BENCH_PGBENCH") or ""
-- prepared (default): named prepared statements with generic plans, as the
-- worker sends them by default (VG_DB_PREPARE=on); extended: unnamed statements,
-- parsed and planned on every call, as vg.db sends them with
-- VG_DB_PREPARE=off (then the workers of the run get that too).
local PGBENCH_MODE = getenv("BENCH_PGBENCH_MODE") or "prepared"
assert(PGBENCH_MODE == "extended" or PGBENCH_MODE == "prepared" or PGBENCH_MODE == "simple",
       "BENCH_PGBENCH_MODE must be extended, prepared or simple")
local SMOKE = getenv("BENCH_SMOKE") == "1"
local TAP = getenv("BENCH_TAP") == "1"
local OUT = getenv("BENCH_OUT")

local function num_env(name, default)
  local v = tonumber(getenv(name) or "")
  return v or default
end

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

local FERNET_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" -- 32 zero bytes; never used
local DRIVER_APP = "vg-bench-driver"
local MARK = "/* vg-bench */ "

-- ---------------------------------------------------------------- output

local function say(fmt, ...)
  io.stderr:write("bench: ", string.format(fmt, ...), "\n")
  io.stderr:flush()
end

local tap_n = math.floor(num_env("BENCH_TAP_START", 1)) - 1
local failures = 0

local function tap(ok, desc, diag)
  tap_n = tap_n + 1
  if not ok then failures = failures + 1 end
  if TAP then
    io.stdout:write((ok and "ok " or "not ok ") .. tap_n .. " - " .. desc .. "\n")
    if diag then
      for line in tostring(diag):gmatch("[^\n]+") do io.stdout:write("# " .. line .. "\n") end
    end
    io.stdout:flush()
  elseif not ok then
    say("FAILED: %s%s", desc, diag and (": " .. tostring(diag)) or "")
  end
end

-- ---------------------------------------------------------------- helpers

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function round(x, digits)
  if type(x) ~= "number" or x ~= x or x == math.huge or x == -math.huge then return nil end
  local m = 10 ^ (digits or 3)
  return math.floor(x * m + 0.5) / m
end

-- Nearest-rank percentile of a list of numbers.
local function pct(list, p)
  if #list == 0 then return nil end
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local k = math.max(1, math.min(#s, math.ceil(p / 100 * #s)))
  return s[k]
end

local function median(list) return pct(list, 50) end

-- Sleep; a SIGINT/SIGTERM (Ctrl-C) ends the benchmark instead.
local function nap(seconds)
  if not vg.sleep(seconds) then error("interrupted by a signal", 0) end
end

local function err_text(e)
  if type(e) == "table" then
    return tostring(e.code or "error") .. ": " .. tostring(e.message or cjson.encode(e))
  end
  return tostring(e)
end

-- ---------------------------------------------------------------- database

local pool = db.pool { url = URL, pool_size = 1, max_overflow = 2,
                       application_name = DRIVER_APP }

local function q(sql, ...) return pool:query(MARK .. sql, ...) end
local function q1(sql, ...) return q(sql, ...)[1] end

local function nn(v) -- database NULL -> nil
  if v == db.null then return nil end
  return v
end

-- ---------------------------------------------------------------- /proc

local CLK_TCK = 100
do
  local ok, r = pcall(proc.run, { "getconf", "CLK_TCK" }, { timeout = 5 })
  if ok and r.code == 0 and tonumber(r.stdout) then CLK_TCK = tonumber(r.stdout) end
end

-- /proc/PID/stat fields we use, or nil when the process is gone.
local function proc_stat(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local rest = s:match("%) (.*)$")
  if not rest then return nil end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return {
    state = f[1], ppid = tonumber(f[2]),
    utime = tonumber(f[12]), stime = tonumber(f[13]),
    cutime = tonumber(f[14]), cstime = tonumber(f[15]),
  }
end

-- CPU seconds used so far by a live process, all threads: from schedstat
-- (nanoseconds) when the kernel has it, else utime + stime (clock ticks).
local function cpu_seconds(pid)
  local total, found = 0, false
  local ok = pcall(function()
    for tid in lfs.dir("/proc/" .. pid .. "/task") do
      if tid:match("^%d+$") then
        local s = read_file("/proc/" .. pid .. "/task/" .. tid .. "/schedstat")
        local ns = s and tonumber(s:match("^(%d+)"))
        if ns then total, found = total + ns, true end
      end
    end
  end)
  if ok and found then return total / 1e9 end
  local st = proc_stat(pid)
  if not st then return nil end
  return (st.utime + st.stime) / CLK_TCK
end

-- VmRSS and VmHWM of a process, in kB; also its proportional set size and
-- private memory (smaps_rollup: pages shared with other processes, such as
-- libraries, counted in part or not at all), when the kernel has them.
local function memory_kb(pid)
  local s = read_file("/proc/" .. pid .. "/status") or ""
  local r = read_file("/proc/" .. pid .. "/smaps_rollup") or ""
  local pc, pd = tonumber(r:match("Private_Clean:%s*(%d+)")), tonumber(r:match("Private_Dirty:%s*(%d+)"))
  return tonumber(s:match("VmRSS:%s*(%d+)")), tonumber(s:match("VmHWM:%s*(%d+)")),
         tonumber(r:match("\nPss:%s*(%d+)")), (pc and pd) and pc + pd or nil
end

-- The postmaster's pid, found as the parent of this driver's backend, when
-- the server runs on this machine (else nil: no server CPU figures).
local postmaster_pid
local function find_postmaster()
  local pid = q1("SELECT pg_backend_pid() AS pid").pid
  local st = proc_stat(pid)
  if not st then return nil end
  local comm = read_file("/proc/" .. st.ppid .. "/comm") or ""
  if not comm:match("^postgres") then return nil end
  return st.ppid
end

local function driver_backends()
  local set = {}
  for _, r in ipairs(q("SELECT pid FROM pg_stat_activity WHERE application_name = $1", DRIVER_APP)) do
    set[r.pid] = true
  end
  return set
end

-- CPU seconds of the whole PostgreSQL server so far: the postmaster with its
-- reaped children (cutime/cstime: backends that have exited) plus every live
-- child (backends, WAL writer, checkpointer, autovacuum, ...), except this
-- driver's own backends. Clock ticks (usually 10 ms).
local function pg_cpu(exclude)
  if not postmaster_pid then return nil end
  local pm = proc_stat(postmaster_pid)
  if not pm then return nil end
  local ticks = pm.utime + pm.stime + pm.cutime + pm.cstime
  for name in lfs.dir("/proc") do
    local pid = tonumber(name)
    if pid and not exclude[pid] then
      local st = proc_stat(pid)
      if st and st.ppid == postmaster_pid then ticks = ticks + st.utime + st.stime end
    end
  end
  return ticks / CLK_TCK
end

-- ---------------------------------------------------------------- statements

-- Labels for the statements the worker sends: the names of vg.queue's SQL
-- constants (CLAIM_SQL -> claim). pg_stat_statements shows a statement with
-- its constants replaced by $n (even NULL, and "epoch" in extract), so the match is on
-- the words: the constant whose word multiset is most like the statement's.
local function words(s)
  local bag, n = {}, 0
  s = s:gsub("%-%-[^\n]*", " ") -- comments (an apostrophe there would pair with a quote)
  s = s:gsub("'[^']*'", " ") -- pg_stat_statements shows literals as $n
  for w in s:lower():gmatch("[%a_][%w_]*") do
    if w ~= "null" and w ~= "true" and w ~= "false" then -- constants too
      bag[w] = (bag[w] or 0) + 1
      n = n + 1
    end
  end
  return bag, n
end
local function similarity(a, na, b, nb)
  local common = 0
  for w, c in pairs(a) do if b[w] then common = common + math.min(c, b[w]) end end
  return 2 * common / math.max(1, na + nb)
end
local KNOWN = {}
for k, v in pairs(queue) do
  if type(v) == "string" and k:match("_SQL$") then
    local bag, n = words(v)
    KNOWN[#KNOWN + 1] = { name = k:sub(1, -5):lower(), bag = bag, n = n }
  end
end
table.sort(KNOWN, function(x, y) return x.name < y.name end)
local function label(query)
  local bag, n = words(query)
  local best, score = nil, 0.85
  for _, k in ipairs(KNOWN) do
    local s = similarity(bag, n, k.bag, k.n)
    if s > score then best, score = k.name, s end
  end
  if best then return best end
  local t = query:gsub("%s+", " "):gsub("^ ", "")
  return #t > 48 and t:sub(1, 45) .. "..." or t
end

local has_pgss = false

local function pgss_snapshot()
  if not has_pgss then return nil end
  local rows = q([[
    SELECT queryid::text AS id, calls, total_exec_time::float8 AS ms, query
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND query NOT LIKE '%vg-bench%']])
  local m = {}
  for _, r in ipairs(rows) do m[r.id] = r end
  return m
end

-- Statements sent between two snapshots: { total = n, by = { {label, calls, ms}, ... } }
local function pgss_delta(a, b)
  if not a or not b then return nil end
  local by, total = {}, 0
  for id, r in pairs(b) do
    local calls = r.calls - (a[id] and a[id].calls or 0)
    local ms = r.ms - (a[id] and a[id].ms or 0)
    if calls > 0 then
      local l = label(r.query)
      local e = by[l] or { label = l, calls = 0, exec_ms = 0 }
      e.calls = e.calls + calls
      e.exec_ms = e.exec_ms + ms
      by[l] = e
      total = total + calls
    end
  end
  local list = {}
  for _, e in pairs(by) do list[#list + 1] = e end
  table.sort(list, function(x, y) return x.calls > y.calls end)
  return { total = total, by = list }
end

local function xact_count()
  local r = q1([[SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database
                 WHERE datname = current_database()]])
  return r and r.n
end

-- A measurement point: time, server CPU, statement counters.
local function sample()
  return { t = vg.now(), pg = pg_cpu(driver_backends()), pgss = pgss_snapshot() }
end

-- ---------------------------------------------------------------- processes

local spawned = {}       -- every Process started, stopped at the end
local pids_file = TMP .. "/pids"

local function track(p)
  spawned[#spawned + 1] = p
  local f = io.open(pids_file, "a")
  if f then f:write(p:pid(), "\n"); f:close() end
  return p
end

local function stop(p, timeout)
  if not p:running() then return p:wait(1) end
  p:kill("TERM")
  local r = p:wait(timeout or 40)
  if not r then
    p:kill("KILL", { group = true })
    r = p:wait(5)
  end
  return r
end

local function stop_all()
  for _, p in ipairs(spawned) do
    if p:running() then pcall(stop, p, 10) end
  end
end

local function worker_env(extra)
  local e = {
    DATABASE_URL = URL, FERNET_KEY = FERNET_KEY, LOG_FORMAT = "json", LOG_LEVEL = "info",
    VG_CONCURRENCY = "1", VG_BATCH = "off", VG_WORKSPACE = TMP .. "/workspace",
    VG_POLL_INTERVAL = false, VG_HEARTBEAT_INTERVAL = false, VG_PIPELINES = false,
    VG_LEASE_SECONDS = false, VG_SHUTDOWN_GRACE = false, WORKER_ID = false,
    RAILWAY_SERVICE_NAME = false, RAILWAY_REPLICA_ID = false,
    VG_DB_POOL_SIZE = false, VG_DB_MAX_OVERFLOW = false,
    VG_DB_PREPARE = PGBENCH_MODE == "prepared" and "on" or "off",
  }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

-- A worker; with logfile its output goes to that file (throughput runs:
-- the driver then spends no CPU reading it), else it is captured.
local function spawn_worker(extra, logfile)
  local script = LUA_DIR .. "/worker.lua"
  local argv = { VG_HOST, script }
  if logfile then argv = { "sh", "-c", 'exec "$0" "$1" >"$2" 2>&1', VG_HOST, script, logfile } end
  return track(proc.spawn(argv, { env = worker_env(extra), cwd = TMP }))
end

local function wait_line(p, event, timeout)
  local m, e = p:wait_output('"event":"' .. event .. '"', timeout or 15, { plain = true })
  if not m then
    error(string.format("no %s line from the worker within %ss (%s); its output ends with:\n%s",
      event, timeout or 15, err_text(e), (p:stdout() .. p:stderr()):sub(-1500)), 0)
  end
end

local function tail(path, n)
  local s = read_file(path) or ""
  return s:sub(-(n or 1500))
end

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

-- Rate from the database's own timestamps.
local function db_rate()
  local r = q1([[
    SELECT count(*) FILTER (WHERE status = 'completed')::bigint AS done,
           count(*) FILTER (WHERE status = 'failed')::bigint AS failed,
           extract(epoch FROM max(completed_at) FILTER (WHERE status = 'completed')
                            - min(claimed_at) FILTER (WHERE status = 'completed'))::float8 AS secs
      FROM tasks]])
  local secs = nn(r.secs)
  local rate = (secs and secs > 0) and r.done / secs or nil
  return r.done, secs, rate, r.failed
end

local function remaining()
  return q1([[SELECT count(*)::bigint AS n FROM tasks
              WHERE status IN ('pending', 'retry', 'approved', 'claimed', 'processing')]]).n
end

-- ---------------------------------------------------------------- raw limit (pgbench)

local function sql_params(sql, names)
  return (sql:gsub("%$(%d+)", function(d)
    return assert(names[tonumber(d)], "no pgbench variable for $" .. d)
  end))
end

-- The pgbench scripts, made from vg.queue's SQL so that they cannot drift.
local function pgbench_scripts()
  local claim = sql_params(queue.CLAIM_SQL, { ":worker", ":instance", ":lease", ":n" })
  claim = claim:gsub("%s*;?%s*$", "")
  local complete = sql_params(queue.COMPLETE_SQL, { ":id", ":lease_token", ":result" })
  complete = complete:gsub("%s*;?%s*$", "")
  -- \aset (not \gset): a claim that finds nothing (all locked at the very
  -- end) is not an error; the complete then matches no row.
  local single = claim .. " \\aset\n" .. complete .. ";\n"

  -- Batched: what a worker with VG_BATCH=on sends: CLAIM_MANY_SQL with
  -- $4 = 10, its rows gathered into one JSON value (the final SELECT is the
  -- only change), then COMPLETE_MANY_SQL for them.
  local tail_pat = "SELECT %* FROM claimed$"
  local bclaim = sql_params(queue.CLAIM_MANY_SQL, { ":worker", ":instance", ":lease", ":n" })
  bclaim = bclaim:gsub("%s*;?%s*$", "")
  assert(bclaim:find(tail_pat), "CLAIM_MANY_SQL no longer ends with SELECT * FROM claimed; update bench/driver.lua")
  bclaim = bclaim:gsub(tail_pat,
    "SELECT coalesce(json_agg(json_build_array(id, lease_token, :result::jsonb)), '[]')::text AS batch FROM claimed")
  local bcomplete = sql_params(queue.COMPLETE_MANY_SQL, { ":batch" }):gsub("%s*;?%s*$", "")
  local batched = bclaim .. " \\aset\n" .. bcomplete .. ";\n"
  write_file(TMP .. "/raw_single.sql", single)
  write_file(TMP .. "/raw_batched.sql", batched)
  return TMP .. "/raw_single.sql", TMP .. "/raw_batched.sql"
end

local NPROC = 1
do
  local ok, r = pcall(proc.run, { "nproc" }, { timeout = 5 })
  if ok and r.code == 0 and tonumber(r.stdout) then NPROC = tonumber(r.stdout) end
end

local results = { raw = {}, throughput = {}, errors = {} }

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
  if PGBENCH == "" then error("pgbench not found (Debian: apt-get install postgresql)", 0) end
  seed(P.tasks)
  local per_client = math.max(1, P.tasks // (per_claim * clients))
  local argv = { PGBENCH, "-n", "-M", PGBENCH_MODE, "-c", clients, "-j", math.min(clients, NPROC),
    "-t", per_client, "-D", "worker=bench-pgbench", "-D", "instance=bench-pgbench:1",
    "-D", "lease=60", "-D", "n=" .. per_claim, "-D", 'result={"steps":0}', "-f", script, URL }
  say("raw %s: pgbench, %d client(s), %d task(s) per claim", name, clients, per_claim)
  local before = sample()
  -- Prepared: generic plans, as the worker asks for (lua/worker.lua).
  local env = PGBENCH_MODE == "prepared" and { PGOPTIONS = "-c plan_cache_mode=force_generic_plan" } or nil
  local r = proc.run(argv, { timeout = P.run_limit, max_output = 1 << 16, env = env })
  -- Its backends' CPU moves to the postmaster's cutime once they have
  -- exited and been reaped: wait for that before reading.
  local deadline = vg.now() + 5
  while vg.now() < deadline and q1([[SELECT count(*)::bigint AS n FROM pg_stat_activity
                                     WHERE application_name = 'pgbench']]).n > 0 do
    nap(0.02)
  end
  nap(0.1)
  local after = sample()
  local done, secs, rate, failed = db_rate()
  local res = {
    name = name, clients = clients, tasks_per_claim = per_claim, protocol = PGBENCH_MODE,
    tasks_done = done, tasks_failed = failed, seconds = round(secs, 4), tasks_per_s = round(rate, 1),
    stopped_at_limit = r.timed_out or nil,
    pgbench_tps = r.stdout and tonumber(r.stdout:match("tps = ([%d%.]+) %(without")),
    pg_cpu_ms_per_task = (before.pg and after.pg and done > 0)
      and round((after.pg - before.pg) * 1000 / done, 3) or nil,
  }
  if res.pgbench_tps then res.pgbench_tasks_per_s = round(res.pgbench_tps * per_claim, 1) end
  local st = pgss_delta(before.pgss, after.pgss)
  if st and done > 0 then res.statements_per_task = round(st.total / done, 3) end
  keep(results.raw, name, res)
  if done == 0 then
    error("pgbench completed no task: " .. (r.stderr or ""):sub(-800) .. (r.stdout or ""):sub(-400), 0)
  end
  if not r.timed_out and r.code ~= 0 then
    res.pgbench_exit = r.code
    say("pgbench exited %s: %s", tostring(r.code), (r.stderr or ""):sub(-300))
  end
  return res
end

-- ---------------------------------------------------------------- throughput (workers)

local function run_workers(name, n_workers, concurrency, batch)
  seed(P.tasks)
  say("throughput %s: %d worker(s), VG_CONCURRENCY=%d, VG_BATCH=%s, %d tasks queued",
    name, n_workers, concurrency, batch and "on" or "off", P.tasks)
  local before = sample()
  local ps, logs = {}, {}
  for i = 1, n_workers do
    logs[i] = string.format("%s/worker-%s-%d.log", TMP, name, i)
    ps[i] = spawn_worker({ WORKER_ID = "bench-w" .. i, VG_CONCURRENCY = tostring(concurrency),
                           VG_BATCH = batch and "on" or "off" }, logs[i])
  end
  local deadline = vg.now() + P.run_limit
  local left, dead
  repeat
    nap(0.25)
    left = remaining()
    for i, p in ipairs(ps) do
      if not p:running() then dead = i end
    end
  until left == 0 or dead or vg.now() >= deadline
  local cpu = 0
  for _, p in ipairs(ps) do
    local c = p:running() and cpu_seconds(p:pid())
    if c then cpu = cpu + c else cpu = nil break end
  end
  local after = sample()
  for _, p in ipairs(ps) do stop(p) end
  local done, secs, rate, failed = db_rate()
  local res = {
    name = name, workers = n_workers, concurrency = concurrency, batch = batch,
    tasks_queued = P.tasks, tasks_done = done, tasks_failed = failed,
    stopped_at_limit = (left > 0 and not dead) or nil,
    seconds = round(secs, 4), tasks_per_s = round(rate, 1),
    worker_cpu_ms_per_task = (cpu and done > 0) and round(cpu * 1000 / done, 3) or nil,
    pg_cpu_ms_per_task = (before.pg and after.pg and done > 0)
      and round((after.pg - before.pg) * 1000 / done, 3) or nil,
  }
  local st = pgss_delta(before.pgss, after.pgss)
  if st and done > 0 then
    res.statements_per_task = round(st.total / done, 3)
    res.statements = {}
    for _, e in ipairs(st.by) do
      res.statements[#res.statements + 1] = { statement = e.label, per_task = round(e.calls / done, 4),
        calls = e.calls, mean_exec_ms = round(e.exec_ms / e.calls, 4) }
    end
  end
  keep(results.throughput, name, res)
  if dead then
    error(string.format("worker %d exited during the run; its log ends with:\n%s", dead, tail(logs[dead])), 0)
  end
  if done == 0 then error("no task completed within " .. P.run_limit .. " s; log:\n" .. tail(logs[1]), 0) end
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
                       AND backend_type = 'client backend']], DRIVER_APP).n
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
  local r = proc.run({ PGBENCH, "-n", "-C", "-c", "1", "-t", "20", "-f", script, URL }, { timeout = 30 })
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
  local m = { nproc = NPROC, cpu = cpuinfo:match("model name%s*:%s*([^\n]+)"), load_average_start = load }
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

local function main()
  pool:wait_ready(30)
  postmaster_pid = find_postmaster()
  has_pgss = pcall(q, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    and pcall(q, "SELECT 1 FROM pg_stat_statements LIMIT 1")
  if not has_pgss then say("pg_stat_statements is not available: statement counts approximate") end
  if not postmaster_pid then say("the server is not on this machine: no PostgreSQL CPU figures") end
  results.date = os.date("!%Y-%m-%dT%H:%M:%SZ")
  results.machine = machine()
  results.smoke = SMOKE
  results.lua_dir = LUA_DIR
  results.params = P
  results.method = {
    rate = "completed / (max(completed_at) - min(claimed_at)) of the completed tasks, database clock",
    worker_cpu = "schedstat (or utime+stime) of the worker processes at the end of the run, start-up included",
    pg_cpu = "utime+stime delta of the postmaster, its children and reaped children, less the driver's backend",
    pgbench = "pgbench -M " .. PGBENCH_MODE .. " (prepared: generic plans, as the worker sends them; "
      .. "extended: unnamed statements, as with VG_DB_PREPARE=off, which the workers then get too), "
      .. "scripts made from vg.queue's SQL",
  }

  local single, batched
  step("pgbench scripts made from vg.queue CLAIM_SQL and COMPLETE_SQL", function()
    single, batched = pgbench_scripts()
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
  local function workers(name, n, conc, batch)
    attempt(string.format("throughput measured (%s%s)", name, batch and ", VG_BATCH=on" or ""), function()
      run_workers(name, n, conc, batch)
    end)
  end
  for _ = 1, P.repeat_runs do
    raw("single-1", 1, 1); workers("1x1", 1, 1, false)
  end
  for _ = 1, P.repeat_runs do
    raw("single-10", 10, 1); workers("1x10", 1, 10, false)
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
  if TAP then io.stdout:write("1.." .. tap_n .. "\n") end
  pool:close(5)
end

local ok, err = pcall(main)
stop_all()
if not ok then
  io.stderr:write("bench: ", err_text(err), "\n")
  if TAP then io.stdout:write("not ok " .. (tap_n + 1) .. " - benchmark driver\n# " .. err_text(err) .. "\n") end
  os.exit(1)
end
os.exit(failures == 0 and 0 or 1)
