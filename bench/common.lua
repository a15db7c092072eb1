-- bench/common.lua: what the benchmark's parts share (bench/driver.lua, the
-- main table; bench/scale.lua, the scale and claim matrices): the settings
-- bench/run.sh hands over, output and TAP lines, the driver's own database
-- pool, CPU of processes and of the PostgreSQL server from /proc,
-- pg_stat_statements snapshots, starting and stopping workers, and pgbench
-- scripts made from vg.queue's SQL.
--
-- Every query of the driver carries the comment /* vg-bench */, so that
-- pg_stat_statements deltas count only what the workers (or pgbench) sent.
local vg = require "vg"
local db = require "vg.db"
local proc = require "vg.proc"
local cjson = require "cjson"
local lfs = require "lfs"
local queue = require "vg.queue"

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

-- The URL of database name on the same server (same user and options).
local function url_of(name)
  local base, query = URL:match("^([^?]*)(.*)$")
  return (base:gsub("/[^/]*$", "")) .. "/" .. name .. query
end

-- A connection of the driver's own to database name, for its setting up
-- and reading: a query function (the /* vg-bench */ mark added) and a
-- function that closes it.
local function connect(name)
  local p = db.pool { url = url_of(name), pool_size = 1, max_overflow = 0,
                      application_name = DRIVER_APP }
  p:wait_ready(30)
  return function(sql, ...) return p:query(MARK .. sql, ...) end, function() p:close(5) end
end

local function nn(v) -- database NULL -> nil
  if v == db.null then return nil end
  return v
end

-- ---------------------------------------------------------------- /proc

local CLK_TCK = 100 -- clock ticks a second (getconf CLK_TCK, in setup)

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

-- The statements of database dbname (default: the driver's own).
local function pgss_snapshot(dbname)
  if not has_pgss then return nil end
  local rows = q([[
    SELECT queryid::text AS id, calls, total_exec_time::float8 AS ms,
           stddev_exec_time::float8 AS sd, query
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = coalesce($1, current_database()))
       AND query NOT LIKE '%vg-bench%']], dbname or db.null)
  local m = {}
  for _, r in ipairs(rows) do m[r.id] = r end
  return m
end

-- Statements sent between two snapshots: { total = n, by = { {label, calls,
-- exec_ms, sd_ms, skip_locked}, ... } }. sd_ms, the standard deviation of
-- one execution, only for a statement the first snapshot did not have yet
-- (a fresh database), where it covers exactly these calls.
local function pgss_delta(a, b)
  if not a or not b then return nil end
  local by, total = {}, 0
  for id, r in pairs(b) do
    local calls = r.calls - (a[id] and a[id].calls or 0)
    local ms = r.ms - (a[id] and a[id].ms or 0)
    if calls > 0 then
      local l = label(r.query)
      local e = by[l]
      if not e then
        e = { label = l, calls = 0, exec_ms = 0, sd_ms = not a[id] and r.sd or nil,
              skip_locked = r.query:find("SKIP LOCKED", 1, true) ~= nil }
      else
        e.sd_ms = nil -- several statements under one label
      end
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

-- A measurement point: time, server CPU, statement counters (of database
-- dbname, default the driver's own).
local function sample(dbname)
  return { t = vg.now(), pg = pg_cpu(driver_backends()), pgss = pgss_snapshot(dbname) }
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
-- the driver then spends no CPU reading it), else it is captured. script:
-- another script to run instead of lua/worker.lua (bench/timed_worker.lua).
local function spawn_worker(extra, logfile, script)
  script = script or (LUA_DIR .. "/worker.lua")
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


-- ---------------------------------------------------------------- pgbench

local NPROC = 1 -- CPUs (nproc, in setup)

-- vg.queue's SQL with its $n parameters turned into pgbench variables.
local function sql_params(sql, names)
  return (sql:gsub("%$(%d+)", function(d)
    return assert(names[tonumber(d)], "no pgbench variable for $" .. d)
  end))
end

-- A claim statement of vg.queue (CLAIM_SQL, CLAIM_MANY_SQL) for pgbench.
local function claim_sql(sql)
  return sql_params(sql, { ":worker", ":instance", ":lease", ":n" })
end

-- A pgbench script: the claim, its row's columns kept as variables (\aset,
-- not \gset: a claim that finds nothing, all locked at the very end, is not
-- an error; the complete then matches no row), then the complete.
local function pgbench_script(claim, complete)
  return claim:gsub("%s*;?%s*$", "") .. " \\aset\n" .. complete:gsub("%s*;?%s*$", "") .. ";\n"
end

-- The values of those variables (pgbench -D), and the environment pgbench
-- runs with: in prepared mode generic plans, as the worker asks for
-- (lua/worker.lua).
local PGBENCH_VARS = { "-D", "worker=bench-pgbench", "-D", "instance=bench-pgbench:1",
                       "-D", "lease=60", "-D", 'result={"steps":0}', "-D", "next_id=0", "-D", "next_token=0" }
local PGBENCH_ENV = PGBENCH_MODE == "prepared" and { PGOPTIONS = "-c plan_cache_mode=force_generic_plan" } or nil

