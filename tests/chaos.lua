-- make chaos: real workers through the faults of real life, then a count of
-- what was lost or run twice, judged from the steps' own side effects.
-- Run by tests/chaos.sh (a throw-away cluster; DATABASE_URL and PGTMP_DIR
-- set), not by make test.
--
--   CHAOS_TASKS (1500)  ticker tasks, CHAOS_TICKS (4) ticks of 50 ms each
--   CHAOS_WORKERS (3)   workers at VG_CONCURRENCY=CHAOS_CONCURRENCY (10)
--   CHAOS_LIMIT (900)   seconds before giving up on the queue draining
--
-- Faults, from the start: a random worker SIGKILLed every 2 s and started
-- again; every LISTEN backend terminated every 3 s; the last worker, which
-- reaches PostgreSQL through a proxy, cut off for 10 s from 20 s (the proxy
-- stopped: connections stay open and carry nothing); PostgreSQL restarted
-- with -m fast at 40 s and with -m immediate at 70 s.
--
-- Every fault must find work in flight, however fast the machine: until
-- the last one is over (FAULTS_END), the queue is topped up with more
-- tasks whenever fewer than TOP_UP_BELOW are left, so a fast machine runs
-- more than CHAOS_TASKS. Each top-up is a batch with its own tag in the
-- payload, and counts only once the database shows all of its rows: an
-- INSERT whose answer was lost to a restart is neither counted twice nor
-- lost from the count.
local vg = require "vg"
local db = require "vg.db"
local proc = require "vg.proc"
local cjson = require "cjson"
local ticks = require "spec.support.ticks"

local ROOT = os.getenv("PWD") or "."
local BIN = os.getenv("VG_HOST_BIN") or (ROOT .. "/build/vg-host")
local URL = assert(os.getenv("DATABASE_URL"), "DATABASE_URL")
local PGDIR = assert(os.getenv("PGTMP_DIR"), "PGTMP_DIR")
local N = tonumber(os.getenv("CHAOS_TASKS") or "1500")
local TICKS = tonumber(os.getenv("CHAOS_TICKS") or "4")
local NW = tonumber(os.getenv("CHAOS_WORKERS") or "3")
local CONC = os.getenv("CHAOS_CONCURRENCY") or "10"
local LIMIT = tonumber(os.getenv("CHAOS_LIMIT") or "900")
local TICK_FILE = os.tmpname()

local function say(fmt, ...) io.stderr:write(string.format("chaos: " .. fmt .. "\n", ...)) end
local function wall_ns() return math.floor(vg.time() * 1e9) end

-- ---- set-up -----------------------------------------------------------------

local function run_ok(argv, env)
  local r = proc.run(argv, { env = env, cwd = ROOT, timeout = 120 })
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stdout .. r.stderr)
  return r
end

run_ok({ BIN, "lua/migrate.lua" }, { DATABASE_URL = URL })
db.configure { url = URL }
db.query([[CREATE TABLE IF NOT EXISTS test_executions (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             task_id bigint NOT NULL, worker_id text NOT NULL, step text NOT NULL,
             attempt int NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT now())]])
