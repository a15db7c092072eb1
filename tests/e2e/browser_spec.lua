-- A real headless Chromium (Debian's chromium, driven over WebDriver by
-- Debian's chromium-driver) signs in to lua/web.lua, approves one review
-- gate and rejects another with a reason; then audit_logs and the tasks'
-- states are checked, the approved task having run on to completion on a
-- real worker. Screenshots of both pages go to docs/.
local proc = require "vg.proc"
local cjson = require "cjson"
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local web_mod = require "vg.web"
local e2e = require "tests.e2e.support"

local describe_db = tdb.available() and describe or pending

local PASSWORD = "a long pass phrase"

describe_db("the status page and review screen in Chromium", function()
  local db, dir, worker, web, driver, session, wd_port

  local function wd(method, path, body)
    local code, text = e2e.curl("http://127.0.0.1:" .. wd_port .. path,
                                { method = method, json = body or (method == "POST" and {} or nil) })
    local r = text and text ~= "" and cjson.decode(text) or {}
    assert(code == 200, string.format("WebDriver %s %s: %s %s", method, path, tostring(code), tostring(text)))
    return r.value
  end

  local function s(path) return "/session/" .. session .. path end

  local function find(css)
    local el = wd("POST", s("/element"), { using = "css selector", value = css })
    local id = el["element-6066-11e4-a52e-4f735466cecf"]
    assert(id, "no element " .. css .. ": " .. cjson.encode(el))
    return id
  end

  local function page_source() return wd("GET", s("/source")) end

  local function screenshot(path)
    local png = web_mod.b64decode(wd("GET", s("/screenshot")))
    assert(png and png:sub(2, 4) == "PNG", "not a PNG")
    local f = assert(io.open(path, "wb"))
    f:write(png)
    f:close()
  end

  setup(function()
    db = tdb.setup()
    tdb.reset()
    dir = e2e.tempdir()
  end)

  teardown(function()
    if session then pcall(wd, "DELETE", "/session/" .. session) end
    e2e.stop(driver)
    e2e.stop(worker)
    e2e.stop(web)
    if dir then proc.run({ "rm", "-rf", dir }) end
  end)

  it("approves one gate and rejects another with a reason; audit_logs and the tasks move on", function()
    -- Two tasks stop at the gated pipeline's review gate on a real worker.
    tdb.channel("b1")
    local ids = tdb.enqueue("b1", 2, { pipeline = "gated" })
    tdb.enqueue("b1", 3, { pipeline = "noop", delay = 3600 })
    worker = e2e.worker("browser-w1")
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'awaiting_review'") == 2
    end, 60))
    db.query([[INSERT INTO video_costs (task_id, channel_id, step, component, cost_usd)
               VALUES ($1, 'b1', 'one', 'demo-tts', 0.42)]], ids[1])

    local r = proc.run({ host.bin, "lua/web.lua", "--hash-password", "alice" },
                       { stdin = PASSWORD .. "\n", cwd = host.root })
    assert.are.equal(0, r.code, r.stderr)
    local port
    web, port = e2e.web { VG_WEB_USERS = (r.stdout:gsub("%s+$", "")), VG_WORKSPACE = dir .. "/ws" }

    wd_port = e2e.free_port()
    driver = proc.spawn({ "chromedriver", "--port=" .. wd_port }, {})
    assert.is_true(tdb.eventually(function()
      local code, body = e2e.curl("http://127.0.0.1:" .. wd_port .. "/status")
      return code == 200 and cjson.decode(body).value.ready == true
    end, 30, 0.1), driver:stderr())
    local created = wd("POST", "/session", { capabilities = { alwaysMatch = {
      browserName = "chrome",
      ["goog:chromeOptions"] = {
        binary = "/usr/bin/chromium",
        args = { "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--user-data-dir=" .. dir .. "/profile", "--window-size=1280,900" },
      },
    } } })
    session = created.sessionId
    assert.is_truthy(session)

    -- The status page, signed in (credentials in the URL: the browser
    -- keeps them for the origin's later requests, form posts included).
    local base = "http://alice:" .. PASSWORD:gsub(" ", "%%20") .. "@127.0.0.1:" .. port
    wd("POST", s("/url"), { url = base .. "/" })
    local src = page_source()
    assert.matches("Signed in as alice", src, 1, true)
    assert.matches("browser-w1", src, 1, true)
    assert.matches("demo-tts", src, 1, true)
    screenshot(host.root .. "/docs/status-page.png")

    -- The review screen: approve the first task.
    wd("POST", s("/url"), { url = "http://127.0.0.1:" .. port .. "/review" })
    src = page_source()
    assert.matches('id="task-' .. ids[1] .. '"', src, 1, true)
    assert.matches('id="task-' .. ids[2] .. '"', src, 1, true)
    screenshot(host.root .. "/docs/review-page.png")
    wd("POST", s("/element/" .. find("#approve-" .. ids[1]) .. "/click"))
    assert.is_true(tdb.eventually(function()
      return page_source():find("Task " .. ids[1] .. " approved by alice", 1, true) ~= nil
    end, 20))

    -- Reject the second with a reason typed into its form.
    local reason = "Narration too fast; redo at 0.9x"
    wd("POST", s("/element/" .. find("#reason-" .. ids[2]) .. "/value"), { text = reason })
    wd("POST", s("/element/" .. find("#reject-" .. ids[2]) .. "/click"))
    assert.is_true(tdb.eventually(function()
      return page_source():find("Task " .. ids[2] .. " rejected by alice", 1, true) ~= nil
    end, 20))

    -- audit_logs name alice; the approved task ran on to completion on the
    -- worker, the rejected one stays rejected.
    local logs = db.query("SELECT task_id, actor, action, details FROM audit_logs ORDER BY id")
    assert.are.equal(2, #logs)
    assert.are.same({ ids[1], "alice", "task_approved" }, { logs[1].task_id, logs[1].actor, logs[1].action })
    assert.are.same({ ids[2], "alice", "task_rejected" }, { logs[2].task_id, logs[2].actor, logs[2].action })
    assert.are.equal(reason, logs[2].details.reason)
    assert.is_true(tdb.eventually(function()
      return db.query("SELECT status FROM tasks WHERE id = $1", ids[1])[1].status == "completed"
    end, 60))
    assert.are.equal("rejected", db.query("SELECT status FROM tasks WHERE id = $1", ids[2])[1].status)
    assert.are.equal(0, tdb.count("SELECT count(*) FROM test_executions WHERE task_id = " .. ids[2] .. " AND step = 'three'"))
  end)
end)
