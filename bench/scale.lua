-- bench/scale.lua: the scale matrix (make bench, make bench-scale) and the
-- claim matrix (make claim-matrix) of issue 13, run by bench/driver.lua.
--
-- Both measure over cells: channels x channels with work x backlog. Each
-- cell's queue is built once, in a database of its own: channels c1..cN,
-- then the backlog by one INSERT ... SELECT generate_series spread round
-- the channels with work (the fair-key trigger keys the tasks as it does
-- any enqueue), then VACUUM ANALYZE. Every run gets a fresh copy of it
-- (CREATE DATABASE ... TEMPLATE), so all runs of a cell start from the same
-- state, and is dropped after it. A run lasts BENCH_SCALE_SECONDS or until
-- half the backlog is done, whichever comes first: the backlog stays
-- between its size and half of it, never drained.
--
-- Scale matrix runs, per cell:
--   fifo   pgbench, 10 clients: the claim a user writes by hand (ORDER BY id
--          FOR UPDATE SKIP LOCKED, with its own partial index) and a plain
--          complete, one task per transaction
--   1x10   one worker, VG_CONCURRENCY 10, unbatched
--   batch  one worker, VG_BATCH=on, VG_CONCURRENCY BENCH_BATCH_CONCURRENCY
-- all cells' runs in turn, BENCH_SCALE_ROUNDS times (rounds interleaved);
-- then enqueue: 10 pgbench producers into tasks and into a copy of it
-- without the fair-key trigger, in interleaved rounds. Figures are medians
-- over the rounds, ratios medians of the rounds' ratios.
--
-- Claim matrix runs, per cell: pgbench, 10 clients, claim-and-complete with
-- this tree's CLAIM_SQL (fair), with the claim before sql/005 (probe, on a
-- database bench/run.sh migrated to that commit: BENCH_OLD_DB, its
-- vg/queue.lua in BENCH_OLD_LUA) and the plain FIFO claim, all with the same
-- plain complete; then the same enqueue rounds.
local vg = require "vg"
local proc = require "vg.proc"
local queue = require "vg.queue"
local C = require "common"        -- bench/common.lua

local getenv = os.getenv
local q, q1, say, nap, round, pct, median = C.q, C.q1, C.say, C.nap, C.round, C.pct, C.median
local SMOKE, TMP = C.SMOKE, C.TMP

local M = {}

-- ---------------------------------------------------------------- sizes

