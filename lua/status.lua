-- vg-host lua/status.lua [--json]: the queue at a glance: tasks by status,
-- priority and channel, the oldest pending task, workers and their last
-- heartbeat, recent failures, and costs per channel and per video.
-- stdout carries the result; log lines go to stderr.
require("vg.log").to_stderr()
local db = require "vg.db"
local config = require "vg.config"
local cjson = require "cjson"
local admin = require "vg.admin"

local function collect()
  local s = {}
  s.by_status = db.query([[
    SELECT status, count(*)::int AS n FROM tasks GROUP BY status ORDER BY status]])
  s.queued_by_priority = db.query([[
    SELECT priority, count(*)::int AS n FROM tasks
     WHERE status IN ('pending', 'retry', 'approved') GROUP BY priority, priority_rank
     ORDER BY priority_rank]])
  s.by_channel = db.query([[
    SELECT channel_id,
           count(*) FILTER (WHERE status IN ('pending', 'retry', 'approved'))::int AS queued,
           count(*) FILTER (WHERE status IN ('claimed', 'processing'))::int AS running,
           count(*) FILTER (WHERE status = 'awaiting_review')::int AS review,
           count(*) FILTER (WHERE status = 'completed')::int AS completed,
           count(*) FILTER (WHERE status = 'failed')::int AS failed
      FROM tasks GROUP BY channel_id ORDER BY channel_id]])
  local oldest = db.query([[
    SELECT id, extract(epoch FROM now() - created_at)::float8 AS age_seconds
      FROM tasks WHERE status IN ('pending', 'retry', 'approved') AND run_at <= now()
     ORDER BY created_at LIMIT 1]])
  s.oldest_pending = oldest[1]
  -- Done, failed and running are counted from the tasks each worker
  -- instance claimed (claimed_by and claimed_instance stay on a finished
  -- task), so they are right before the worker's first heartbeat and add
  -- no statement to the worker.
  s.workers = db.query([[
    SELECT w.worker_id, w.instance, w.status, w.version,
           coalesce(t.done, 0)::int AS tasks_done, coalesce(t.failed, 0)::int AS tasks_failed,
           coalesce(t.running, 0)::int AS in_flight,
           extract(epoch FROM now() - w.last_seen_at)::float8 AS last_seen_seconds_ago
      FROM workers w
      LEFT JOIN (SELECT claimed_by, claimed_instance,
                        count(*) FILTER (WHERE status = 'completed') AS done,
                        count(*) FILTER (WHERE status = 'failed') AS failed,
                        count(*) FILTER (WHERE status IN ('claimed', 'processing')) AS running
                   FROM tasks WHERE claimed_by IS NOT NULL
                  GROUP BY claimed_by, claimed_instance) t
        ON t.claimed_by = w.worker_id AND t.claimed_instance = w.instance
     WHERE w.status <> 'stopped' OR w.last_seen_at > now() - interval '1 hour'
     ORDER BY w.worker_id, w.instance]])
  s.recent_failures = db.query([[
    SELECT id, channel_id, pipeline, attempts, last_error, updated_at
      FROM tasks WHERE status = 'failed' ORDER BY updated_at DESC LIMIT 10]])
  s.cost_by_channel = db.query([[
    SELECT channel_id, round(sum(cost_usd), 4)::text AS cost_usd,
           count(DISTINCT task_id)::int AS tasks
      FROM video_costs GROUP BY channel_id ORDER BY channel_id]])
  s.cost_by_video = db.query([[
    SELECT v.id AS video_id, v.task_id, v.channel_id, v.path, v.duration_seconds,
           (SELECT round(coalesce(sum(c.cost_usd), 0), 4)::text FROM video_costs c
             WHERE c.task_id = v.task_id) AS cost_usd
      FROM videos v ORDER BY v.id DESC LIMIT 20]])
  return s
end

local function line(...) io.write(string.format(...), "\n") end

local function show(s)
  line("tasks by status")
  for _, r in ipairs(s.by_status) do line("  %-16s %8d", r.status, r.n) end
  line("queued by priority")
  for _, r in ipairs(s.queued_by_priority) do line("  %-16s %8d", r.priority, r.n) end
  line("channels         queued  running  review completed  failed")
  for _, r in ipairs(s.by_channel) do
    line("  %-14s %7d %8d %7d %9d %7d", r.channel_id, r.queued, r.running, r.review, r.completed, r.failed)
  end
  if s.oldest_pending then
    line("oldest due task: %s, waiting %.1f s", s.oldest_pending.id, s.oldest_pending.age_seconds)
  else
    line("oldest due task: none")
  end
  line("workers")
  for _, w in ipairs(s.workers) do
    line("  %-20s %-24s %-9s done %-6d failed %-5d in flight %-3d seen %.0f s ago",
         w.worker_id, w.instance, w.status, w.tasks_done, w.tasks_failed, w.in_flight,
         w.last_seen_seconds_ago)
  end
  if #s.recent_failures > 0 then
    line("recent failures")
    for _, f in ipairs(s.recent_failures) do
      line("  task %s (%s/%s, %d attempts): %s", f.id, f.channel_id, f.pipeline, f.attempts,
           tostring(f.last_error))
    end
  end
  if #s.cost_by_channel > 0 then
    line("cost by channel")
    for _, c in ipairs(s.cost_by_channel) do
      line("  %-16s $%10s  (%d tasks)", tostring(c.channel_id), c.cost_usd, c.tasks)
    end
  end
  if #s.cost_by_video > 0 then
    line("cost by video")
    for _, v in ipairs(s.cost_by_video) do
      line("  video %s (task %s, %s): $%s  %s", v.video_id, tostring(v.task_id), v.channel_id,
           v.cost_usd, v.path)
    end
  end
end

-- JSON with every list as an array, empty ones too (cjson would write an
-- empty table as {}).
local LISTS = { "by_status", "queued_by_priority", "by_channel", "workers", "recent_failures",
                "cost_by_channel", "cost_by_video" }

local function encode(s)
  local parts = {}
  for _, k in ipairs(LISTS) do
    local v = s[k] or {}
    parts[#parts + 1] = cjson.encode(k) .. ":" .. (#v == 0 and "[]" or cjson.encode(v))
  end
  parts[#parts + 1] = '"oldest_pending":' .. (s.oldest_pending and cjson.encode(s.oldest_pending) or "null")
  return "{" .. table.concat(parts, ",") .. "}"
end

local function main(...)
  local json = false
  for _, a in ipairs({ ... }) do
    if a == "--json" then json = true
    else
      io.stderr:write("usage: vg-host lua/status.lua [--json]\n")
      os.exit(2)
    end
  end
  config.load { "DATABASE_URL" }
  local problem = admin.schema_problem()
  if problem then error(problem, 0) end
  local s = collect()
  if json then
    print(encode(s))
  else
    show(s)
  end
  db.close()
end

admin.run("status", main, ...)
