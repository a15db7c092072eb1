-- The status service behind lua/web.lua: queue metrics read from the
-- database, a live status page, a review screen, basic auth and CSRF.
-- Everything the page shows is read with one short statement per section;
-- nothing is cached, so what it shows is the database's view now.
local vg = require "vg"
local db = require "vg.db"
local log = require "vg.log"
local http = require "vg.http"
local crypto = require "vg.crypto"
local cjson = require "cjson"
local lfs = require "lfs"
local observe = require "vg.observe"
local reviews = require "vg.reviews"
local workspace = require "vg.workspace"

local M = {}

M.OPEN_STATUSES = { "pending", "retry", "approved", "claimed", "processing", "awaiting_review" }
M.ALL_STATUSES = { "pending", "claimed", "processing", "awaiting_review", "approved",
                   "rejected", "completed", "failed", "retry" }
M.PRIORITIES = { "high", "normal", "low" }
M.OTHER = "_other" -- cannot be a channel id (those start with [a-z0-9])
M.PBKDF2_ITERATIONS = 200000
M.MAX_FILE_BYTES = 512 * 1024 * 1024
M.AUTH_CACHE_SECONDS = 300

-- ---- helpers ---------------------------------------------------------------

local function h(s)
  if s == nil or s == db.null then return "" end
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                         ['"'] = "&quot;", ["'"] = "&#39;" }))
end
M.html_escape = h

local function v(x) if x == db.null then return nil end return x end

local function ago(seconds)
  seconds = tonumber(seconds)
  if not seconds then return "" end
  if seconds < 120 then return string.format("%.0f s", seconds) end
  if seconds < 7200 then return string.format("%.0f min", seconds / 60) end
  return string.format("%.1f h", seconds / 3600)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, 64 do B64_INDEX[B64:sub(i, i)] = i - 1 end

-- Standard base64 (with padding) -> bytes, or nil.
function M.b64decode(s)
  if #s % 4 ~= 0 then return nil end
  local out, n = {}, 0
  for i = 1, #s, 4 do
    local a, b, c, d = s:byte(i, i + 3)
    local ca, cb, cc, cd = B64_INDEX[string.char(a)], B64_INDEX[string.char(b)],
                           B64_INDEX[string.char(c)], B64_INDEX[string.char(d)]
    if not ca or not cb then return nil end
    local pad = 0
    if string.char(d) == "=" then pad = 1; cd = 0 elseif not cd then return nil end
    if string.char(c) == "=" then
      if pad ~= 1 or i + 3 ~= #s then return nil end
      pad = 2; cc = 0
    elseif not cc then return nil end
    if pad > 0 and i + 3 ~= #s then return nil end
    local x = ca << 18 | cb << 12 | cc << 6 | cd
    n = n + 1
    out[n] = string.char(x >> 16 & 255, x >> 8 & 255, x & 255):sub(1, 3 - pad)
  end
  return table.concat(out)
end

-- ---- users -----------------------------------------------------------------

-- VG_WEB_USERS: "name:iterations:salt_hex:hash_hex", several separated by
-- commas or white space. Returns users (name -> entry) or nil, problem.
function M.parse_users(text)
  local users, n = {}, 0
  for entry in (text or ""):gmatch("[^,%s]+") do
    local name, iter, salt, hash = entry:match("^([%w._@-]+):(%d+):(%x+):(%x+)$")
    if not name then
      return nil, "VG_WEB_USERS: each entry must be name:iterations:salt_hex:hash_hex "
        .. "(vg-host lua/web.lua --hash-password NAME prints one)"
    end
    iter = tonumber(iter)
    if iter < 1000 or iter > 10000000 or #salt < 16 or #hash ~= 64 then
      return nil, "VG_WEB_USERS: user " .. name .. " has too few iterations, a short salt or a hash that is not SHA-256"
    end
    if users[name] then return nil, "VG_WEB_USERS: user " .. name .. " is listed twice" end
    users[name] = { name = name, iterations = iter, salt = crypto.unhex(salt), hash = crypto.unhex(hash) }
    n = n + 1
  end
  return users, n