-- Waits until the pgbench backends have gone: their CPU moves to the
-- postmaster's cutime once they have exited and been reaped.
local function wait_pgbench_gone()
  local deadline = vg.now() + 5
  while vg.now() < deadline and q1([[SELECT count(*)::bigint AS n FROM pg_stat_activity
                                     WHERE application_name = 'pgbench']]).n > 0 do
    nap(0.02)
  end
  nap(0.1)
end

-- ---------------------------------------------------------------- rates

-- Rate from a database's own timestamps (query: a query function on it).
local function db_rate(query)
  local r = query([[
    SELECT count(*) FILTER (WHERE status = 'completed')::bigint AS done,
           count(*) FILTER (WHERE status = 'failed')::bigint AS failed,
           extract(epoch FROM max(completed_at) FILTER (WHERE status = 'completed')
                            - min(claimed_at) FILTER (WHERE status = 'completed'))::float8 AS secs
      FROM tasks]])[1]
  local secs = nn(r.secs)
  local rate = (secs and secs > 0) and r.done / secs or nil
  return r.done, secs, rate, r.failed
end

-- The claim statement among a run's statements (pgss_delta): the one with
-- FOR UPDATE SKIP LOCKED that ran most often. Its mean execution time, and
-- the standard deviation of one execution when the database was fresh.
local function claim_stats(st)
  local best
  for _, e in ipairs(st and st.by or {}) do
    if e.skip_locked and (not best or e.calls > best.calls) then best = e end
  end
  if not best then return nil end
  return { statement = best.label, calls = best.calls, mean_ms = round(best.exec_ms / best.calls, 4),
           sd_ms = round(best.sd_ms, 4) }
end