-- Thousands separated: 1000000 -> "1,000,000".
local function grouped(n)
  return (tostring(math.floor(n)):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

-- "10:10 1000:all" -> { {channels = 10, busy = 10, label = "10 x 10"}, ... }
local function parse_matrix(s)
  local cells = {}
  for ch, busy in s:gmatch("(%d+):(%w+)") do
    ch = math.floor(tonumber(ch))
    local b = busy == "all" and ch or math.floor(assert(tonumber(busy), "matrix: " .. busy))
    cells[#cells + 1] = { channels = ch, busy = math.min(b, ch),
                          label = grouped(ch) .. " x " .. (busy == "all" and "all" or grouped(b)) }
  end
  return cells
end

local function parse_list(s)
  local l = {}
  for n in s:gmatch("%d+") do l[#l + 1] = math.floor(tonumber(n)) end
  return l
end

-- part: "scale" or "claims".
local function sizes(part)
  local claims = part == "claims"
  local matrix = SMOKE and "10:10 100:all" or "10:10 1000:10 1000:all 10000:10 10000:all"
  local backlogs = SMOKE and "300" or (claims and "60000" or "20000 1000000")
  return {
    matrix = parse_matrix(getenv("BENCH_SCALE_MATRIX") or matrix),
    backlogs = parse_list(getenv("BENCH_SCALE_BACKLOGS") or backlogs),
    rounds = math.floor(C.num_env("BENCH_SCALE_ROUNDS", (SMOKE or claims) and 1 or 3)),
    seconds = C.num_env("BENCH_SCALE_SECONDS", SMOKE and 1 or (claims and 8 or 4)),
    clients = 10,
    batch_concurrency = math.floor(C.num_env("BENCH_BATCH_CONCURRENCY", SMOKE and 20 or 1000)),
    enqueue_rounds = math.floor(C.num_env("BENCH_ENQUEUE_ROUNDS", SMOKE and 1 or 3)),
    enqueue_seconds = C.num_env("BENCH_ENQUEUE_SECONDS", SMOKE and 1 or 3),
    enqueue_slices = math.floor(C.num_env("BENCH_ENQUEUE_SLICES", SMOKE and 1 or 4)),
  }
end

-- ---------------------------------------------------------------- scripts

-- The claim a user writes by hand, and a plain complete (pgbench variables
-- :worker and :id; the claim's lease as a literal).
local FIFO_CLAIM = [[
UPDATE tasks SET status = 'claimed', claimed_by = :worker, claimed_at = now(), updated_at = now(),
       lease_expires_at = now() + interval '60 seconds', attempts = attempts + 1,
       lease_token = lease_token + 1
 WHERE id = (SELECT id FROM tasks WHERE status = 'pending' AND run_at <= now()
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id]]
local PLAIN_COMPLETE = [[
UPDATE tasks SET status = 'completed', updated_at = now(), completed_at = now()
 WHERE id = :id AND status = 'claimed']]
-- Its index, made on each run's copy before a FIFO run only (the other
-- runs would pay for keeping it).
local FIFO_INDEX = "CREATE INDEX tasks_fifo_idx ON tasks (id) WHERE status = 'pending'"
M.FIFO_INDEX = FIFO_INDEX

local function script(name, claim, complete)
  local path = TMP .. "/" .. name .. ".sql"
  C.write_file(path, C.pgbench_script(claim, complete))
  return path
end

-- The FIFO claim-and-complete as a pgbench script (also a row of the main table).
function M.fifo_script() return script("fifo", FIFO_CLAIM, PLAIN_COMPLETE) end

-- ---------------------------------------------------------------- databases

local BASE -- the driver's database name: every database made here starts with it

local function drop(name)
  q("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
end

-- A copy of database src: files copied (no WAL for the whole database, so
-- no checkpoint falls inside the next run), where the server has it.
local function copy_db(name, src)
  drop(name)
  local ok = pcall(q, "CREATE DATABASE " .. name .. " TEMPLATE " .. src .. " STRATEGY FILE_COPY")
  if not ok then q("CREATE DATABASE " .. name .. " TEMPLATE " .. src) end -- before PostgreSQL 15
end

-- An empty database with this tree's schema (lua/migrate.lua).
local function schema_db()
  local name = BASE .. "_schema"
  drop(name)
  q("CREATE DATABASE " .. name)
  local r = proc.run({ C.VG_HOST, C.LUA_DIR .. "/migrate.lua" }, { timeout = 120,
    env = { DATABASE_URL = C.url_of(name), LOG_LEVEL = "warning" } })
  if r.code ~= 0 then error("lua/migrate.lua failed: " .. (r.stdout .. r.stderr):sub(-800), 0) end
  return name
end

-- A cell's queue in database name, a copy of src (an empty schema).
local function build(name, src, cell, backlog)
  local t0 = vg.now()
  copy_db(name, src)
  local cq, close = C.connect(name)
  local ok, err = pcall(function()
    cq("INSERT INTO channels (id) SELECT 'c' || g FROM generate_series(1, $1::int) g", cell.channels)
    cq([[INSERT INTO tasks (channel_id, pipeline)
         SELECT 'c' || (1 + g % $1::int), 'noop' FROM generate_series(1, $2::int) g]], cell.busy, backlog)
    cq("VACUUM ANALYZE tasks")
    cq("VACUUM ANALYZE channels")
  end)
  close()
  if not ok then error(err, 0) end
  say("built %s: %s channels, %s with work, %s tasks queued (%.1f s)", name, grouped(cell.channels),
      grouped(cell.busy), grouped(backlog), vg.now() - t0)
end

-- Whether half of the backlog has been taken: whether the task in the
-- middle has. The fill gives the tasks fair keys in id order (a round of
-- keys is a run of ids, fair_seq the id's order), so the fair claim takes
-- them in id order, as the FIFO claim does; one primary key lookup, cheap
-- enough to ask every 20 ms without taking CPU from the run.
local function half_taken(cq, backlog)
  local r = cq("SELECT status <> 'pending' AS taken FROM tasks WHERE id = $1", backlog // 2)[1]
  return r ~= nil and r.taken
end

-- fn(dbname, query) on a fresh copy of template, with prepare(query) run on
-- it first; the copy is dropped afterwards, also on failure.
local function on_copy(template, prepare, fn)
  local name = BASE .. "_run"
  copy_db(name, template)
  local cq, close = C.connect(name)
  local ok, res, check = pcall(function()
    if prepare then prepare(cq) end
    q("CHECKPOINT")
    return fn(name, cq)
  end)
  close()
  pcall(drop, name)
  if not ok then error(res, 0) end
  return res, check
end

-- ---------------------------------------------------------------- runs

local function with_fifo_index(cq) cq(FIFO_INDEX) end

-- pgbench with script on a copy of template: 10 clients, until half the
-- backlog is done or the time is up.
local function raw_run(S, template, backlog, path, prepare)
  return on_copy(template, prepare, function(dbname, cq)
    return C.run_pgbench { dbname = dbname, query = cq, clients = S.clients, script = path,
      per_client = math.max(1, math.ceil(backlog / 2 / S.clients)), timeout = S.seconds,
      log = TMP .. "/pgbench-log" }
  end)
end

-- One timed worker (bench/timed_worker.lua) on a copy of template, until
-- half the backlog is done or the time is up; its claims' latencies.
local function worker_run(S, template, backlog, concurrency, batch, name)
  return on_copy(template, nil, function(dbname, cq)
    local claims_log = TMP .. "/claims-" .. name .. ".txt"
    os.remove(claims_log)
    local res, check = C.run_workers { name = name, dbname = dbname, query = cq, limit = S.seconds,
      script = C.ROOT .. "/bench/timed_worker.lua", poll = 0.02,
      env = { VG_CONCURRENCY = tostring(concurrency), VG_BATCH = batch and "on" or "off",
              BENCH_CLAIM_LOG = claims_log, BENCH_WORKER_SCRIPT = C.LUA_DIR .. "/worker.lua",
              BENCH_LUA_DIR = C.LUA_DIR },
      finished = function() return half_taken(cq, backlog) end }
    local ms, empty = {}, 0
    for line in io.lines(claims_log) do
      local t, n = line:match("^(%S+) (%d+)")
      if t then
        ms[#ms + 1] = tonumber(t)
        if n == "0" then empty = empty + 1 end
      end
    end
    res.claims, res.empty_claims = #ms, empty
    res.claim_p50_ms, res.claim_p99_ms = round(pct(ms, 50), 3), round(pct(ms, 99), 3)
    res.concurrency, res.batch = concurrency, batch
    return res, check
  end)
end

-- ---------------------------------------------------------------- enqueue

-- tasks_copy: tasks as it is (columns, defaults, indexes, foreign key,
-- triggers) but without the fair-key triggers.
local COPY_SQL = {
  "CREATE TABLE tasks_copy (LIKE tasks INCLUDING ALL)",
  [[SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint
     WHERE conrelid = 'tasks'::regclass AND contype = 'f']],
  [[SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger
     WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal
       AND tgname NOT LIKE 'tasks_fair_key%']],
}

local function enqueue_scripts()
  local function enq(name, tbl, channel)
    local path = TMP .. "/" .. name .. ".sql"
    C.write_file(path, (channel and "" or "\\set c random(1, 10)\n") .. "INSERT INTO " .. tbl
      .. " (channel_id, pipeline, payload) VALUES (" .. (channel or "'c' || :c") .. ", 'noop', '{}');\n")
    return path
  end
  return { spread = enq("enq", "tasks"), spread_copy = enq("enq_copy", "tasks_copy"),
           one = enq("enq_one", "tasks", "'c1'"), one_copy = enq("enq_one_copy", "tasks_copy", "'c1'") }
end

local function tps(path, dbname, seconds, clients)
  local r = proc.run({ C.PGBENCH, "-n", "-M", C.PGBENCH_MODE, "-c", clients, "-j", math.min(clients, C.nproc()),
                       "-T", math.max(1, math.floor(seconds)), "-f", path, C.url_of(dbname) },
                     { timeout = seconds + 30, max_output = 1 << 16, env = C.PGBENCH_ENV })
  local v = r.stdout and tonumber(r.stdout:match("tps = ([%d%.]+) %(without"))
  if not v then error("pgbench (" .. path .. "): " .. (r.stderr or ""):sub(-600), 0) end
  return v
end

-- 10 producers, single-row INSERTs: over 10 channels and all on one, into
-- tasks and into tasks_copy, interleaved rounds. A round measures each
-- pair (tasks and its copy) in S.enqueue_slices short runs per table,
-- alternating in both orders (ABBA...; the next round starts with the
-- other table): on this kind of machine a run's rate drifts by a quarter
-- from one run to the next, more than the trigger's cost, and a drift
-- then falls on both tables alike. A table's rate in a round is the mean
-- of its runs. Each run starts after a checkpoint, as the claim runs do,
-- so none pays for the dirty pages of the one before (the first came
-- right after the cells' runs).
local function run_enqueue(S, schema)
  if C.PGBENCH == "" then error("pgbench not found (Debian: apt-get install postgresql)", 0) end
  local name = BASE .. "_enqueue"
  copy_db(name, schema)
  local cq, close = C.connect(name)
  local ok, err = pcall(function()
    cq("INSERT INTO channels (id) SELECT 'c' || g FROM generate_series(1, 10) g")
    cq(COPY_SQL[1])
    for _, r in ipairs(cq(COPY_SQL[2])) do cq("ALTER TABLE tasks_copy ADD " .. r.def) end
    for _, r in ipairs(cq(COPY_SQL[3])) do
      cq((r.def:gsub(" ON ([%w_%.\"]-)tasks ", " ON %1tasks_copy ", 1)))
    end
  end)
  close()
  if not ok then pcall(drop, name) error(err, 0) end
  local p = enqueue_scripts()
  local res = { rounds = {}, seconds = S.enqueue_seconds, slices = S.enqueue_slices, producers = S.clients }
  local function run(k)
    say("enqueue: %s, %d producers, %s s", k, S.clients, S.enqueue_seconds)
    q("CHECKPOINT")
    return tps(p[k], name, S.enqueue_seconds, S.clients)
  end
  ok, err = pcall(function()
    for i = 1, S.enqueue_rounds do
      local r = {}
      for _, pair in ipairs({ { "spread", "spread_copy" }, { "one", "one_copy" } }) do
        local sum = { [pair[1]] = 0, [pair[2]] = 0 }
        for j = 1, S.enqueue_slices do
          local first = (i + j) % 2 == 0 and 1 or 2
          for _, k in ipairs({ pair[first], pair[3 - first] }) do sum[k] = sum[k] + run(k) end
        end
        for k, v in pairs(sum) do r[k] = round(v / S.enqueue_slices, 1) end
      end
      r.ratio, r.ratio_one = r.spread / r.spread_copy, r.one / r.one_copy
      res.rounds[#res.rounds + 1] = r
    end
  end)
  pcall(drop, name)
  if not ok then error(err, 0) end
  local function med(k)
    local l = {}
    for _, r in ipairs(res.rounds) do l[#l + 1] = r[k] end
    return median(l)
  end
  for _, k in ipairs({ "spread", "spread_copy", "one", "one_copy" }) do res[k] = med(k) end
  res.ratio, res.ratio_one = round(med("ratio"), 3), round(med("ratio_one"), 3)
  for _, r in ipairs(res.rounds) do r.ratio, r.ratio_one = round(r.ratio, 3), round(r.ratio_one, 3) end
  return res
end

-- ---------------------------------------------------------------- rounds

-- The cells of one backlog at their fewest and most channels with work.
local function extremes(cells, backlog)
  local lo, hi
  for _, c in ipairs(cells) do
    if c.backlog == backlog then
      if not lo or c.busy < lo.busy or (c.busy == lo.busy and c.channels < lo.channels) then lo = c end
      if not hi or c.busy > hi.busy or (c.busy == hi.busy and c.channels > hi.channels) then hi = c end
    end
  end
  return lo, hi
end

-- The cells in the order a round runs them: per backlog, the two cells
-- the flatness targets compare (extremes) first and next to each other,
-- then the rest; every other round backwards. So those two run within
-- seconds of each other, each first in turn, and a drift of the machine's
-- speed over the minutes of a round falls on both alike.
local function round_order(cells)
  local seq, seen = {}, {}
  for _, c in ipairs(cells) do
    if not seen[c.backlog] then
      seen[c.backlog] = true
      local lo, hi = extremes(cells, c.backlog)
      seq[#seq + 1] = lo
      if hi ~= lo then seq[#seq + 1] = hi end
      for _, d in ipairs(cells) do
        if d.backlog == c.backlog and d ~= lo and d ~= hi then seq[#seq + 1] = d end
      end
    end
  end
  return seq
end

-- Runs kinds (name -> function(cell, template, backlog, round)) over every
-- cell, all cells in turn (round_order), S.rounds times. Returns the cells
-- with, per kind, the list of every round's result (false: the run failed)
-- and the errors; one TAP line per kind (fails only when some cell has no
-- result).
local function run_rounds(S, cells, kinds, order)
  local errors = {}
  local seq = round_order(cells)
  for r = 1, S.rounds do
    for i = 1, #seq do
      local cell = r % 2 == 1 and seq[i] or seq[#seq + 1 - i]
      for _, kind in ipairs(order) do
        say("round %d/%d, %s, %s queued: %s", r, S.rounds, cell.label, cell.queued, kind)
        local ok, res, check = pcall(kinds[kind], cell, r)
        local err
        if not ok then
          err, res = res, nil
        elseif check then
          local cok, cerr = pcall(check)
          if not cok then err = cerr end
        end
        C.stop_all()
        cell.runs[kind] = cell.runs[kind] or {}
        cell.runs[kind][r] = (not err) and res or false
        if err then
          errors[kind] = errors[kind] or {}
          table.insert(errors[kind], string.format("%s, %s queued, round %d: %s", cell.label,
                                                   cell.queued, r, C.err_text(err)))
        end
        if vg.shutdown_requested() then error("interrupted by a signal", 0) end
      end
    end
  end
  return errors
end

-- Median over a cell's rounds of kind of field (nil entries skipped).
local function med(cell, kind, field)
  local l = {}
  for _, res in pairs(cell.runs[kind] or {}) do
    local v = res and (type(field) == "function" and field(res) or res[field])
    if v then l[#l + 1] = v end
  end
  return median(l), #l
end

-- The rounds' ratios a / b of field between two cells' kinds, and their median.
local function ratios(S, ca, ka, cb, kb, field)
  local l = {}
  for r = 1, S.rounds do
    local a, b = ca.runs[ka] and ca.runs[ka][r], cb.runs[kb] and cb.runs[kb][r]
    local va, vb = a and field(a), b and field(b)
    if va and vb and vb > 0 then l[#l + 1] = round(va / vb, 3) end
  end
  return { median = round(median(l), 3), rounds = l }
end

local function cells_of(S)
  local cells = {}
  for _, backlog in ipairs(S.backlogs) do
    for _, m in ipairs(S.matrix) do
      cells[#cells + 1] = { channels = m.channels, busy = m.busy, label = m.label, backlog = backlog,
                            queued = grouped(backlog),
                            runs = {} }
    end
  end
  return cells
end

local function template_name(prefix, cell)
  return string.format("%s_%s_%d_%d_%d", BASE, prefix, cell.backlog, cell.channels, cell.busy)
end

local function tap_kinds(desc, order, cells, errors)
  for _, kind in ipairs(order) do
    local missing = {}
    for _, cell in ipairs(cells) do
      if select(2, med(cell, kind, "tasks_per_s")) == 0 then
        missing[#missing + 1] = cell.label .. ", " .. cell.queued .. " queued"
      end
    end
    local diag = #missing > 0 and ("no figure for " .. table.concat(missing, "; ") .. "\n"
      .. table.concat(errors[kind] or {}, "\n")) or nil
    C.tap(#missing == 0, string.format(desc, kind), diag)
  end
end

-- Every template database made here, dropped at the end.
local made = {}

local function build_all(cells, prefix, src)
  for _, cell in ipairs(cells) do
    cell.template = template_name(prefix, cell)
    made[#made + 1] = cell.template
    build(cell.template, src, cell, cell.backlog)
  end
end

local function drop_made()
  for _, name in ipairs(made) do pcall(drop, name) end
  made = {}
end

local function claim_mean(res) return res.claim and res.claim.mean_ms end
local function rate(res) return res.tasks_per_s end
local function pg_cpu(res) return res.pg_cpu_ms_per_task end

-- A cell's figures, per kind of run: medians over the rounds.
local FIGURES = {
  { "tasks_per_s", "tasks_per_s", 1 },
  { "pg_cpu_ms_per_task", "pg_cpu_ms_per_task", 4 },
  { "claim_mean_ms", claim_mean, 4 },
  { "claim_sd_ms", function(r) return r.claim and r.claim.sd_ms end, 4 },
  { "claim_p50_ms", "claim_p50_ms", 3 },
  { "claim_p99_ms", "claim_p99_ms", 3 },
  { "transaction_p50_ms", "transaction_p50_ms", 3 },
  { "transaction_p99_ms", "transaction_p99_ms", 3 },
}

local function figures(cell, order)
  local f = { channels = cell.channels, busy = cell.busy, label = cell.label, backlog = cell.backlog,
              queued = cell.queued }
  for _, kind in ipairs(order) do
    local k = { runs = cell.runs[kind], rounds = select(2, med(cell, kind, "tasks_per_s")),
                rounds_at_time_limit = select(2, med(cell, kind, function(r) return r.stopped_at_limit and 1 end)) }
    for _, fig in ipairs(FIGURES) do k[fig[1]] = round(med(cell, kind, fig[2]), fig[3]) end
    f[kind] = k
  end
  return f
end

-- A part: the schema and the cells' queues built (build(schema) builds
-- them), then runs(schema) -> kinds, order; the rounds; enqueue. Returns
-- the cells' figures, the cells and the enqueue figures. TAP lines named
-- after title.
local function measure_part(title, S, cells, build, runs)
  local schema
  local ok, err = pcall(function()
    schema = schema_db()
    made[#made + 1] = schema
    build(schema)
  end)
  C.tap(ok, title .. ": the cells' queues built", not ok and C.err_text(err) or nil)
  if not ok then return {} end
  local kinds, order = runs(schema)
  local errors = run_rounds(S, cells, kinds, order)
  tap_kinds(title .. ": %s measured in every cell", order, cells, errors)
  local enq
  ok, enq = pcall(run_enqueue, S, schema)
  C.tap(ok, title .. ": enqueue measured", not ok and C.err_text(enq) or nil)
  drop_made()
  local out = {}
  for _, cell in ipairs(cells) do out[#out + 1] = figures(cell, order) end
  return out, ok and enq or nil
end

local function params(S)
  return { rounds = S.rounds, seconds = S.seconds, clients = S.clients, backlogs = S.backlogs,
           batch_concurrency = S.batch_concurrency, enqueue_rounds = S.enqueue_rounds,
           enqueue_seconds = S.enqueue_seconds, enqueue_slices = S.enqueue_slices }
end

-- ---------------------------------------------------------------- scale matrix

-- The targets (issue 13), each the median of the rounds' ratios.
local function scale_targets(S, cells, enq)
  local targets = {}
  local base = extremes(cells, S.backlogs[1])
  if base then
    local where = string.format("%s, %s queued", base.label, base.queued)
    targets[#targets + 1] = { measure = "1 x 10 unbatched / plain FIFO raw at 10 clients, tasks/s (" .. where .. ")",
      ratio = ratios(S, base, "1x10", base, "fifo", rate), cmp = ">=", bound = 0.9 }
    targets[#targets + 1] = { measure = "PostgreSQL CPU per task, 1 x 10 / plain FIFO raw (" .. where .. ")",
      ratio = ratios(S, base, "1x10", base, "fifo", pg_cpu), cmp = "<=", bound = 1.2 }
  end
  for _, backlog in ipairs(S.backlogs) do
    local lo, hi = extremes(cells, backlog)
    if lo and hi and lo ~= hi then
      targets[#targets + 1] = { measure = string.format(
        "claim statement's mean execution (pg_stat_statements, 1 x 10), %s / %s, %s queued",
        hi.label, lo.label, grouped(backlog)), ratio = ratios(S, hi, "1x10", lo, "1x10", claim_mean),
        cmp = "<=", bound = 1.25 }
    end
  end
  if enq then
    local l = {}
    for _, r in ipairs(enq.rounds) do l[#l + 1] = r.ratio end
    targets[#targets + 1] = { measure = string.format(
      "enqueue, %d pgbench producers over 10 channels: tasks / a copy without the fair-key trigger", S.clients),
      ratio = { median = enq.ratio, rounds = l }, cmp = ">=", bound = 0.8 }
  end
  for _, t in ipairs(targets) do
    local v = t.ratio.median
    if v then t.met = (t.cmp == ">=" and v >= t.bound) or (t.cmp == "<=" and v <= t.bound) end
  end
  return targets
end

local function scale_matrix()
  local S = sizes("scale")
  local cells = cells_of(S)
  local out = { params = params(S) }
  out.cells, out.enqueue = measure_part("scale matrix", S, cells,
    function(schema) build_all(cells, "s", schema) end,
    function()
      local fifo = M.fifo_script()
      return {
        fifo = function(cell) return raw_run(S, cell.template, cell.backlog, fifo, with_fifo_index) end,
        ["1x10"] = function(cell)
          return worker_run(S, cell.template, cell.backlog, 10, false, "scale-1x10")
        end,
        batch = function(cell)
          return worker_run(S, cell.template, cell.backlog, S.batch_concurrency, true, "scale-batch")
        end,
      }, { "fifo", "1x10", "batch" }
    end)
  for i, cell in ipairs(cells) do
    out.cells[i].share_of_fifo = ratios(S, cell, "1x10", cell, "fifo", rate)
  end
  out.targets = scale_targets(S, cells, out.enqueue)
  return out
end

-- ---------------------------------------------------------------- claim matrix

local function claim_matrix()
  local S = sizes("claims")
  local old_db, old_lua = getenv("BENCH_OLD_DB"), getenv("BENCH_OLD_LUA")
  if old_db == "" or old_lua == "" then old_db, old_lua = nil, nil end
  local cells, old_cells = cells_of(S), old_db and cells_of(S) or {}
  local out = { params = params(S), probe_ref = getenv("BENCH_OLD_REF") }
  out.cells, out.enqueue = measure_part("claim matrix", S, cells,
    function(schema)
      build_all(cells, "c", schema)
      build_all(old_cells, "o", old_db)
    end,
    function()
      local fair = script("fair", C.claim_sql(queue.CLAIM_SQL), PLAIN_COMPLETE)
      local fifo = M.fifo_script()
      local kinds = {
        fair = function(cell) return raw_run(S, cell.template, cell.backlog, fair) end,
        fifo = function(cell) return raw_run(S, cell.template, cell.backlog, fifo, with_fifo_index) end,
      }
      if not old_lua then return kinds, { "fair", "fifo" } end
      local probe = script("probe", C.claim_sql(dofile(old_lua .. "/vg/queue.lua").CLAIM_SQL), PLAIN_COMPLETE)
      local old = {}
      for i, cell in ipairs(cells) do old[cell] = old_cells[i] end
      kinds.probe = function(cell) return raw_run(S, old[cell].template, cell.backlog, probe) end
      return kinds, { "fair", "probe", "fifo" }
    end)
  return out
end

-- The databases made are dropped however the part ends (an interrupted
-- run raises).
local function dropping(fn)
  BASE = q1("SELECT current_database() AS d").d
  local ok, res = pcall(fn)
  drop_made()
  if not ok then error(res, 0) end
  return res
end

function M.run_scale() return dropping(scale_matrix) end
function M.run_claims() return dropping(claim_matrix) end

return M