end

-- An entry for VG_WEB_USERS.
function M.hash_password(name, password, iterations)
  iterations = iterations or M.PBKDF2_ITERATIONS
  local salt = crypto.random(16)
  local hash = crypto.pbkdf2(password, salt, iterations, 32)
  return string.format("%s:%d:%s:%s", name, iterations, crypto.hex(salt), crypto.hex(hash))
end

local Service = {}
Service.__index = Service

-- opts: users (from parse_users), workspace (root), top_channels,
-- heartbeat (seconds: a worker unseen for 3 of them is gone)
function M.new(opts)
  local s = setmetatable({}, Service)
  s.users = opts.users or {}
  s.n_users = 0
  for _ in pairs(s.users) do s.n_users = s.n_users + 1 end
  s.workspace = opts.workspace or "./workspace"
  s.top = opts.top_channels or 50
  s.heartbeat = opts.heartbeat or 60
  s.secret = crypto.random(32)
  s.auth_cache = {}
  -- A fixed decoy so an unknown name costs as much as a known one.
  s.decoy = { iterations = M.PBKDF2_ITERATIONS, salt = crypto.random(16), hash = crypto.random(32) }
  return s
end

-- The authenticated user's name, or nil. Verified credentials are cached
-- (keyed by an HMAC of the header, never the header itself) for a few
-- minutes, so a page and its polling do not each pay for PBKDF2.
function Service:authenticate(req)
  local hdr = req.headers["authorization"]
  if not hdr then return nil end
  local b64 = hdr:match("^[Bb]asic%s+([%w+/=]+)%s*$")
  if not b64 then return nil end
  local key = crypto.hmac(self.secret, hdr)
  local hit = self.auth_cache[key]
  if hit and hit.until_t > vg.now() then return hit.name end
  local raw = M.b64decode(b64)
  if not raw then return nil end
  local name, password = raw:match("^([^:]*):(.*)$")
  if not name then return nil end
  local u = self.users[name]
  local entry = u or self.decoy
  local got = crypto.pbkdf2(password, entry.salt, entry.iterations, 32)
  local ok = crypto.equal(got, entry.hash) and u ~= nil
  if not ok then return nil end
  -- Bounded: old entries dropped when it grows.
  local n = 0
  for k, e in pairs(self.auth_cache) do
    n = n + 1
    if e.until_t <= vg.now() then self.auth_cache[k] = nil end
  end
  if n > 1000 then self.auth_cache = {} end
  self.auth_cache[key] = { name = name, until_t = vg.now() + M.AUTH_CACHE_SECONDS }
  return name
end

function Service:csrf_token(actor)
  return crypto.hex(crypto.hmac(self.secret, "csrf:" .. actor))
end

-- ---- queries ---------------------------------------------------------------

local DEPTH_SQL = [[
WITH d AS (
  SELECT channel_id, status, priority, count(*)::bigint AS n
    FROM tasks WHERE status = ANY($2::text[])
   GROUP BY 1, 2, 3),
tot AS (SELECT channel_id, sum(n) AS s FROM d GROUP BY 1),
top AS (SELECT channel_id FROM tot ORDER BY s DESC, channel_id LIMIT $1)
SELECT CASE WHEN top.channel_id IS NULL THEN $3 ELSE d.channel_id END AS channel,
       d.status, d.priority, sum(d.n)::bigint AS n
  FROM d LEFT JOIN top ON top.channel_id = d.channel_id
 GROUP BY 1, 2, 3
 ORDER BY 1, 2, 3]]

local function open_statuses_array()
  return "{" .. table.concat(M.OPEN_STATUSES, ",") .. "}"
end

function Service:depth_by_channel()
  return db.query(DEPTH_SQL, self.top, open_statuses_array(), M.OTHER)
end

