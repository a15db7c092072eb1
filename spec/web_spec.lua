-- lua/web.lua as a process, over real sockets against the test database:
-- auth, CSRF, review decisions and their audit rows, refused input, path
-- traversal, the metrics' channel cap, and a database outage (a real TCP
-- proxy between the service and PostgreSQL, killed and restarted).
local vg = require "vg"
local proc = require "vg.proc"
local cjson = require "cjson"
local http = require "vg.http"
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local proxy = require "spec.support.proxy"
local support_http = require "spec.support.http"
local curl, free_port = support_http.curl, support_http.free_port

local describe_db = tdb.available() and describe or pending

local PASSWORD = "correct horse"

local function promtool_check(text)
  local r = proc.run({ "promtool", "check", "metrics" }, { stdin = text, timeout = 30 })
  return r.code == 0, r.stdout .. r.stderr
end

describe_db("lua/web.lua", function()
  local db, users, workspace_dir
  local procs = {}

  setup(function()
    db = tdb.setup()
    local r = proc.run({ host.bin, "lua/web.lua", "--hash-password", "alice" }, { stdin = PASSWORD .. "\n", cwd = host.root })
    assert.are.equal(0, r.code, r.stderr)
    users = r.stdout:gsub("%s+$", "")
    workspace_dir = os.tmpname()
    os.remove(workspace_dir)
    assert(proc.run({ "mkdir", "-p", workspace_dir .. "/c1/1" }).code == 0)
    local f = assert(io.open(workspace_dir .. "/c1/1/final.mp4", "wb"))
    f:write("not really a video")
    f:close()
    f = assert(io.open(workspace_dir .. "/secret.txt", "wb"))
    f:write("outside any task folder")
    f:close()
  end)
  teardown(function()
    if workspace_dir then proc.run({ "rm", "-rf", workspace_dir }) end
  end)
  before_each(function() tdb.reset() end)
  after_each(function()
    for _, p in ipairs(procs) do if p:running() then p:kill("KILL", { group = true }); p:wait(10) end end
    procs = {}
    proxy.cleanup()
  end)

  local function web(extra)
    local port = free_port()
    local env = host.env { DATABASE_URL = tdb.url, PORT = tostring(port), VG_HTTP_HOST = "127.0.0.1",
                           VG_WORKSPACE = workspace_dir }
    for k, val in pairs(extra or {}) do env[k] = val end
    local p = host.spawn({ "lua/web.lua" }, { env = env })
    procs[#procs + 1] = p
    assert.truthy(host.wait_event(p, "web_started"), p:stdout())
    return "http://127.0.0.1:" .. port, p
  end

  local function gate_tasks(n)
    tdb.channel("c1")
    local ids = tdb.enqueue("c1", n, { pipeline = "gated" })
    db.query([[UPDATE tasks SET status = 'awaiting_review', current_step = 'two' WHERE id = ANY($1::bigint[])]],
             "{" .. table.concat(ids, ",") .. "}")
    return ids
  end

  local function csrf_of(base, id)
    local code, body = curl(base .. "/review", { "-u", "alice:" .. PASSWORD })
    assert.are.equal(200, code)
    local token = body:match('id="task%-' .. id .. '".-name="csrf" value="(%x+)"')
    return token, body
  end

  it("asks for credentials when users are configured and refuses a wrong password", function()
    local base = web { VG_WEB_USERS = users }
    local code = curl(base .. "/")
    assert.are.equal(401, code)
    assert.are.equal(401, (curl(base .. "/", { "-u", "alice:wrong" })))
    assert.are.equal(401, (curl(base .. "/", { "-u", "mallory:" .. PASSWORD })))
    local body
    code, body = curl(base .. "/", { "-u", "alice:" .. PASSWORD })
    assert.are.equal(200, code)
    assert.matches("Signed in as alice", body, 1, true)
    -- health and metrics stay open for the platform and Prometheus
    assert.are.equal(200, (curl(base .. "/healthz")))
    assert.are.equal(200, (curl(base .. "/metrics")))
  end)

  it("approves and rejects with a reason, writes audit_logs with the actor, and refuses a bad CSRF token", function()
    local ids = gate_tasks(2)
    local base = web { VG_WEB_USERS = users }
    local token = csrf_of(base, ids[1])
    assert.is_truthy(token)
    local auth = { "-u", "alice:" .. PASSWORD }
    local function post(fields, extra)
      local a = { "-u", "alice:" .. PASSWORD, "--data", fields }
      for _, x in ipairs(extra or {}) do a[#a + 1] = x end
      return curl(base .. "/review/decide", a)
    end
    -- no token, a wrong token, a foreign origin
    assert.are.equal(403, (post("task_id=" .. ids[1] .. "&action=approve")))
    assert.are.equal(403, (post("task_id=" .. ids[1] .. "&action=approve&csrf=" .. string.rep("0", 64))))
    assert.are.equal(403, (post("task_id=" .. ids[1] .. "&action=approve&csrf=" .. token,
                                { "-H", "Origin: http://evil.example" })))
    assert.are.equal("awaiting_review", db.query("SELECT status FROM tasks WHERE id = $1", ids[1])[1].status)
    -- a rejection without a reason, bad ids and actions
    assert.are.equal(400, (post("task_id=" .. ids[2] .. "&action=reject&csrf=" .. token)))
    assert.are.equal(400, (post("task_id=1%3B%20DROP&action=approve&csrf=" .. token)))
    assert.are.equal(400, (post("task_id=" .. ids[1] .. "&action=delete&csrf=" .. token)))
    -- decisions
    local code = post("task_id=" .. ids[1] .. "&action=approve&csrf=" .. token)
    assert.are.equal(303, code)
    code = post("task_id=" .. ids[2] .. "&action=reject&reason=" .. http.escape("too dark <b>") .. "&csrf=" .. token)
    assert.are.equal(303, code)
    -- twice: the task is no longer at a gate
    assert.are.equal(409, (post("task_id=" .. ids[1] .. "&action=approve&csrf=" .. token)))
    local rows = db.query([[SELECT t.id, t.status, a.actor, a.action, a.details
                              FROM tasks t JOIN audit_logs a ON a.task_id = t.id ORDER BY t.id]])
    assert.are.equal(2, #rows)
    assert.are.same({ ids[1], "approved", "alice", "task_approved" }, { rows[1].id, rows[1].status, rows[1].actor, rows[1].action })
    assert.are.same({ ids[2], "rejected", "alice", "task_rejected" }, { rows[2].id, rows[2].status, rows[2].actor, rows[2].action })
    assert.are.equal("too dark <b>", rows[2].details.reason)
    assert.are.equal("two", rows[2].details.step)
    local _, body = curl(base .. "/review", auth)
    assert.is_nil(body:find("<b>", 1, true))
  end)

  it("is read-only without users: pages open, decisions refused", function()
    local ids = gate_tasks(1)
    local base = web {}
    local code, body = curl(base .. "/review")
    assert.are.equal(200, code)
    assert.matches("Read-only", body, 1, true)
    assert.is_nil(body:find("/review/decide", 1, true))
    assert.are.equal(403, (curl(base .. "/review/decide", { "--data", "task_id=" .. ids[1] .. "&action=approve&csrf=x" })))
    assert.are.equal("awaiting_review", db.query("SELECT status FROM tasks WHERE id = $1", ids[1])[1].status)
    assert.are.equal(0, tdb.count("SELECT count(*) FROM audit_logs"))
  end)

  it("serves a task's files and refuses path traversal and bad ids", function()
    local base = web {}
    local code, body = curl(base .. "/files/c1/1/final.mp4")
    assert.are.equal(200, code)
    assert.are.equal("not really a video", body)
    for _, path in ipairs {
      "/files/c1/1/../../secret.txt", "/files/c1/1/%2e%2e/%2e%2e/secret.txt", "/files/c1/1/..%2f..%2fsecret.txt",
      "/files/c1/1/%2fetc%2fpasswd",
    } do
      code, body = curl(base .. path, { "--path-as-is" })
      assert.is_truthy(code == 403 or code == 404, path .. " -> " .. tostring(code))
      assert.is_nil(body:find("outside any task folder", 1, true), path)
    end
    assert.are.equal(400, (curl(base .. "/files/..%2f/1/x", { "--path-as-is" })))
    assert.are.equal(400, (curl(base .. "/files/c1/0x1/final.mp4")))
    assert.are.equal(404, (curl(base .. "/files/c1/1/missing.mp4")))
  end)

  it("shows the video player when the file is reachable, else the path, duration and size", function()
    local ids = gate_tasks(2)
    db.query([[INSERT INTO videos (task_id, channel_id, path, duration_seconds, size_bytes)
               VALUES ($1, 'c1', $2, 12.5, 18), ($3, 'c1', '/elsewhere/v.mp4', 30, 1048576)]],
             ids[1], workspace_dir .. "/c1/" .. ids[1] .. "/final.mp4", ids[2])
    assert(proc.run({ "mkdir", "-p", workspace_dir .. "/c1/" .. ids[1] }).code == 0)
    local f = assert(io.open(workspace_dir .. "/c1/" .. ids[1] .. "/final.mp4", "wb"))
    f:write("not really a video")
    f:close()
    local base = web {}
    local _, body = curl(base .. "/review")
    local first = body:match('id="task%-' .. ids[1] .. '".-</div>')
    local second = body:match('id="task%-' .. ids[2] .. '".-</div>')
    assert.matches('<video controls preload="metadata" src="/files/c1/' .. ids[1] .. '/final.mp4"', first, 1, true)
    assert.is_nil(second:find("<video", 1, true))
    assert.matches("/elsewhere/v.mp4, 30.0 s, 1.0 MiB (the file is not reachable from this service)", second, 1, true)
  end)

  it("refuses malformed and oversized requests and keeps serving", function()
    local base = web { VG_WEB_USERS = users }
    assert.are.equal(413, (curl(base .. "/review/decide", { "-u", "alice:" .. PASSWORD, "--data-binary", string.rep("x", 20000) })))
    assert.are.equal(401, (curl(base .. "/", { "-H", "Authorization: Basic !!!" })))
    assert.are.equal(401, (curl(base .. "/", { "-H", "Authorization: Basic " .. string.rep("QUFB", 1200) })))
    assert.are.equal(415, (curl(base .. "/review/decide", { "-u", "alice:" .. PASSWORD, "-H", "Content-Type: text/plain", "--data", "x" })))
    assert.are.equal(200, (curl(base .. "/", { "-u", "alice:" .. PASSWORD })))
  end)

  it("caps per-channel series at the top N by depth plus _other, in text promtool accepts", function()
    for i = 1, 5 do
      tdb.channel("m" .. i)
      tdb.enqueue("m" .. i, i, { pipeline = "noop", delay = 3600 })
    end
    db.query([[INSERT INTO video_costs (channel_id, step, component, cost_usd) VALUES
               ('m1', 'video_generation', 'runway', 1.25), ('m2', 'narration_generation', 'elevenlabs', 0.5)]])
    local base = web { VG_METRICS_TOP_CHANNELS = "2" }
    local code, text = curl(base .. "/metrics")
    assert.are.equal(200, code)
    assert.is_truthy(text:find('vg_queue_channel_tasks{channel="m5",status="pending",priority="normal"} 5', 1, true))
    assert.is_truthy(text:find('vg_queue_channel_tasks{channel="m4",status="pending",priority="normal"} 4', 1, true))
    assert.is_truthy(text:find('vg_queue_channel_tasks{channel="_other",status="pending",priority="normal"} 6', 1, true))
    assert.is_nil(text:find('channel="m1"', 1, true) and text:find('vg_queue_channel_tasks{channel="m1"', 1, true))
    assert.is_truthy(text:find('vg_queue_tasks{status="pending",priority="normal"} 15', 1, true))
    assert.is_truthy(text:find('vg_cost_usd_by_component{component="runway"} 1.25', 1, true))
    assert.is_truthy(text:find('vg_workers{state="alive"} 0', 1, true))
    local ok, out = promtool_check(text)
    assert(ok, out)
  end)

  it("shows a database outage on the page and in /healthz, and recovers", function()
    local px = proxy.start()
    local base = web { DATABASE_URL = px.url }
    assert.are.equal(200, (curl(base .. "/")))
    px:kill()
    local code, body = curl(base .. "/")
    assert.are.equal(503, code)
    assert.matches('id="outage"', body, 1, true)
    code, body = curl(base .. "/healthz")
    assert.are.equal(503, code)
    assert.are.equal("database_unreachable", cjson.decode(body).reason)
    assert.are.equal(503, (curl(base .. "/metrics")))
    assert.are.equal(503, (curl(base .. "/review")))
    px:up()
    assert.is_true(tdb.eventually(function() return (curl(base .. "/healthz")) == 200 end, 30))
    assert.are.equal(200, (curl(base .. "/")))
  end)
end)
