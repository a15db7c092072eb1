-- Deploying and a newcomer's bad inputs: secrets never printed, every script
-- saying what went wrong, configuration checked completely at start-up,
-- payloads of any size, and the admin scripts' smaller surprises.
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local cjson = require "cjson"

local describe_db = tdb.available() and describe or pending

-- Nothing listens on port 1 of the loopback address.
local CLOSED = "127.0.0.1:1"

local function output(r) return (r.stdout or "") .. (r.stderr or "") end

-- Pieces of a password that must never appear: the whole of it and every
-- run of 3 or more characters between URL delimiters.
local function pieces(pw)
  local t = { pw }
  for p in pw:gmatch("[^%%@:/]+") do
    if #p >= 3 then t[#t + 1] = p end
  end
  return t
end

local function assert_hidden(r, pw, what)
  local out = output(r)
  for _, p in ipairs(pieces(pw)) do
    assert.is_nil(out:find(p, 1, true), what .. " printed " .. p .. ":\n" .. out)
  end
end

describe("a DATABASE_URL password", function()
  after_each(host.cleanup)

  local passwords = {
    "MySecret%",           -- a raw % (the issue's report)
    "Tr1cky@Pa55@w0rd",    -- raw @
    "colon:Sep:arated",    -- : is fine for libpq
    "slash/Sep/arated",    -- raw /
    "s\xc3\xa9cr\xc3\xa9tPa\xe2\x82\xacss", -- non-ASCII
    "Mixed%@:/\xc3\xa9Word",
  }
  local scripts = {
    { "lua/migrate.lua" },
    { "lua/status.lua" },
    { "lua/enqueue.lua", "--channel", "c1", "{}" },
    { "lua/review.lua", "list" },
    { "lua/worker.lua" },
  }

  for _, pw in ipairs(passwords) do
    it("is never printed, by any script, whatever it holds: " .. pw, function()
      for _, args in ipairs(scripts) do
        local r = host.run(args, { env = host.env {
          DATABASE_URL = "postgresql://vguser:" .. pw .. "@" .. CLOSED .. "/vg",
          VG_DB_CONNECT_TIMEOUT = "0.2", LOG_LEVEL = "debug" } })
        assert.equal(1, r.code, args[1] .. ": " .. output(r))
        assert.is_true(#output(r) > 0, args[1] .. " printed nothing")
        assert_hidden(r, pw, args[1])
      end
    end)
  end

  it("with a raw % is refused with a message naming the fix", function()
    local r = host.run({ "lua/migrate.lua" }, { env = host.env {
      DATABASE_URL = "postgresql://u:MySecret%@" .. CLOSED .. "/db" } })
    assert.equal(1, r.code)
    assert.matches("percent%-encode", output(r))
    assert.matches("%%25", output(r))
  end)

  it("is hidden in a URL given to db.configure", function()
    local r = host.run({ host.script([[
      local db = require "vg.db"
      local ok, err = pcall(function()
        db.configure { url = "postgresql://u:Hidden%Pw@127.0.0.1:1/db" }
        db.query("SELECT 1")
      end)
      print(tostring(err))
    ]]) }, { env = host.env { VG_DB_CONNECT_TIMEOUT = "0.2" } })
    assert_hidden(r, "Hidden%Pw", "db.configure")
  end)
end)

describe("a database script", function()
  after_each(host.cleanup)

  local scripts = {
    { "lua/migrate.lua" },
    { "lua/status.lua" },
    { "lua/status.lua", "--json" },
    { "lua/enqueue.lua", "--channel", "c1", "--pipeline", "noop", "{}" },
    { "lua/review.lua", "list" },
  }

  local function run(args, url, extra)
    local env = host.env(extra)
    env.DATABASE_URL = url or false
    env.VG_DB_CONNECT_TIMEOUT = "0.2"
    return host.run(args, { env = env })
  end

  it("says DATABASE_URL is not set", function()
    for _, args in ipairs(scripts) do
      local r = run(args, nil)
      assert.equal(1, r.code, args[1])
      assert.matches("DATABASE_URL is required but not set", output(r), 1, true)
    end
  end)

  it("says DATABASE_URL is malformed", function()
    for _, url in ipairs { "garbage", "mysql://u@h/db", "postgresql://h:port/db" } do
      for _, args in ipairs(scripts) do
        local r = run(args, url)
        assert.equal(1, r.code, args[1] .. " " .. url)
        assert.is_truthy(output(r):find("DATABASE_URL", 1, true), args[1] .. ": " .. output(r))
      end
    end
  end)

  it("says the database cannot be reached", function()
    for _, args in ipairs(scripts) do
      local r = run(args, "postgresql://postgres@" .. CLOSED .. "/vg")
      assert.equal(1, r.code, args[1])
      assert.matches("connection refused", output(r), 1, true)
    end
    local r = run({ "lua/status.lua" }, "postgresql://postgres@db.invalid/vg")
    assert.equal(1, r.code)
    assert.matches("db.invalid", output(r), 1, true)
  end)

  describe_db("on an unmigrated database", function()
    local db
    setup(function()
      db = tdb.setup()
      db.query("DROP DATABASE IF EXISTS vg_unmigrated")
      db.query("CREATE DATABASE vg_unmigrated")
    end)
    teardown(function() db.query("DROP DATABASE IF EXISTS vg_unmigrated WITH (FORCE)") end)

    it("says to run lua/migrate.lua", function()
      local url = (tdb.url:gsub("/[^/?]*(%??[^/]*)$", "/vg_unmigrated%1"))
      for _, args in ipairs(scripts) do
        if args[1] ~= "lua/migrate.lua" then
          local r = run(args, url)
          assert.equal(1, r.code, args[1] .. ": " .. output(r))
          assert.matches("run `vg-host lua/migrate.lua`", r.stderr, 1, true)
          assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
        end
      end
      -- The worker says so in its critical line, before it claims anything.
      local r = run({ "lua/worker.lua" }, url)
      assert.equal(1, r.code, output(r))
      local crit = host.find(host.lines(r.stdout), "database_not_migrated")
      assert.is_not_nil(crit, r.stdout)
      assert.matches("run `vg-host lua/migrate.lua`", crit.error, 1, true)
    end)
  end)
end)

describe("lua/worker.lua", function()
  it("answers --help with its usage instead of starting a worker", function()
    local r = host.run({ "lua/worker.lua", "--help" })
    assert.equal(0, r.code)
    assert.matches("usage: vg-host lua/worker.lua", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("worker_started", 1, true))
    r = host.run({ "lua/worker.lua", "--bogus" })
    assert.equal(2, r.code)
    assert.matches("unexpected argument '--bogus'", r.stderr, 1, true)
  end)

  it("reports its step settings with the other configuration problems, in one line", function()
    local r = host.run({ "lua/worker.lua" }, { env = host.env {
      VG_CONCURRENCY = "many", VG_STEP_VIDEO_GENERATION = "/nonexistent/gen-video",
    } })
    assert.equal(1, r.code)
    local lines = host.lines(r.stdout)
    assert.equal(1, #lines, r.stdout)
    local all = table.concat(lines[1].errors, "\n")
    assert.equal("configuration_invalid", lines[1].event)
    assert.matches("VG_CONCURRENCY", all)
    assert.matches("VG_STEP_VIDEO_GENERATION: /nonexistent/gen-video does not exist", all, 1, true)
  end)
end)

describe("start-up configuration", function()
  local config = require "vg.config"
  local steps = require "vg.steps"
  after_each(host.cleanup)

  it("reports a bad host variable together with the others, in one line", function()
    local r = host.run({ host.script("print('ran')") }, { env = host.env {
      LOG_LEVEL = "loud", VG_CONCURRENCY = "many", VG_DB_POOL_TIMEOUT = "soon",
      WORKER_ID = "has space" } })
    assert.equal(1, r.code)
    assert.is_nil(r.stdout:find("ran", 1, true))
    local lines = host.lines(r.stdout)
    assert.equal(1, #lines)
    assert.equal("configuration_invalid", lines[1].event)
    assert.equal(4, #lines[1].errors)
  end)

  -- The host's own settings (LOG_LEVEL, LOG_FORMAT, WORKER_ID,
  -- VG_SHUTDOWN_GRACE, VG_TASK_SLICE) are held back for the script's check,
  -- so they are reported with the variables it requires and its step
  -- settings: one line, exit 1.
  local function one_line(r)
    local lines = host.lines(r.stdout)
    assert.equal(1, #lines, r.stdout)
    assert.equal("configuration_invalid", lines[1].event)
    assert.equal("critical", lines[1].level)
    assert.equal(#lines[1].errors, lines[1].count)
    return table.concat(lines[1].errors, "\n"), lines[1]
  end

  it("reports a missing required variable and a bad setting in one line", function()
    local r = host.run({ "lua/worker.lua" }, { env = host.env {
      DATABASE_URL = "", VG_CONCURRENCY = "abc" } })
    assert.equal(1, r.code, output(r))
    local all = one_line(r)
    assert.matches("DATABASE_URL is required but not set", all, 1, true)
    assert.matches('VG_CONCURRENCY must be a whole number from 1 to 10000; got "abc"', all, 1, true)
  end)

  it("reports the host's own settings with the worker's required variables and steps", function()
    local r = host.run({ "lua/worker.lua" }, { env = host.env {
      DATABASE_URL = "", LOG_LEVEL = "loud", LOG_FORMAT = "xml", WORKER_ID = "has space",
      VG_SHUTDOWN_GRACE = "soon", VG_TASK_SLICE = "never", VG_CONCURRENCY = "abc",
      VG_STEP_VIDEO_GENERATION = "/nonexistent/gen-video" } })
    assert.equal(1, r.code, output(r))
    local all, line = one_line(r)
    assert.equal(8, line.count, all)
    for _, name in ipairs { "LOG_LEVEL", "LOG_FORMAT", "WORKER_ID", "VG_SHUTDOWN_GRACE",
                            "VG_TASK_SLICE", "VG_CONCURRENCY" } do
      assert.matches(name .. " must be", all, 1, true)
    end
    assert.matches("DATABASE_URL is required but not set", all, 1, true)
    assert.matches("VG_STEP_VIDEO_GENERATION: /nonexistent/gen-video does not exist", all, 1, true)
    assert.equal("", r.stderr)
  end)

  it("reports the host's settings with an admin script's own problems", function()
    local r = host.run({ "lua/migrate.lua" }, { env = host.env { DATABASE_URL = "", LOG_LEVEL = "loud" } })
    assert.equal(1, r.code, output(r))
    assert.matches("invalid configuration: LOG_LEVEL must be one of", r.stderr, 1, true)
    assert.matches("DATABASE_URL is required but not set", r.stderr, 1, true)
  end)

  it("lets a script load modules and compute before its check", function()
    local r = host.run({ host.script([[
      local cjson = require "cjson"
      local vg = require "vg"
      local log = require("vg.log").bind { part = "setup" }
      local want = { "DATABASE_URL", "FERNET_KEY" }
      table.sort(want)
      local n = 0
      for _, name in ipairs(want) do n = n + #name:lower() end
      for k in pairs(cjson.decode('{"a":1}')) do n = n + #k end
      for w in ("a b"):gmatch("%a") do n = n + #w end
      require("vg.config").load(want)
      print("not reached", n, vg, log)
    ]]) }, { env = host.env { DATABASE_URL = "", FERNET_KEY = "", WORKER_ID = "has space" } })
    assert.equal(1, r.code, output(r))
    local all, line = one_line(r)
    assert.equal(3, line.count, all)
    assert.matches("WORKER_ID must be", all, 1, true)
    assert.matches("FERNET_KEY is required", all, 1, true)
  end)

  -- A script that does not check its configuration: whatever it does
  -- first beyond loading and computing, the host reports its own problems
  -- instead, and the script gets no further.
  for _, case in ipairs {
    { "prints", "print('RAN_MARK')" },
    { "writes to stdout", "io.stdout:write('RAN_MARK\\n')" },
    { "logs", "require('vg.log').info('RAN_MARK')" },
    { "waits", "require('vg').sleep(0) print('RAN_MARK')" },
    { "starts a task", "require('vg').spawn(function() print('RAN_MARK') end)" },
    { "exits", "os.exit(0)" },
    { "runs a command", "os.execute('echo RAN_MARK')" },
    { "raises", "error('RAN_MARK')" },
    { "ends", "local RAN_MARK = 1" },
    { "checks a table instead of the environment",
      "require('vg.config').check({ 'DATABASE_URL' }, { DATABASE_URL = 'postgresql://h/d' }) print('RAN_MARK')" },
  } do
    it("reports the host's settings itself when a script " .. case[1] .. " before any check", function()
      local r = host.run({ host.script(case[2]) }, { env = host.env {
        LOG_LEVEL = "loud", DATABASE_URL = "", VG_CONCURRENCY = "abc" } })
      assert.equal(1, r.code, output(r))
      assert.is_nil(output(r):find("RAN_MARK", 1, true), output(r))
      local all, line = one_line(r)
      -- The environment's problems; nothing was required.
      assert.equal(2, line.count, all)
      assert.matches("LOG_LEVEL must be", all, 1, true)
      assert.matches("VG_CONCURRENCY must be", all, 1, true)
    end)
  end

  it("checks step commands and timeouts with the rest, in one line", function()
    local not_executable = host.script("echo hi", ".sh")
    local r = host.run({ host.script([[
      require("vg.config").load { "DATABASE_URL", check = require("vg.steps").config_check }
      print("not reached")
    ]]) }, { env = host.env {
      VG_CONCURRENCY = "many",
      VG_STEP_VIDEO_GENERATION = "/nonexistent/gen-video --fast",
      VG_STEP_ASSET_GENERATION = not_executable,
      VG_STEP_TIMEOUT_VIDEO_ASSEMBLY = "soon",
      VG_STEP_VIDEO_GENERATON = "/bin/true",
    } })
    assert.equal(1, r.code)
    assert.is_nil(r.stdout:find("not reached", 1, true))
    local lines = host.lines(r.stdout)
    local l = host.find(lines, "configuration_invalid")
    assert.equal(1, #lines)
    local all = table.concat(l.errors, "\n")
    assert.equal(5, #l.errors, all)
    assert.matches("VG_CONCURRENCY", all)
    assert.matches("VG_STEP_VIDEO_GENERATION: /nonexistent/gen-video does not exist", all, 1, true)
    assert.matches("VG_STEP_ASSET_GENERATION: " .. not_executable .. " is not an executable file", all, 1, true)
    assert.matches("VG_STEP_TIMEOUT_VIDEO_ASSEMBLY must be a positive duration", all, 1, true)
    assert.matches("VG_STEP_VIDEO_GENERATON names no step", all, 1, true)
  end)

  it("accepts the shipped step scripts and durations with units for step timeouts", function()
    local pipes = require("vg.pipeline").load("pipelines")
    assert.same({}, steps.check(pipes, { VG_STEP_TIMEOUT_VIDEO_GENERATION = "10m",
                                         VG_STEP_TIMEOUT_ASSET_GENERATION = "30s",
                                         VG_STEP_NARRATION_GENERATION = "sh -c true" }))
    assert.equal(600, steps.timeout_for("video_generation", { VG_STEP_TIMEOUT_VIDEO_GENERATION = "10m" }))
    assert.equal(0.5, steps.timeout_for("video_generation", { VG_STEP_TIMEOUT_VIDEO_GENERATION = "500ms" }))
    assert.equal(90, steps.timeout_for("video_generation", { VG_STEP_TIMEOUT_VIDEO_GENERATION = "90" }))
  end)

  it("names a missing default step script", function()
    local pipes = require("vg.pipeline").load("pipelines")
    local problems = steps.check(pipes, { VG_SCRIPTS_DIR = "/nonexistent" })
    assert.equal(6, #problems)
    assert.matches("VG_SCRIPTS_DIR", problems[1])
  end)

  it("gives each process an instance with 64 random bits", function()
    local v = config.check({}, {})
    assert.matches(":%d+:%x+$", v.instance)
    assert.equal(16, #v.instance:match(":(%x+)$"))
  end)

  it("reads the type of each variable from the table of kinds", function()
    local v = config.check({}, { VG_DB_PREPARE = "off", VG_LEASE_SECONDS = "2m", VG_PIPELINES = "p",
                                 LOG_FORMAT = "CONSOLE" })
    assert.is_false(v.VG_DB_PREPARE)
    assert.equal(120, v.VG_LEASE_SECONDS)
    assert.equal("p", v.VG_PIPELINES)
    assert.equal("console", v.LOG_FORMAT)
  end)
end)

describe_db("a worker with a broken step command", function()
  local db
  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)

  it("stops at start-up, before it claims anything", function()
    tdb.channel("bs-1", { review_gates = false })
    local id = tdb.enqueue("bs-1", 1, { pipeline = "video" })[1]
    local r = host.run({ "lua/worker.lua" }, { env = host.env {
      DATABASE_URL = tdb.url, VG_STEP_VIDEO_GENERATION = "/nonexistent/gen-video",
      VG_STEP_TIMEOUT_VIDEO_ASSEMBLY = "10m" } })
    assert.equal(1, r.code, output(r))
    local l = host.find(host.lines(r.stdout), "configuration_invalid")
    assert.is_not_nil(l, r.stdout)
    assert.same({ "VG_STEP_VIDEO_GENERATION: /nonexistent/gen-video does not exist" }, l.errors)
    assert.is_nil(host.find(host.lines(r.stdout), "task_claimed"))
    local row = db.query("SELECT status, attempts FROM tasks WHERE id = $1", id)[1]
    assert.equal("pending", row.status)
    assert.equal(0, row.attempts)
  end)
end)

describe_db("payloads", function()
  local db, steps
  setup(function()
    db = tdb.setup()
    steps = require "vg.steps"
  end)
  before_each(function() tdb.reset() end)
  after_each(host.cleanup)

  local function enqueue(args, opts)
    local argv = { "lua/enqueue.lua" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return require("vg.proc").run(
      (function() local t = { host.bin }; for _, a in ipairs(argv) do t[#t + 1] = a end; return t end)(),
      { env = host.env { DATABASE_URL = tdb.url }, cwd = host.root, stdin = opts and opts.stdin,
        timeout = 60 })
  end

  it("reach a step through VG_PAYLOAD_FILE at any size", function()
    tdb.channel("pl-1")
    local big = { text = string.rep("x", 300 * 1024) }
    local id = tdb.enqueue("pl-1", 1, { payload = big })[1]
    local root = os.tmpname()
    os.remove(root)
    local opts = steps.options({ VG_WORKSPACE = root })
    local task = { id = id, channel_id = "pl-1", payload = big, attempts = 1 }
    local ctx = { task = task, payload = big }
    opts.context(ctx, task, { name = "asset_generation" })
    local r = ctx.run({ "sh", "-c", 'wc -c < "$VG_PAYLOAD_FILE"; echo "env:${VG_PAYLOAD+set}"' })
    assert.equal(0, r.code, r.stderr)
    local size = tonumber(r.stdout:match("^%s*(%d+)"))
    assert.equal(#cjson.encode(big), size)
    assert.matches("env:\n", r.stdout, 1, true)
    -- A small payload comes in VG_PAYLOAD as well.
    local small = { title = "t" }
    local t2 = { id = id, channel_id = "pl-1", payload = small, attempts = 1 }
    local ctx2 = { task = t2, payload = small }
    opts.context(ctx2, t2, { name = "asset_generation" })
    r = ctx2.run({ "sh", "-c", 'printf %s "$VG_PAYLOAD"' })
    assert.same(small, cjson.decode(r.stdout))
    os.execute("rm -rf '" .. root .. "'")
  end)

  it("are read by enqueue from stdin and from a file", function()
    local r = enqueue({ "--create-channel", "--channel", "pl-2", "--pipeline", "noop", "-" },
                      { stdin = '{"from":"stdin"}' })
    assert.equal(0, r.code, r.stderr)
    local path = host.script(cjson.encode { from = "file", big = string.rep("y", 200 * 1024) }, ".json")
    r = enqueue({ "--channel", "pl-2", "--pipeline", "noop", "--payload-file", path })
    assert.equal(0, r.code, r.stderr)
    local rows = db.query("SELECT payload->>'from' AS src, length(payload->>'big') AS n FROM tasks ORDER BY id")
    assert.equal("stdin", rows[1].src)
    assert.equal("file", rows[2].src)
    assert.equal(200 * 1024, rows[2].n)
  end)

  it("with NUL or invalid UTF-8, unknown pipelines and bad --run-at are refused by name", function()
    tdb.channel("pl-3")
    local cases = {
      { { "--channel", "pl-3", "-" }, '{"a":"x\\u0000y"}', "NUL" },
      { { "--channel", "pl-3", "-" }, '{"a":"x\0y"}', "NUL" },
      { { "--channel", "pl-3", "-" }, '{"a":"\xff\xfe"}', "not valid UTF-8" },
      { { "--channel", "pl-3", "--pipeline", "vidoe", "{}" }, nil, 'no pipeline named "vidoe"' },
      { { "--channel", "pl-3", "--run-at", "tomorrow", "{}" }, nil, '--run-at "tomorrow"' },
      { { "--channel", "pl-3", "--run-at", "2026-13-01", "{}" }, nil, '--run-at "2026-13-01"' },
      { { "--channel", "pl-3", "--run-at", "2026-02-30", "{}" }, nil, "2026-02-30" },
      { { "--channel", "pl-3", "--run-at", "+soon", "{}" }, nil, '--run-at "+soon"' },
    }
    for _, c in ipairs(cases) do
      local r = enqueue(c[1], { stdin = c[2] })
      assert.equal(2, r.code, table.concat(c[1], " ") .. ": " .. r.stderr)
      assert.matches(c[3], r.stderr, 1, true)
      assert.is_nil(r.stderr:find("sql_error", 1, true), r.stderr)
    end
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks"))
    local r = enqueue { "--channel", "pl-3", "--pipeline", "noop", "--run-at", "+10m", "{}" }
    assert.equal(0, r.code, r.stderr)
  end)
end)

describe_db("lua/status.lua", function()
  local db
  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)

  local function status(args)
    local argv = { "lua/status.lua" }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    return host.run(argv, { env = host.env { DATABASE_URL = tdb.url } })
  end

  it("--json writes every list as an array, empty ones too", function()
    local r = status { "--json" }
    assert.equal(0, r.code, r.stderr)
    for _, k in ipairs { "by_status", "queued_by_priority", "by_channel", "workers",
                         "recent_failures", "cost_by_channel", "cost_by_video" } do
      assert.is_truthy(r.stdout:find('"' .. k .. '":[', 1, true), k .. " in " .. r.stdout)
    end
    assert.is_truthy(r.stdout:find('"oldest_pending":null', 1, true))
  end)

  it("counts done and running tasks from the tasks table, before any heartbeat", function()
    tdb.channel("st-1")
    local ids = tdb.enqueue("st-1", 4)
    db.query([[INSERT INTO workers (worker_id, instance, status, tasks_done)
               VALUES ('w1', 'h:1:a', 'running', 0)]])
    db.query([[UPDATE tasks SET claimed_by = 'w1', claimed_instance = 'h:1:a',
                 status = CASE WHEN id = ANY($1::bigint[]) THEN 'completed' ELSE 'processing' END
               WHERE id = ANY($2::bigint[])]], "{" .. ids[1] .. "," .. ids[2] .. "}",
             "{" .. table.concat({ ids[1], ids[2], ids[3] }, ",") .. "}")
    local r = status { "--json" }
    assert.equal(0, r.code, r.stderr)
    local w = cjson.decode(r.stdout).workers[1]
    assert.equal(2, w.tasks_done)
    assert.equal(1, w.in_flight)
    r = status()
    assert.matches("done 2 ", r.stdout, 1, true)
  end)
end)