function Service:overview()
  local o = {}
  o.by_status = db.query([[SELECT status, priority, count(*)::bigint AS n FROM tasks GROUP BY 1, 2]])
  o.oldest = db.query([[
    SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8 AS age
      FROM tasks WHERE status IN ('pending', 'retry', 'approved') AND run_at <= now()]])[1].age
  o.workers = db.query([[
    SELECT worker_id, instance, status, version, tasks_done, tasks_failed, in_flight,
           extract(epoch FROM now() - last_seen_at)::float8 AS seen_ago,
           extract(epoch FROM alive_until - now())::float8 AS alive_left,
           (status <> 'stopped' AND last_seen_at > now() - make_interval(secs => $1)) AS alive
      FROM workers
     WHERE status <> 'stopped' OR last_seen_at > now() - interval '1 hour'
     ORDER BY alive DESC, worker_id, instance]], 3 * self.heartbeat)
  o.workers_count = db.query([[
    SELECT count(*) FILTER (WHERE status <> 'stopped' AND last_seen_at > now() - make_interval(secs => $1))::bigint AS alive,
           count(*) FILTER (WHERE NOT (status <> 'stopped' AND last_seen_at > now() - make_interval(secs => $1)))::bigint AS gone
      FROM workers]], 3 * self.heartbeat)[1]
  o.failed_hour = db.query([[
    SELECT count(*)::bigint AS n FROM tasks
     WHERE status = 'failed' AND updated_at > now() - interval '1 hour']])[1].n
  return o
end

function Service:running()
  return db.query([[
    SELECT id, channel_id, pipeline, status, current_step, claimed_by, attempts,
           extract(epoch FROM now() - claimed_at)::float8 AS running_for
      FROM tasks WHERE status IN ('claimed', 'processing')
     ORDER BY claimed_at NULLS LAST, id LIMIT 100]])
end

function Service:failures()
  return db.query([[
    SELECT id, channel_id, pipeline, status, attempts, max_attempts, current_step, last_error,
           extract(epoch FROM now() - updated_at)::float8 AS ago
      FROM tasks WHERE status IN ('failed', 'retry') AND last_error IS NOT NULL
     ORDER BY updated_at DESC LIMIT 20]])
end

function Service:costs()
  local by_channel = db.query([[
    WITH c AS (SELECT coalesce(channel_id, '') AS channel_id, sum(cost_usd) AS usd FROM video_costs GROUP BY 1),
    top AS (SELECT channel_id FROM c ORDER BY usd DESC, channel_id LIMIT $1)
    SELECT CASE WHEN top.channel_id IS NULL THEN $2 ELSE c.channel_id END AS channel,
           sum(c.usd)::text AS usd
      FROM c LEFT JOIN top ON top.channel_id = c.channel_id GROUP BY 1 ORDER BY 1]], self.top, M.OTHER)
  local by_component = db.query([[
    WITH c AS (SELECT component, sum(cost_usd) AS usd FROM video_costs GROUP BY 1),
    top AS (SELECT component FROM c ORDER BY usd DESC, component LIMIT $1)
    SELECT CASE WHEN top.component IS NULL THEN $2 ELSE c.component END AS component,
           sum(c.usd)::text AS usd
      FROM c LEFT JOIN top ON top.component = c.component GROUP BY 1 ORDER BY 1]], self.top, M.OTHER)
  return by_channel, by_component
end

-- ---- /metrics ------------------------------------------------------------------

