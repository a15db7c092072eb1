-- bench/report.lua: the benchmark's tables (markdown) and notes, made from
-- the driver's results; no I/O. Targets are those of issues 6 and 13;
-- "met" and "missed" are information, never assertions.
local M = {}

local function fmt(v, digits)
  if v == nil then return "n/a" end
  if math.type(v) == "integer" then return tostring(v) end
  return string.format("%." .. (digits or 1) .. "f", v)
end

local function target(targets, name, value, cmp, bound, text)
  local met
  if value ~= nil then
    if cmp == "<=" then met = value <= bound else met = value >= bound end
  end
  targets[#targets + 1] = { measure = name, value = value, target = text, met = met }
  if met == nil then return "n/a" end
  return met and "met" or "**missed**"
end

local function share(a, b)
  if not a or not b or b == 0 then return nil end
  return a / b
end

-- A markdown table, columns padded; left: the columns aligned left (the
-- others are figures, aligned right).
local function markdown(head, rows, left)
  local w = {}
  for i, h in ipairs(head) do w[i] = #h end
  for _, r in ipairs(rows) do
    for i = 1, #head do w[i] = math.max(w[i], #(r[i] or "")) end
  end
  local out = {}
  local function line(r)
    local cells = {}
    for i = 1, #head do
      local c = r[i] or ""
      cells[i] = left[i] and (c .. string.rep(" ", w[i] - #c)) or (string.rep(" ", w[i] - #c) .. c)
    end
    out[#out + 1] = "| " .. table.concat(cells, " | ") .. " |"
  end
  line(head)
  local sep = {}
  for i = 1, #head do
    sep[i] = string.rep("-", w[i] + 1) .. (left[i] and "-" or ":")
  end
  out[#out + 1] = "|" .. table.concat(sep, "|") .. "|"
  for _, r in ipairs(rows) do line(r) end
  return out
end

local function build_table(results, targets)
  local rows = {}
  local function row(...) rows[#rows + 1] = { ... } end
  local T, R = results.throughput, results.raw
  local function tput(label, key, rawkey, tgt)
    local t, r = T[key], R[rawkey]
    if not t then row(label, "failed", "", "", "", "") return end
    local sh = share(t.tasks_per_s, r and r.tasks_per_s)
    local result
    if tgt == "share" then
      result = target(targets, label .. " share of raw", sh, ">=", 0.9, ">= 90% of raw")
    elseif tgt == "batch" then
      result = target(targets, label, t.tasks_per_s, ">=", 19000, ">= 19,000/s")
    end
    local v = fmt(t.tasks_per_s) .. (t.stopped_at_limit and " *" or "")
    local rv = r and (fmt(r.tasks_per_s) .. (r.stopped_at_limit and " *" or "")) or "n/a"
    row(label, v, rv, sh and string.format("%.0f%%", sh * 100) or "n/a",
        tgt == "share" and ">= 90% of raw" or (tgt == "batch" and ">= 19,000/s" or ""), result or "")
    row("  CPU ms/task: worker / PostgreSQL",
        fmt(t.worker_cpu_ms_per_task, 3) .. " / " .. fmt(t.pg_cpu_ms_per_task, 3),
        r and ("- / " .. fmt(r.pg_cpu_ms_per_task, 3)) or "", "", "", "")
    local function spt(v) return fmt(v, (v and v < 0.1) and 3 or 2) end
  row("  statements/task", spt(t.statements_per_task), r and spt(r.statements_per_task) or "",
        "", "", "")
  end
  tput("throughput 1 worker x 1, tasks/s", "1x1", "single-1", "share")
  tput("throughput 1 worker x 10, tasks/s", "1x10", "single-10", "share")
  local rf, t10 = R["fifo-10"], T["1x10"]
  local shf = share(t10 and t10.tasks_per_s, rf and rf.tasks_per_s)
  row("raw only: plain FIFO SKIP LOCKED claim-and-complete, 10 clients, tasks/s (share: 1 worker x 10)", "",
      rf and (fmt(rf.tasks_per_s) .. (rf.stopped_at_limit and " *" or "")) or "n/a",
      shf and string.format("%.0f%%", shf * 100) or "n/a", "", "")
  row("  CPU ms/task: PostgreSQL", "", rf and ("- / " .. fmt(rf.pg_cpu_ms_per_task, 3)) or "", "", "", "")
  tput("throughput 2 workers x 10, tasks/s (raw: 10 clients)", "2x10", "single-10", nil)
  local bc = results.params.batch_concurrency or 0
  tput(string.format("throughput batched 1 worker x %d, tasks/s (raw: 2 clients, %d per claim)",
                     bc, math.max(2, bc // 2)), "batch", "batched-w", "batch")
  local rb10 = R["batched-10"]
  row("raw only: 10 clients, 10 per claim, tasks/s", "", rb10 and fmt(rb10.tasks_per_s) or "n/a", "", "", "")

  local pk = results.pickup
  if pk then
    local r1 = target(targets, "pickup p50 ms", pk.p50_ms, "<=", 1, "<= 1 ms")
    local r2 = target(targets, "pickup p99 ms", pk.p99_ms, "<=", 2, "<= 2 ms")
    row("pickup p50 / p95 / p99, ms", fmt(pk.p50_ms, 2) .. " / " .. fmt(pk.p95_ms, 2) .. " / " .. fmt(pk.p99_ms, 2),
        "", "", "p50 <= 1, p99 <= 2", (r1 == "met" and r2 == "met") and "met" or
        ((r1 == "n/a" or r2 == "n/a") and "n/a" or "**missed**"))
    row("  enqueue INSERT round trip p50, ms", fmt(pk.enqueue_roundtrip_p50_ms, 2), "", "", "", "")
    row("  pickup after the enqueuer's COMMIT returned p50 / p95 / p99, ms",
        fmt(pk.after_commit_p50_ms, 2) .. " / " .. fmt(pk.after_commit_p95_ms, 2) .. " / "
        .. fmt(pk.after_commit_p99_ms, 2), "", "", "", "")
  else
    row("pickup p50 / p95 / p99, ms", "failed", "", "", "", "")
  end
  local dl = results.delayed
  if dl then
    row("delayed start after run_at p50 / p95 / max, ms",
        fmt(dl.p50_ms, 1) .. " / " .. fmt(dl.p95_ms, 1) .. " / " .. fmt(dl.max_ms, 1), "", "",
        "<= 100 ms", target(targets, "delayed max ms", dl.max_ms, "<=", 100, "<= 100 ms"))
  else
    row("delayed start after run_at, ms", "failed", "", "", "", "")
  end
  local id = results.idle
  if id then
    row("idle RSS / peak RSS, MB", fmt(id.rss_kb and id.rss_kb / 1024, 1) .. " / " ..
        fmt(id.peak_rss_kb and id.peak_rss_kb / 1024, 1), "", "", "<= 6 MB",
        target(targets, "idle RSS MB", id.rss_kb and id.rss_kb / 1024, "<=", 6, "<= 6 MB"))
    if id.pss_kb then
      row("  of which its own: PSS / private, MB", fmt(id.pss_kb / 1024, 1) .. " / " ..
          fmt(id.private_kb and id.private_kb / 1024, 1), "", "", "", "")
    end
    row("idle CPU s per 30 s", fmt(id.cpu_s_per_30s, 4), "", "", "<= 0.01",
        target(targets, "idle CPU s/30 s", id.cpu_s_per_30s, "<=", 0.01, "<= 0.01"))
    row("idle statements/s", fmt(id.statements_per_s, 2), "", "", "<= 0.2",
        target(targets, "idle statements/s", id.statements_per_s, "<=", 0.2, "<= 0.2"))
    row("idle server connections", fmt(id.server_connections), "", "", "<= 2",
        target(targets, "idle connections", id.server_connections, "<=", 2, "<= 2"))
  else
    row("idle cost", "failed", "", "", "", "")
  end
  local ih = results.idle_http
  if ih and id then
    local dcpu = ih.cpu_s_per_30s - id.cpu_s_per_30s
    row("idle CPU s per 30 s with VG_HTTP_PORT (added)", fmt(ih.cpu_s_per_30s, 4) .. " (" .. fmt(dcpu, 4) .. ")",
        "", "", "<= +0.001",
        target(targets, "VG_HTTP_PORT idle CPU added", dcpu, "<=", 0.001, "<= +0.001"))
    local dst = (ih.statements_per_s or 0) - (id.statements_per_s or 0)
    row("idle statements/s with VG_HTTP_PORT (added)", fmt(ih.statements_per_s, 2) .. " (" .. fmt(dst, 2) .. ")",
        "", "", "+0", target(targets, "VG_HTTP_PORT statements added", dst, "<=", 0, "+0"))
  else
    row("idle cost with VG_HTTP_PORT", "failed", "", "", "", "")
  end
  local sc = results.scrapes
  if sc then
    row(string.format("/metrics latency p50 / p99 / max, ms (%d scrapes, %d while busy)", sc.n, sc.busy),
        fmt(sc.p50_ms, 2) .. " / " .. fmt(sc.p99_ms, 2) .. " / " .. fmt(sc.max_ms, 2), "", "", "", "")
  else
    row("/metrics latency", "failed", "", "", "", "")
  end
  local ss = results.startstop
  if ss then
    row("start to worker_started, ms", fmt(ss.to_worker_started_ms, 1), "", "", "", "")
    row("  the binary alone (vg-host --version: exec, shared libraries), ms",
        fmt(ss.exec_floor_ms, 1), "", "", "", "")
    row("start to database_connected, ms", fmt(ss.to_database_connected_ms, 1), "", "", "", "")
    local bound = 15 + (ss.db_connect_ms or 0)
    row("start to ready (first claim), ms", fmt(ss.to_ready_to_claim_ms, 1),
        "connect " .. fmt(ss.db_connect_ms, 2), "", string.format("<= 15 + connect = %.1f", bound),
        target(targets, "start to ready ms", ss.to_ready_to_claim_ms, "<=", bound, "<= 15 ms + connect"))
    row("SIGTERM to exit when idle, ms", fmt(ss.sigterm_to_exit_ms, 1), "", "", "<= 20",
        target(targets, "SIGTERM to exit ms", ss.sigterm_to_exit_ms, "<=", 20, "<= 20 ms"))
  else
    row("start and stop", "failed", "", "", "", "")
  end

  return markdown({ "measure", "vg-host", "raw (pgbench)", "share", "target", "result" }, rows, { [1] = true, [5] = true })
end

-- Lines to print (header, table, notes), the table's lines, the notes, and
-- the target list for the JSON.
local function main_notes(results, P)
  local notes = {
    string.format("Throughput: %d noop tasks queued over %d channels before each run; runs end when "
      .. "the queue is empty or after %s s (* = stopped at that limit; rate from the tasks done); "
      .. "best of %d runs, each worker run right after the pgbench run it is compared with.",
      P.tasks, P.channels, fmt(P.run_limit, 0), P.repeat_runs),
    "Rates from database timestamps: completed / (max(completed_at) - min(claimed_at)).",
  }
  for _, key in ipairs({ "1x1", "1x10", "2x10", "batch" }) do
    local t = results.throughput[key]
    if t and t.statements then
      local parts = {}
      for _, s in ipairs(t.statements) do
        if s.per_task >= 0.001 then
          parts[#parts + 1] = string.format(s.per_task >= 0.1 and "%s %.2f" or "%s %.3f", s.statement, s.per_task)
        end
      end
      notes[#notes + 1] = string.format("Statements per task, %s: %s.", key, table.concat(parts, ", "))
    end
  end
  if results.idle and results.idle.statements then
    local parts = {}
    for _, s in ipairs(results.idle.statements) do parts[#parts + 1] = string.format("%s %d", s.statement, s.calls) end
    notes[#notes + 1] = string.format("Idle statements in %s s: %s.", fmt(results.idle.seconds, 0),
      #parts > 0 and table.concat(parts, ", ") or "none")
  end
  return notes
end

local function pair(a, b, digits)
  if a == nil and b == nil then return "n/a" end
  return fmt(a, digits) .. " / " .. fmt(b, digits)
end

-- The scale matrix (bench/scale.lua): two tables (rates, claim latency),
-- the targets and the enqueue figures.
local function scale_lines(sc, targets)
  local p = sc.params
  local lines = { "", string.format("Scale matrix: each cell's queue built once and copied for every run; a run "
    .. "lasts %s s or until half the backlog is done; medians of %d interleaved round(s). 1 x 10: one worker, "
    .. "VG_CONCURRENCY 10, unbatched; batch: one worker, VG_BATCH=on, VG_CONCURRENCY %d; FIFO: pgbench, %d "
    .. "clients, the plain FIFO SKIP LOCKED claim-and-complete.", fmt(p.seconds, 0), p.rounds,
    p.batch_concurrency, p.clients), "" }
  local rates, lat = {}, {}
  for _, c in ipairs(sc.cells or {}) do
    local w, b, f = c["1x10"], c.batch, c.fifo
    local sh = c.share_of_fifo and c.share_of_fifo.median
    rates[#rates + 1] = { c.queued, c.label, fmt(w.tasks_per_s), fmt(b.tasks_per_s), fmt(f.tasks_per_s),
      sh and string.format("%.0f%%", sh * 100) or "n/a", pair(w.pg_cpu_ms_per_task, f.pg_cpu_ms_per_task, 3) }
    lat[#lat + 1] = { c.queued, c.label, pair(w.claim_p50_ms, w.claim_p99_ms, 2),
      pair(w.claim_mean_ms, w.claim_sd_ms, 3), pair(b.claim_p50_ms, b.claim_p99_ms, 2),
      fmt(b.claim_mean_ms, 3), pair(f.transaction_p50_ms, f.transaction_p99_ms, 2), fmt(f.claim_mean_ms, 3) }
  end
  for _, l in ipairs(markdown({ "queued", "channels x with work", "1 x 10, tasks/s", "batch, tasks/s",
      "FIFO raw, tasks/s", "1 x 10 / FIFO", "PostgreSQL CPU ms/task, 1 x 10 / FIFO" }, rates,
      { [2] = true })) do lines[#lines + 1] = l end
  lines[#lines + 1] = ""
  for _, l in ipairs(markdown({ "queued", "channels x with work", "1 x 10 claim p50 / p99, ms",
      "1 x 10 claim execution mean / sd, ms", "batch claim p50 / p99, ms", "batch claim execution mean, ms",
      "FIFO raw transaction p50 / p99, ms", "FIFO claim execution mean, ms" }, lat,
      { [2] = true })) do lines[#lines + 1] = l end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Claim p50 / p99: each claim's round trip as the worker timed it (bench/timed_worker.lua). "
    .. "Claim execution: the claim statement's mean (and standard deviation) execution time in "
    .. "pg_stat_statements. FIFO transaction: pgbench's per-transaction log (claim and complete)."
  lines[#lines + 1] = ""
  local rows = {}
  for _, t in ipairs(sc.targets or {}) do
    local v = t.ratio.median
    local parts = {}
    for _, r in ipairs(t.ratio.rounds) do parts[#parts + 1] = fmt(r, 2) end
    local result = t.met == nil and "n/a" or (t.met and "met" or "**missed**")
    rows[#rows + 1] = { t.measure, fmt(v, 2) .. " (" .. table.concat(parts, ", ") .. ")",
                        t.cmp .. " " .. fmt(t.bound, 2), result }
    targets[#targets + 1] = { measure = t.measure, value = v, target = t.cmp .. " " .. t.bound, met = t.met }
  end
  for _, l in ipairs(markdown({ "ratio (median of the rounds' ratios)", "measured (each round)", "target", "result" },
      rows, { [1] = true, [3] = true })) do lines[#lines + 1] = l end
  local e = sc.enqueue
  if e then
    lines[#lines + 1] = ""
    lines[#lines + 1] = string.format("Enqueue, %d pgbench producers, single-row INSERTs, medians of %d round(s) "
      .. "of %s alternating runs of %s s per table: over 10 channels %s/s into tasks and %s/s into a copy "
      .. "without the fair-key trigger (%s); all on one channel %s/s and %s/s (%s).", e.producers, #e.rounds,
      e.slices or 1, fmt(e.seconds, 0),
      fmt(e.spread, 0), fmt(e.spread_copy, 0), fmt(e.ratio, 2), fmt(e.one, 0), fmt(e.one_copy, 0),
      fmt(e.ratio_one, 2))
  end
  return lines
end

-- The claim matrix (make claim-matrix).
local function claims_lines(cl)
  local p = cl.params
  local lines = { "", string.format("Claim matrix: pgbench, %d clients, claim-and-complete, one task per "
    .. "transaction; a run lasts %s s or until half the backlog is done; ms: the claim statement's mean "
    .. "execution time (pg_stat_statements). fair: this tree's CLAIM_SQL; probe: the claim before "
    .. "sql/005 (%s); fifo: ORDER BY id FOR UPDATE SKIP LOCKED.", p.clients, fmt(p.seconds, 0),
    cl.probe_ref or "not run"), "" }
  local rows = {}
  for _, c in ipairs(cl.cells or {}) do
    local r = { c.queued, c.label }
    for _, k in ipairs({ "fair", "probe", "fifo" }) do
      r[#r + 1] = c[k] and fmt(c[k].tasks_per_s) or "n/a"
      r[#r + 1] = c[k] and fmt(c[k].claim_mean_ms, 3) or "n/a"
    end
    rows[#rows + 1] = r
  end
  for _, l in ipairs(markdown({ "queued", "channels x with work", "fair tasks/s", "fair ms", "probe tasks/s",
      "probe ms", "fifo tasks/s", "fifo ms" }, rows, { [2] = true })) do lines[#lines + 1] = l end
  local e = cl.enqueue
  if e then
    lines[#lines + 1] = ""
    lines[#lines + 1] = string.format("Enqueue, %d producers, medians of %d round(s) of %s s: over 10 channels "
      .. "%s/s with the fair-key trigger, %s/s into a copy without it (%s); on one channel %s/s, %s/s (%s).",
      e.producers, #e.rounds, fmt(e.seconds, 0), fmt(e.spread, 0), fmt(e.spread_copy, 0), fmt(e.ratio, 2),
      fmt(e.one, 0), fmt(e.one_copy, 0), fmt(e.ratio_one, 2))
  end
  return lines
end

-- Lines to print (header, tables, notes), the main table's lines, the
-- notes, and the target list for the JSON.
function M.render(results, P)
  local targets = {}
  local header = string.format("vg-host benchmarks %s; %d CPU (%s); PostgreSQL %s (fsync %s); "
    .. "load average at start %s%s", results.date, results.machine.nproc or 0, results.machine.cpu or "?",
    results.machine.postgres or "?", results.machine.fsync or "?",
    results.machine.load_average_start or "?", results.smoke and "; SMOKE sizes, figures meaningless" or "")
  local lines, tbl, notes = { header }, {}, {}
  local main = false
  for _, part in ipairs(results.parts or { "main" }) do main = main or part == "main" end
  if main then
    tbl = build_table(results, targets)
    notes = main_notes(results, P)
    lines[#lines + 1] = ""
    for _, l in ipairs(tbl) do lines[#lines + 1] = l end
    lines[#lines + 1] = ""
    for _, n in ipairs(notes) do lines[#lines + 1] = n end
  end
  if results.scale then
    for _, l in ipairs(scale_lines(results.scale, targets)) do lines[#lines + 1] = l end
  end
  if results.claims then
    for _, l in ipairs(claims_lines(results.claims)) do lines[#lines + 1] = l end
  end
  return lines, tbl, notes, targets
end

return M