-- Latencies (ms) from pgbench's per-transaction logs (-l) named prefix*:
-- the third field of each line is the transaction's time in microseconds.
local function pgbench_latencies(prefix)
  local dir, base = prefix:match("^(.*)/([^/]*)$")
  local ms = {}
  for name in lfs.dir(dir) do
    if name:sub(1, #base) == base then
      for line in io.lines(dir .. "/" .. name) do
        local us = tonumber(line:match("^%S+ %S+ (%S+)"))
        if us then ms[#ms + 1] = us / 1000 end
      end
      os.remove(dir .. "/" .. name)
    end
  end
  return ms
end

-- pgbench runs o.script (claim and complete; pgbench variables as in
-- PGBENCH_VARS, and n = o.per_claim) with o.clients clients, o.per_client
-- transactions each, ended after o.timeout seconds, against database
-- o.dbname (default the driver's; o.query: a query function on it). The
-- rate comes from the database's timestamps, as for the workers; also the
-- server's CPU and statements per task, the claim statement's execution
-- time, and with o.log (a path prefix) transaction latencies from -l.
-- Returns the figures and a function that raises when no task was done.
local function run_pgbench(o)
  if PGBENCH == "" then error("pgbench not found (Debian: apt-get install postgresql)", 0) end
  local per_claim = o.per_claim or 1
  local argv = { PGBENCH, "-n", "-M", PGBENCH_MODE, "-c", o.clients, "-j", math.min(o.clients, NPROC),
                 "-t", o.per_client }
  for _, a in ipairs(PGBENCH_VARS) do argv[#argv + 1] = a end
  for _, a in ipairs({ "-D", "n=" .. per_claim }) do argv[#argv + 1] = a end
  if o.log then argv[#argv + 1] = "-l"; argv[#argv + 1] = "--log-prefix=" .. o.log end
  argv[#argv + 1] = "-f"; argv[#argv + 1] = o.script
  argv[#argv + 1] = o.dbname and url_of(o.dbname) or URL
  local before = sample(o.dbname)
  local r = proc.run(argv, { timeout = o.timeout, max_output = 1 << 16, env = PGBENCH_ENV, cwd = TMP })
  wait_pgbench_gone()
  local after = sample(o.dbname)
  local done, secs, rate, failed = db_rate(o.query or q)
  local res = {
    clients = o.clients, tasks_per_claim = per_claim, protocol = PGBENCH_MODE,
    tasks_done = done, tasks_failed = failed, seconds = round(secs, 4), tasks_per_s = round(rate, 1),
    stopped_at_limit = r.timed_out or nil,
    pgbench_tps = r.stdout and tonumber(r.stdout:match("tps = ([%d%.]+) %(without")),
    pg_cpu_ms_per_task = (before.pg and after.pg and done > 0)
      and round((after.pg - before.pg) * 1000 / done, 3) or nil,
  }
  if res.pgbench_tps then res.pgbench_tasks_per_s = round(res.pgbench_tps * per_claim, 1) end
  local st = pgss_delta(before.pgss, after.pgss)
  if st and done > 0 then res.statements_per_task = round(st.total / done, 3) end
  res.claim = claim_stats(st)
  if o.log then
    local l = pgbench_latencies(o.log)
    res.transactions_logged = #l
    res.transaction_p50_ms, res.transaction_p99_ms = round(pct(l, 50), 3), round(pct(l, 99), 3)
  end
  if not r.timed_out and r.code ~= 0 then
    res.pgbench_exit = r.code
    say("pgbench exited %s: %s", tostring(r.code), (r.stderr or ""):sub(-300))
  end
  local function check()
    if done == 0 then
      error(string.format("pgbench completed no task (exit %s): %s%s", tostring(r.code),
        (r.stderr or ""):sub(-800), (r.stdout or ""):sub(-400)), 0)
    end
  end
  return res, check
end

-- o.n workers (default 1; settings o.env, each with its WORKER_ID, output
-- to TMP/worker-<o.name>-<i>.log; o.script instead of lua/worker.lua)
-- against database o.dbname (default the driver's; o.query a query
-- function on it), until o.finished() says so (asked every o.poll seconds,
-- default 0.25), a worker exits, or o.limit seconds have passed. Rate from
-- the database's timestamps; CPU of the workers and of the server;
-- statements per task and the claim statement's execution time. Returns the
-- figures and a function that raises when a worker died or no task was done.
local function run_workers(o)
  local n = o.n or 1
  local before = sample(o.dbname)
  local ps, logs = {}, {}
  for i = 1, n do
    logs[i] = string.format("%s/worker-%s-%d.log", TMP, o.name, i)
    local env = { WORKER_ID = "bench-w" .. i }
    if o.dbname then env.DATABASE_URL = url_of(o.dbname) end
    for k, v in pairs(o.env or {}) do env[k] = v end
    ps[i] = spawn_worker(env, logs[i], o.script)
  end
  local deadline = vg.now() + o.limit
  local finished, dead
  repeat
    nap(o.poll or 0.25)
    finished = o.finished()
    for i, p in ipairs(ps) do
      if not p:running() then dead = i end
    end
  until finished or dead or vg.now() >= deadline
  local cpu = 0
  for _, p in ipairs(ps) do
    local c = p:running() and cpu_seconds(p:pid())
    if c then cpu = cpu + c else cpu = nil break end
  end
  local after = sample(o.dbname)
  for _, p in ipairs(ps) do stop(p) end
  local done, secs, rate, failed = db_rate(o.query or q)
  local res = {
    workers = n, tasks_done = done, tasks_failed = failed,
    stopped_at_limit = (not finished and not dead) or nil,
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
  res.claim = claim_stats(st)
  local function check()
    if dead then
      error(string.format("worker %d exited during the run; its log ends with:\n%s", dead, tail(logs[dead])), 0)
    end
    if done == 0 then error("no task completed within " .. o.limit .. " s; log:\n" .. tail(logs[1]), 0) end
  end
  return res, check
end

-- The output of a command as a number, or nil.
local function command_number(argv)
  local ok, r = pcall(proc.run, argv, { timeout = 5 })
  return ok and r.code == 0 and tonumber(r.stdout) or nil
end

-- Asks the machine for CLK_TCK and its CPUs, connects the driver's pool,
-- finds the postmaster and pg_stat_statements. (Not when this module is
-- loaded: require cannot wait for a process.)
local function setup()
  CLK_TCK = command_number({ "getconf", "CLK_TCK" }) or CLK_TCK
  NPROC = command_number({ "nproc" }) or NPROC
  pool:wait_ready(30)
  postmaster_pid = find_postmaster()
  has_pgss = pcall(q, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    and pcall(q, "SELECT 1 FROM pg_stat_statements LIMIT 1")
  if not has_pgss then say("pg_stat_statements is not available: statement counts approximate") end
  if not postmaster_pid then say("the server is not on this machine: no PostgreSQL CPU figures") end
  return has_pgss, postmaster_pid
end

return {
  ROOT = ROOT, URL = URL, TMP = TMP, VG_HOST = VG_HOST, LUA_DIR = LUA_DIR, PGBENCH = PGBENCH,
  PGBENCH_MODE = PGBENCH_MODE, SMOKE = SMOKE, TAP = TAP, OUT = OUT, nproc = function() return NPROC end,
  DRIVER_APP = DRIVER_APP, PGBENCH_VARS = PGBENCH_VARS, PGBENCH_ENV = PGBENCH_ENV,
  num_env = num_env, say = say, tap = tap, tap_count = function() return tap_n end,
  failures = function() return failures end,
  read_file = read_file, write_file = write_file, round = round, pct = pct, median = median,
  nap = nap, err_text = err_text,
  pool = pool, q = q, q1 = q1, nn = nn, url_of = url_of, connect = connect, setup = setup,
  cpu_seconds = cpu_seconds, memory_kb = memory_kb, driver_backends = driver_backends,
  pg_cpu = pg_cpu, pgss_snapshot = pgss_snapshot, pgss_delta = pgss_delta,
  xact_count = xact_count, sample = sample,
  track = track, stop = stop, stop_all = stop_all, spawn_worker = spawn_worker,
  wait_line = wait_line, tail = tail,
  sql_params = sql_params, claim_sql = claim_sql, pgbench_script = pgbench_script, db_rate = db_rate, run_pgbench = run_pgbench, run_workers = run_workers,
}