-- Every completion and every error a task records, with the attempts
-- before and after: "completed twice" and "attempts spent on infrastructure
-- errors" are read from here.
db.query([[
CREATE TABLE chaos_events (task_id bigint, kind text, error text, attempts_before int,
                           attempts_after int, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION chaos_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'completed' AND OLD.status <> 'completed' THEN
    INSERT INTO chaos_events (task_id, kind, attempts_before, attempts_after)
    VALUES (NEW.id, 'completed', OLD.attempts, NEW.attempts);
  ELSIF NEW.last_error IS DISTINCT FROM OLD.last_error AND NEW.last_error IS NOT NULL THEN
    INSERT INTO chaos_events (task_id, kind, error, attempts_before, attempts_after)
    VALUES (NEW.id, NEW.status, NEW.last_error, OLD.attempts, NEW.attempts);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER chaos_record AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION chaos_record();]])
for i = 1, 5 do
  db.query("INSERT INTO channels (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", "chaos" .. i)
end
-- Batch b of n tasks (0: the first CHAOS_TASKS).
local ENQUEUE_SQL = [[INSERT INTO tasks (channel_id, pipeline, payload)
  SELECT 'chaos' || (1 + g % 5), 'ticker',
         jsonb_build_object('log', $1::text, 'ticks', $2::int, 'batch', $3::int)
    FROM generate_series(1, $4) g]]
db.query(ENQUEUE_SQL, TICK_FILE, TICKS, 0, N)
local total = N   -- tasks enqueued, as far as the database has confirmed
say("%d tasks of %d ticks, %d workers x %s", N, TICKS, NW, CONC)

-- The proxy for the last worker: socat, its own process group.
local pg_port = URL:match(":(%d+)/")
local proxy_port = tostring(30000 + math.random(0, 20000))
local proxy = proc.spawn({ "socat", "TCP-LISTEN:" .. proxy_port .. ",bind=127.0.0.1,reuseaddr,fork",
                           "TCP:127.0.0.1:" .. pg_port })
local proxy_url = URL:gsub(":" .. pg_port .. "/", ":" .. proxy_port .. "/")

-- ---- workers ------------------------------------------------------------------

local workers = {}

local function start_worker(i)
  local env = {
    DATABASE_URL = i == NW and proxy_url or URL,
    FERNET_KEY = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",
    WORKER_ID = "w" .. i, VG_CONCURRENCY = CONC, LOG_LEVEL = "warning",
    VG_PIPELINES = "spec.support.test_pipelines", LUA_PATH = ROOT .. "/?.lua;;",
    PATH = os.getenv("PATH"),
  }
  workers[i] = proc.spawn({ BIN, "lua/worker.lua" }, { env = env, cwd = ROOT, clear_env = true,
                                                        max_output = 1 << 20 })
end

for i = 1, NW do start_worker(i) end

-- ---- faults -------------------------------------------------------------------

local kills = {}    -- {worker = "wN", at = ns}
local counts = { kills = 0, listen_terminated = 0, restarts = 0 }

local function try_query(sql, ...)
  local ok, rows = pcall(db.query, sql, ...)
  return ok and rows or nil
end

local function remaining()
  local rows = try_query("SELECT count(*)::int AS n FROM tasks WHERE status NOT IN ('completed', 'failed')")
  return rows and rows[1].n
end

local function restart_pg(mode)
  say("restarting PostgreSQL (-m %s)", mode)
  local r = proc.run({ "sh", "tests/pgtmp.sh", "restart", PGDIR },
                     { cwd = ROOT, timeout = 120, env = { PGTMP_RESTART_MODE = mode, PATH = os.getenv("PATH") } })
  if r.code ~= 0 then say("restart failed: %s", r.stderr) end
  counts.restarts = counts.restarts + 1
end

local faults = vg.spawn(function()
  local t0 = vg.now()
  local next_kill, next_listen = t0 + 2, t0 + 3
  local cut, healed, fast, immediate = false, false, false, false
  while true do
    vg.sleep(0.1, { interruptible = false })
    local t = vg.now() - t0
    if vg.now() >= next_kill then
      next_kill = next_kill + 2
      local i = math.random(1, NW)
      workers[i]:kill("KILL")
      kills[#kills + 1] = { worker = "w" .. i, at = wall_ns() }
      counts.kills = counts.kills + 1
      workers[i]:wait(10)
      start_worker(i)
    end
    if vg.now() >= next_listen then
      next_listen = next_listen + 3
      local rows = try_query([[SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
                                WHERE backend_type = 'client backend' AND query ILIKE 'LISTEN%'
                                  AND pid <> pg_backend_pid()]])
      if rows then counts.listen_terminated = counts.listen_terminated + rows[1].n end
    end
    if not cut and t >= 20 then
      cut = true
      say("partition: w%d cut off from PostgreSQL", NW)
      proxy:kill("STOP", { group = true })
    end
    if cut and not healed and t >= 30 then
      healed = true
      proxy:kill("CONT", { group = true })
      say("partition healed")
    end
    if not fast and t >= 40 then fast = true; restart_pg("fast") end
    if not immediate and t >= 70 then immediate = true; restart_pg("immediate") end
  end
end)

-- ---- until the queue drains ----------------------------------------------------

local FAULTS_END = 75                     -- s: the immediate restart at 70, and its recovery
local TOP_UP_BELOW = 3 * NW * tonumber(CONC)
local TOP_UP = math.max(100, math.floor(N / 5))
local batch = { n = 0, pending = false }  -- the last top-up; pending until the database shows it

-- Settles the pending batch: counted once all its rows are there; when
-- none are (its INSERT failed), sent again if resend, else given up.
-- Nothing happens while the database does not answer.
local function settle(resend)
  if not batch.pending then return end
  local rows = try_query("SELECT count(*)::int AS n FROM tasks WHERE payload->>'batch' = $1", tostring(batch.n))
  if not rows then return end
  if rows[1].n == TOP_UP then
    total, batch.pending = total + TOP_UP, false
  elseif rows[1].n ~= 0 then   -- one INSERT: all or nothing
    error("top-up batch " .. batch.n .. " has " .. rows[1].n .. " of its " .. TOP_UP .. " tasks")
  elseif resend then
    try_query(ENQUEUE_SQL, TICK_FILE, TICKS, batch.n, TOP_UP)
  else
    batch.pending = false
  end
end

local started = vg.now()
while vg.now() - started < LIMIT do
  vg.sleep(2, { interruptible = false })
  settle(true)
  local left = remaining()
  local faulting = vg.now() - started < FAULTS_END
  if left then say("%d tasks left after %.0f s", left, vg.now() - started) end
  if faulting and left and left < TOP_UP_BELOW and not batch.pending then
    batch.n, batch.pending = batch.n + 1, true
    say("topping up: %d more tasks (batch %d) until the faults are over", TOP_UP, batch.n)
    try_query(ENQUEUE_SQL, TICK_FILE, TICKS, batch.n, TOP_UP)
  elseif left == 0 and not faulting and not batch.pending then
    break
  end
end
faults:cancel()
pcall(faults.join, faults)
proxy:kill("CONT", { group = true })
for i = 1, NW do workers[i]:kill("TERM") end
for i = 1, NW do workers[i]:wait(60) end
proxy:kill("KILL", { group = true })
proxy:wait(10)
local took = vg.now() - started

-- ---- the count ------------------------------------------------------------------

local function one(sql, ...) return db.query(sql, ...)[1].n end
settle(false)   -- (after a time-out: a batch whose INSERT never landed is not counted)
assert(not batch.pending, "the database did not answer at the end")
local rows_in_table = one("SELECT count(*)::int AS n FROM tasks")
assert(rows_in_table == total, string.format("%d tasks in the table, %d enqueued", rows_in_table, total))
local completed = one("SELECT count(*)::int AS n FROM tasks WHERE status = 'completed'")
local failed_rows = db.query("SELECT id, attempts, last_error FROM tasks WHERE status = 'failed' ORDER BY id")
local lost = total - completed - #failed_rows
local twice = one([[SELECT count(*)::int AS n FROM (SELECT task_id FROM chaos_events
                     WHERE kind = 'completed' GROUP BY task_id HAVING count(*) > 1) x]])
local INFRA = "(pool_timeout|connection_lost|connect_failed|database_unreachable|57P0|terminating connection)"
local infra = db.query([[SELECT count(*)::int AS errors,
                                count(*) FILTER (WHERE attempts_after >= attempts_before)::int AS spent
                           FROM chaos_events WHERE kind <> 'completed' AND error ~ $1]], INFRA)[1]
local runs = ticks.runs(TICK_FILE)
local overlaps = ticks.overlaps(runs)

-- Kill to rerun: for each SIGKILL, the tasks the killed worker was running
-- (its run ticked in the 0.2 s before), and when the next run of each began.
-- Split in two at the task's first error event after the kill (chaos_events:
-- the rescue that gave it back): kill to given back, given back to rerun.
local given_back = {}   -- task -> wall seconds of its error events, in order
for _, e in ipairs(db.query([[SELECT task_id, extract(epoch FROM at)::float8 AS at FROM chaos_events
                               WHERE kind <> 'completed' ORDER BY at]])) do
  given_back[e.task_id] = given_back[e.task_id] or {}
  table.insert(given_back[e.task_id], e.at)
end
local function first_after(list, t)
  for _, at in ipairs(list or {}) do if at >= t then return at end end
end
local delays, to_back, back_to_rerun, slow = {}, {}, {}, {}
local run_start = wall_ns() - math.floor((vg.now() - started) * 1e9)
for _, k in ipairs(kills) do
  for task, list in pairs(runs) do
    for i = 1, #list - 1 do
      local r = list[i]
      if r.worker == k.worker and r.first <= k.at and r.last >= k.at - 200000000 then
        local d = (list[i + 1].first - k.at) / 1e9
        delays[#delays + 1] = d
        local back = first_after(given_back[task], k.at / 1e9)
        if back and back <= list[i + 1].first / 1e9 then
          to_back[#to_back + 1] = back - k.at / 1e9
          back_to_rerun[#back_to_rerun + 1] = list[i + 1].first / 1e9 - back
        end
        if d > 8 then slow[#slow + 1] = { task = task, seconds = d, kill = (k.at - run_start) / 1e9 } end
      end
    end
  end
end
for _, l in ipairs({ delays, to_back, back_to_rerun }) do table.sort(l) end
local function pct(p, l)
  l = l or delays
  if #l == 0 then return 0 end
  return l[math.max(1, math.ceil(#l * p))]
end

local report = {
  tasks = total, completed = completed, failed = #failed_rows, lost = lost,
  overlapping = #overlaps, completed_twice = twice,
  infra_errors = infra.errors, attempts_spent_on_infra_errors = infra.spent,
  kills = counts.kills, listen_sessions_terminated = counts.listen_terminated,
  postgres_restarts = counts.restarts, reruns_after_kill = #delays,
  kill_to_rerun_p50 = pct(0.5), kill_to_rerun_max = delays[#delays] or 0,
  kill_to_given_back_p50 = pct(0.5, to_back), given_back_to_rerun_p50 = pct(0.5, back_to_rerun),
  seconds = took,
}
print(string.format([[
make chaos: %d tasks, %d workers x %s, %.0f s
  SIGKILLs %d, LISTEN sessions terminated %d, PostgreSQL restarts %d, one 10 s partition
  lost %d   overlapping %d   completed twice %d   failed %d
  infrastructure errors %d, attempts spent on them %d
  kill to rerun (%d reruns): p50 %.2f s, max %.2f s
    of which kill to given back p50 %.2f s (p90 %.2f), given back to rerun p50 %.2f s (p90 %.2f)]],
  total, NW, CONC, took, counts.kills, counts.listen_terminated, counts.restarts,
  lost, #overlaps, twice, #failed_rows, infra.errors, infra.spent,
  #delays, report.kill_to_rerun_p50, report.kill_to_rerun_max,
  pct(0.5, to_back), pct(0.9, to_back), pct(0.5, back_to_rerun), pct(0.9, back_to_rerun)))
-- A slow rerun with what the database recorded of its task: its errors
-- and its completion (chaos_events), in seconds from the start.
for _, sl in ipairs(slow) do
  print(string.format("  rerun slower than 8 s: task %d, %.1f s after the kill at %.0f s", sl.task, sl.seconds,
                      sl.kill))
  for _, e in ipairs(db.query([[SELECT extract(epoch FROM at)::float8 - $2::float8 AS t, kind, error,
                                       attempts_before, attempts_after
                                  FROM chaos_events WHERE task_id = $1 ORDER BY at]], sl.task, run_start / 1e9)) do
    print(string.format("    %.1f s: %s, attempts %d -> %d%s", e.t, e.kind, e.attempts_before, e.attempts_after,
                        type(e.error) == "string" and (": " .. e.error) or ""))
  end
end
for _, f in ipairs(failed_rows) do
  print(string.format("  failed: task %d after %d attempts: %s", f.id, f.attempts, f.last_error))
end
for _, o in ipairs(overlaps) do
  print(string.format("  overlap: task %d, %.3f s (pids %s, %s)", o.task, o.seconds, o.pids[1], o.pids[2]))
end
local out = os.getenv("CHAOS_OUT")
if out then
  local f = assert(io.open(out, "w"))
  f:write(cjson.encode(report), "\n")
  f:close()
end
os.remove(TICK_FILE)
db.close()
if lost > 0 or #overlaps > 0 or twice > 0 or infra.spent > 0 then os.exit(1) end