function Service:metrics()
  local w = observe.writer()
  local o = self:overview()
  w.family("vg_queue_tasks", "gauge", "Tasks in the table by status and priority.")
  local seen = {}
  for _, r in ipairs(o.by_status) do seen[r.status .. "/" .. r.priority] = r.n end
  for _, st in ipairs(M.ALL_STATUSES) do
    for _, p in ipairs(M.PRIORITIES) do
      w.sample("vg_queue_tasks", { { "status", st }, { "priority", p } }, seen[st .. "/" .. p] or 0)
    end
  end
  w.family("vg_queue_channel_tasks", "gauge",
           "Unfinished tasks by channel (the top channels by depth; the rest as channel=\"" .. M.OTHER .. "\"), status and priority.")
  for _, r in ipairs(self:depth_by_channel()) do
    w.sample("vg_queue_channel_tasks", { { "channel", r.channel }, { "status", r.status }, { "priority", r.priority } }, r.n)
  end
  w.single("vg_queue_oldest_pending_age_seconds", "gauge",
           "How long the longest-waiting due task has been due.", o.oldest + 0.0)
  w.family("vg_workers", "gauge", "Workers seen in the last hour: alive (seen within three heartbeats, not stopped) or gone.")
  w.sample("vg_workers", { { "state", "alive" } }, o.workers_count.alive)
  w.sample("vg_workers", { { "state", "gone" } }, o.workers_count.gone)
  w.single("vg_tasks_failed_last_hour", "gauge", "Tasks that ended failed in the last hour.",
           o.failed_hour)
  local by_channel, by_component = self:costs()
  w.family("vg_cost_usd", "gauge", "Recorded cost in USD by channel (top channels; the rest as \"" .. M.OTHER .. "\").")
  for _, r in ipairs(by_channel) do w.sample("vg_cost_usd", { { "channel", r.channel } }, tonumber(r.usd) + 0.0) end
  w.family("vg_cost_usd_by_component", "gauge", "Recorded cost in USD by component.")
  for _, r in ipairs(by_component) do
    w.sample("vg_cost_usd_by_component", { { "component", r.component } }, tonumber(r.usd) + 0.0)
  end
  return w.text()
end

-- ---- HTML ------------------------------------------------------------------

local CSS = [[
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right}.outage{background:#fdd;border:2px solid #c00;padding:.6em;font-weight:bold}
.ok{color:#070}.bad{color:#b00}nav a{margin-right:1em}.err{font-family:monospace;white-space:pre-wrap;max-width:60em}
form.inline{display:inline-block;margin-right:1em}textarea{width:24em;height:3em}video{max-width:480px}
.task{border:1px solid #bbb;padding:.8em;margin:.8em 0}.flash{background:#efe;border:1px solid #7b7;padding:.5em}
]]

local function page(title, body, opts)
  opts = opts or {}
  return table.concat {
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>", h(title),
    "</title><style>", CSS, "</style></head><body><nav><a href=\"/\">Status</a><a href=\"/review\">Review</a>",
    "<a href=\"/metrics\">Metrics</a></nav><h1>", h(title), "</h1>", body,
    opts.script or "", "</body></html>",
  }
end

local function table_html(headers, rows, empty)
  if #rows == 0 then return "<p>" .. h(empty or "none") .. "</p>" end
  local out = { "<table><tr>" }
  for _, x in ipairs(headers) do out[#out + 1] = "<th>" .. h(x) .. "</th>" end
  out[#out + 1] = "</tr>"
  for _, r in ipairs(rows) do
    out[#out + 1] = "<tr>"
    for _, cell in ipairs(r) do out[#out + 1] = "<td>" .. cell .. "</td>" end
    out[#out + 1] = "</tr>"
  end
  out[#out + 1] = "</table>"
  return table.concat(out)
end

local function outage_html(err)
  return "<div class=\"outage\" id=\"outage\">Database unreachable: " .. h(err) ..
    ". The figures below are missing until it answers again.</div>"
end

local function errtext(e)
  if type(e) == "table" then return tostring(e.code or "error") .. ": " .. tostring(e.message or "") end
  return tostring(e)
end

-- The live part of the status page (also served alone for the refresh).
function Service:status_fragment()
  local ok, err = pcall(function()
    local parts = {}
    local o = self:overview()
    parts[#parts + 1] = string.format(
      "<p id=\"summary\">Workers alive: <b>%d</b>, gone: %d. Oldest due task waiting: %s. Failed in the last hour: %d. As of %s UTC.</p>",
      o.workers_count.alive, o.workers_count.gone, h(ago(o.oldest)), o.failed_hour, os.date("!%H:%M:%S"))
    -- depth per channel and priority
    local depth = {}
    local order = {}
    for _, r in ipairs(self:depth_by_channel()) do
      local key = r.channel .. "\0" .. r.priority
      if not depth[key] then
        depth[key] = { channel = r.channel, priority = r.priority }
        order[#order + 1] = key
      end
      depth[key][r.status] = (depth[key][r.status] or 0) + r.n
    end
    local rows = {}
    for _, key in ipairs(order) do
      local d = depth[key]
      local row = { h(d.channel == M.OTHER and "(other channels)" or d.channel), h(d.priority) }
      for _, st in ipairs(M.OPEN_STATUSES) do row[#row + 1] = "<span class=\"num\">" .. (d[st] or 0) .. "</span>" end
      rows[#rows + 1] = row
    end
    local hdr = { "channel", "priority" }
    for _, st in ipairs(M.OPEN_STATUSES) do hdr[#hdr + 1] = st end
    parts[#parts + 1] = "<h2>Queue depth</h2>" .. table_html(hdr, rows, "the queue is empty")
    -- workers
    rows = {}
    for _, r in ipairs(o.workers) do
      rows[#rows + 1] = {
        h(r.worker_id), h(r.instance), r.alive and "<span class=\"ok\">alive</span>" or "<span class=\"bad\">gone</span>",
        h(r.status), h(ago(r.seen_ago)) .. " ago", h(v(r.in_flight)), h(v(r.tasks_done)), h(v(r.tasks_failed)), h(v(r.version)),
      }
    end
    parts[#parts + 1] = "<h2>Workers</h2>" .. table_html(
      { "worker", "instance", "state", "status", "last heartbeat", "in flight", "done", "failed", "version" }, rows,
      "no workers seen in the last hour")
    -- running
    rows = {}
    for _, r in ipairs(self:running()) do
      rows[#rows + 1] = { h(r.id), h(r.channel_id), h(r.pipeline), h(r.status), h(v(r.current_step)),
                          h(v(r.claimed_by)), h(r.attempts), h(ago(v(r.running_for))) }
    end
    parts[#parts + 1] = "<h2>Running tasks</h2>" .. table_html(
      { "task", "channel", "pipeline", "status", "current step", "worker", "attempt", "running for" }, rows, "nothing running")
    -- failures
    rows = {}
    for _, r in ipairs(self:failures()) do
      rows[#rows + 1] = { h(r.id), h(r.channel_id), h(r.pipeline), h(r.status),
                          h(r.attempts) .. "/" .. h(r.max_attempts), h(v(r.current_step)),
                          "<div class=\"err\">" .. h(tostring(v(r.last_error) or ""):sub(1, 500)) .. "</div>", h(ago(r.ago)) .. " ago" }
    end
    parts[#parts + 1] = "<h2>Recent failures</h2>" .. table_html(
      { "task", "channel", "pipeline", "status", "attempts", "step", "error", "when" }, rows, "no failures")
    -- costs
    local by_channel, by_component = self:costs()
    rows = {}
    for _, r in ipairs(by_channel) do rows[#rows + 1] = { h(r.channel == M.OTHER and "(other channels)" or r.channel), "<span class=\"num\">$" .. h(r.usd) .. "</span>" } end
    local crow = {}
    for _, r in ipairs(by_component) do crow[#crow + 1] = { h(r.component), "<span class=\"num\">$" .. h(r.usd) .. "</span>" } end
    parts[#parts + 1] = "<h2>Costs</h2>" .. table_html({ "channel", "USD" }, rows, "no costs recorded")
      .. table_html({ "component", "USD" }, crow, "")
    return table.concat(parts)
  end)
  if ok then return true, err end
  if vg.is_cancelled(err) then error(err, 0) end
  return false, outage_html(errtext(err))
end

local LIVE_SCRIPT = [[
<script>
// Live: the figures are fetched again every 5 s and replaced in place.
setInterval(function () {
  fetch("/?fragment=1", {cache: "no-store"}).then(function (r) {
    return r.text();
  }).then(function (t) { document.getElementById("live").innerHTML = t; })
    .catch(function () {
      document.getElementById("live").innerHTML = '<div class="outage" id="outage">The status service does not answer.</div>';
    });
}, 5000);
</script>]]

function Service:status_page(req, actor)
  local ok, frag = self:status_fragment()
  if req.query.fragment then return ok and 200 or 503, frag, { ["Content-Type"] = "text/html; charset=utf-8" } end
  local who = actor and ("Signed in as " .. h(actor) .. ".") or
    (self.n_users == 0 and "Read-only: no users configured (VG_WEB_USERS)." or "")
  local body = "<p>" .. who .. "</p><div id=\"live\">" .. frag .. "</div>"
  return ok and 200 or 503, page("vg-host status", body, { script = LIVE_SCRIPT }),
    { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
end

-- ---- review ----------------------------------------------------------------

-- The absolute workspace root, without a trailing slash.
function Service:root()
  if not self.root_abs then
    local r = self.workspace
    if r:sub(1, 1) ~= "/" then r = (lfs.currentdir() or ".") .. "/" .. r end
    self.root_abs = (r:gsub("/+$", ""))
  end
  return self.root_abs
end

-- The URL of a file under the workspace when web.lua can read it, else nil.
function Service:file_url(channel, task_id, abs)
  if type(abs) ~= "string" then return nil end
  local base = self:root() .. "/" .. channel .. "/" .. tostring(task_id) .. "/"
  if abs:sub(1, #base) ~= base then return nil end
  local rel = abs:sub(#base + 1)
  local attr = lfs.attributes(abs)
  if not attr or attr.mode ~= "file" then return nil end
  local enc = {}
  for part in rel:gmatch("[^/]+") do enc[#enc + 1] = http.escape(part) end
  return "/files/" .. channel .. "/" .. tostring(task_id) .. "/" .. table.concat(enc, "/")
end

local function fmt_size(n)
  n = tonumber(n)
  if not n then return "" end
  if n >= 1048576 then return string.format("%.1f MiB", n / 1048576) end
  if n >= 1024 then return string.format("%.1f KiB", n / 1024) end
  return n .. " B"
end

function Service:review_page(req, actor, flash)
  local ok, body = pcall(function()
    local tasks = db.query([[
      SELECT t.id, t.channel_id, t.pipeline, t.current_step, t.payload,
             extract(epoch FROM now() - t.updated_at)::float8 AS waiting
        FROM tasks t WHERE t.status = 'awaiting_review'
       ORDER BY t.updated_at, t.id LIMIT 100]])
    local parts = {}
    if flash then parts[#parts + 1] = "<p class=\"flash\" id=\"flash\">" .. h(flash) .. "</p>" end
    if #tasks == 0 then parts[#parts + 1] = "<p id=\"none\">No task is waiting at a review gate.</p>" end
    local can_act = actor ~= nil
    if not can_act then
      parts[#parts + 1] = "<p>Read-only: " .. (self.n_users == 0 and "no users are configured (VG_WEB_USERS)."
        or "sign in to decide.") .. "</p>"
    end
    for _, t in ipairs(tasks) do
      local steps = db.query([[SELECT step, status, output FROM task_steps WHERE task_id = $1 ORDER BY started_at, step]], t.id)
      local videos = db.query([[SELECT path, duration_seconds, size_bytes FROM videos WHERE task_id = $1 ORDER BY id]], t.id)
      local p = { string.format("<div class=\"task\" id=\"task-%d\"><h2>Task %d</h2>", t.id, t.id) }
      local title = type(t.payload) == "table" and t.payload.title or nil
      p[#p + 1] = string.format("<p>Channel <b>%s</b>, pipeline %s, gate after step <b>%s</b>, waiting %s.%s</p>",
        h(t.channel_id), h(t.pipeline), h(v(t.current_step)), h(ago(t.waiting)),
        title and (" Title: " .. h(title)) or "")
      local srows = {}
      for _, s in ipairs(steps) do
        local out = v(s.output)
        local text = out and cjson.encode(out) or ""
        srows[#srows + 1] = { h(s.step), h(s.status), "<div class=\"err\">" .. h(text:sub(1, 800)) .. "</div>" }
      end
      p[#p + 1] = table_html({ "step", "status", "output" }, srows, "no steps recorded")
      for _, vid in ipairs(videos) do
        local url = self:file_url(t.channel_id, t.id, vid.path)
        if url then
          p[#p + 1] = "<p><video controls preload=\"metadata\" src=\"" .. h(url) .. "\"></video></p>"
        end
        p[#p + 1] = string.format("<p class=\"video-info\">Video: %s, %s s, %s%s</p>", h(vid.path),
          h(vid.duration_seconds ~= db.null and string.format("%.1f", vid.duration_seconds) or "?"),
          h(vid.size_bytes ~= db.null and fmt_size(vid.size_bytes) or "?"),
          url and "" or " (the file is not reachable from this service)")
      end
      if can_act then
        local token = self:csrf_token(actor)
        p[#p + 1] = string.format([[
<form class="inline" method="post" action="/review/decide"><input type="hidden" name="csrf" value="%s"><input type="hidden" name="task_id" value="%d"><input type="hidden" name="action" value="approve"><button type="submit" id="approve-%d">Approve</button></form>
<form class="inline" method="post" action="/review/decide"><input type="hidden" name="csrf" value="%s"><input type="hidden" name="task_id" value="%d"><input type="hidden" name="action" value="reject"><textarea name="reason" id="reason-%d" placeholder="reason (required)" required maxlength="2000"></textarea> <button type="submit" id="reject-%d">Reject</button></form>]],
          token, t.id, t.id, token, t.id, t.id, t.id)
      end
      p[#p + 1] = "</div>"
      parts[#parts + 1] = table.concat(p)
    end
    return table.concat(parts)
  end)
  local status = 200
  if not ok then
    if vg.is_cancelled(body) then error(body, 0) end
    body = outage_html(errtext(body))
    status = 503
  end
  local who = actor and ("<p>Signed in as " .. h(actor) .. ".</p>") or ""
  return status, page("Review", who .. body), { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
end

local function bad(status, msg)
  return status, page("Refused", "<p class=\"bad\" id=\"refused\">" .. h(msg) .. "</p><p><a href=\"/review\">Back to review</a></p>"),
    { ["Content-Type"] = "text/html; charset=utf-8" }
end

-- The request's Origin (or Referer) must name this host when it is sent.
local function same_origin(req)
  local origin = req.headers["origin"] or req.headers["referer"]
  if not origin or origin == "null" then return origin ~= "null" end
  local host = req.headers["host"]
  if not host then return false end
  local o_host = origin:match("^https?://([^/]+)")
  return o_host ~= nil and o_host:lower() == host:lower()
end

function Service:decide(req, actor)
  if not actor then
    if self.n_users == 0 then return bad(403, "Read-only: no users are configured (VG_WEB_USERS).") end
    return 401, "sign in first", { ["WWW-Authenticate"] = 'Basic realm="vg-host", charset="UTF-8"' }
  end
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:find("application/x-www-form-urlencoded", 1, true) then
    return bad(415, "a form (application/x-www-form-urlencoded) is expected")
  end
  local f = req.form()
  if not same_origin(req) or type(f.csrf) ~= "string" or not crypto.equal(f.csrf, self:csrf_token(actor)) then
    log.warning("web_csrf_refused", { actor = actor, remote = req.remote })
    return bad(403, "The form's CSRF token is missing or wrong; reload the review page and try again.")
  end
  local id = f.task_id
  if type(id) ~= "string" or not id:match("^[1-9]%d*$") or #id > 18 then
    return bad(400, "task_id must be a positive whole number")
  end
  id = math.tointeger(tonumber(id))
  local action = f.action
  if action ~= "approve" and action ~= "reject" then return bad(400, "action must be approve or reject") end
  local reason = f.reason
  if reason ~= nil and (#reason > 2000 or not utf8.len(reason)) then
    return bad(400, "the reason must be valid UTF-8 of at most 2000 bytes")
  end
  if reason and not reason:match("%S") then reason = nil end
  if action == "reject" and not reason then return bad(400, "a rejection needs a reason") end
  local ok, step, why = pcall(reviews.decide, action, id, actor, reason)
  if not ok then
    if vg.is_cancelled(step) then error(step, 0) end
    return bad(503, "Database unreachable: " .. errtext(step))
  end
  if not step then return bad(409, why) end
  log.info("web_review_decided", { task_id = id, action = action, actor = actor, step = step })
  local msg = string.format("Task %d %s by %s.", id, action == "approve" and "approved" or "rejected", actor)
  return 303, "", { Location = "/review?done=" .. http.escape(msg) }
end

-- ---- files -----------------------------------------------------------------

local TYPES = {
  mp4 = "video/mp4", webm = "video/webm", png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg",
  wav = "audio/wav", mp3 = "audio/mpeg", json = "application/json", txt = "text/plain; charset=utf-8",
  srt = "text/plain; charset=utf-8",
}

-- /files/<channel>/<task>/<path inside the task's folder>: refused unless
-- the ids are valid and the path stays inside that folder (no "..", no
-- absolute part, no link leading out), and only regular files.
function Service:file(req)
  local rest = req.path:sub(#"/files/" + 1)
  local channel, task, rel = rest:match("^([^/]+)/([^/]+)/(.+)$")
  if not channel then return 404, { error = "not found" } end
  channel, task, rel = http.unescape(channel), http.unescape(task), http.unescape(rel)
  if not workspace.valid_channel_id(channel) or not task:match("^[1-9]%d*$") or #task > 18 then
    return 400, { error = "invalid channel or task id" }
  end
  local base = self:root() .. "/" .. channel .. "/" .. task
  local ok, full = pcall(workspace.path, base, rel)
  if not ok or rel:find("\0", 1, true) then
    log.warning("web_file_refused", { path = req.path, remote = req.remote })
    return 403, { error = "path refused" }
  end
  local attr = lfs.attributes(full)
  if not attr or attr.mode ~= "file" then return 404, { error = "not found" } end
  if attr.size > M.MAX_FILE_BYTES then return 413, { error = "file too large to serve" } end
  local f = io.open(full, "rb")
  if not f then return 404, { error = "not found" } end
  local data = f:read("a")
  f:close()
  local ext = (full:match("%.([%w]+)$") or ""):lower()
  return 200, data or "", { ["Content-Type"] = TYPES[ext] or "application/octet-stream",
                             ["X-Content-Type-Options"] = "nosniff" }
end

-- ---- routes ----------------------------------------------------------------

-- A handler wrapped with authentication: with users configured, every
-- page needs a signed-in user; without, pages are open and read-only.
function Service:guard(fn)
  return function(req)
    local actor = self:authenticate(req)
    if self.n_users > 0 and not actor then
      return 401, "authentication required",
        { ["WWW-Authenticate"] = 'Basic realm="vg-host", charset="UTF-8"' }
    end
    return fn(req, actor)
  end
end

function Service:healthz()
  local t = vg.spawn(function() return db.query("SELECT 1 AS ok") end)
  local ok, res = pcall(t.join, t, observe.HEALTH_TIMEOUT)
  if ok and res then return 200, { status = "ok", database = "reachable" } end
  if not t:done() then t:cancel() end
  if not ok and vg.is_cancelled(res) then error(res, 0) end
  return 503, { status = "unhealthy", reason = "database_unreachable", database = "unreachable",
                error = ok and "no answer in time" or errtext(res) }
end

function Service:routes()
  return {
    ["/"] = self:guard(function(req, actor) return self:status_page(req, actor) end),
    ["/review"] = self:guard(function(req, actor)
      return self:review_page(req, actor, req.query.done)
    end),
    ["/review/decide"] = { POST = self:guard(function(req, actor) return self:decide(req, actor) end) },
    ["/files/*"] = self:guard(function(req) return self:file(req) end),
    ["/metrics"] = function()
      local ok, text = pcall(self.metrics, self)
      if not ok then
        if vg.is_cancelled(text) then error(text, 0) end
        return 503, "# database unreachable: " .. errtext(text):gsub("\n", " ") .. "\n",
          { ["Content-Type"] = observe.CONTENT_TYPE }
      end
      return 200, text, { ["Content-Type"] = observe.CONTENT_TYPE }
    end,
    ["/healthz"] = function() return self:healthz() end,
  }
end

return M
