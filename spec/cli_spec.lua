-- The command line, exit codes and the log format, seen from outside: each
-- test runs the real binary as a child process.
local host = require "spec.support.host"
local proc = require "vg.proc"

describe("vg-host command line", function()
  after_each(host.cleanup)

  it("prints its version and exits 0", function()
    local r = host.run { "--version" }
    assert.equal(0, r.code)
    assert.matches("^vg%-host %d+%.%d+%.%d+", r.stdout)
  end)

  it("prints help and exits 0", function()
    local r = host.run { "--help" }
    assert.equal(0, r.code)
    assert.matches("usage: vg%-host", r.stdout)
  end)

  it("exits 2 on a usage error", function()
    assert.equal(2, host.run({}).code)
    local r = host.run { "--bogus", "x.lua" }
    assert.equal(2, r.code)
    assert.matches("unknown option", r.stderr)
  end)

  it("reports a missing script as a critical JSON line and exits 1", function()
    local r = host.run { "/nonexistent/script.lua" }
    assert.equal(1, r.code)
    local l = host.find(host.lines(r.stdout), "script_not_found")
    assert.equal("critical", l.level)
  end)

  it("reports a syntax error and exits 1", function()
    local r = host.run { host.script("local x = = 1") }
    assert.equal(1, r.code)
    local l = host.find(host.lines(r.stdout), "script_syntax_error")
    assert.equal("critical", l.level)
    assert.matches("unexpected symbol", l.error)
  end)

  it("reports an uncaught runtime error with its traceback and exits 1", function()
    local r = host.run { host.script("local function f() error('kaput') end\nf()") }
    assert.equal(1, r.code)
    local l = host.find(host.lines(r.stdout), "script_error")
    assert.equal("critical", l.level)
    assert.matches("kaput", l.error)
    assert.matches("stack traceback", l.traceback)
    assert.matches("in local 'f'", l.traceback)
  end)

  it("--check compiles without running", function()
    local ok = host.run { "--check", host.script("error('must not run')") }
    assert.equal(0, ok.code)
    assert.equal("", ok.stdout)
    local bad = host.run { "--check", host.script("if then") }
    assert.equal(1, bad.code)
  end)

  it("sets arg and the script's varargs like the stock interpreter", function()
    local s = host.script([[
      local a, b = ...
      print(arg[0]:match("%.lua$") ~= nil, arg[1], arg[2], a, b, #arg, arg[-1] ~= nil)
    ]])
    local r = host.run { s, "one", "two" }
    assert.equal(0, r.code)
    assert.equal("true\tone\ttwo\tone\ttwo\t2\ttrue\n", r.stdout)
  end)

  it("finds modules next to the script and on LUA_PATH", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir .. "/lib"))
    local f = assert(io.open(dir .. "/helper_mod.lua", "w"))
    f:write("return 'beside'")
    f:close()
    f = assert(io.open(dir .. "/lib/path_mod.lua", "w"))
    f:write("return 'on-path'")
    f:close()
    f = assert(io.open(dir .. "/main.lua", "w"))
    f:write("print(require 'helper_mod', require 'path_mod', require('vg.worker') ~= nil)")
    f:close()
    local env = host.env { LUA_PATH = dir .. "/lib/?.lua;;" }
    local r = host.run({ dir .. "/main.lua" }, { env = env })
    os.execute("rm -rf " .. dir)
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal("beside\ton-path\ttrue\n", r.stdout)
  end)
end)

describe("logging", function()
  after_each(host.cleanup)

  it("writes one valid JSON object per line with the required keys", function()
    local r = host.run({ host.script([[
      local log = require "vg.log"
      log.info("plain_event", { n = 1, f = 1.5, t = true, list = { 1, 2 }, obj = { a = "b" } })
      log.warning("escapes", { s = 'quote " backslash \\ newline \n tab \t bell \7 nul \0 end',
                               bad = "\xff\xfe ok \xc3\x28", nan = 0/0, inf = math.huge })
      log.error("with_message", { message = "for people" })
    ]]) }, { env = host.env { WORKER_ID = "worker-9" } })
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    assert.equal(3, #lines)
    for _, l in ipairs(lines) do assert.equal("worker-9", l.worker_id) end
    assert.same({ 1, 2 }, lines[1].list)
    assert.equal(1.5, lines[1].f)
    assert.equal("warning", lines[2].level)
    assert.equal('quote " backslash \\ newline \n tab \t bell \7 nul \0 end', lines[2].s)
    assert.equal("\u{FFFD}\u{FFFD} ok \u{FFFD}(", lines[2].bad)
    assert.equal("nan", lines[2].nan)
    assert.equal("inf", lines[2].inf)
    assert.equal("for people", lines[3].message)
  end)

  it("binds fields in a logger and a correlation_id across nested calls", function()
    local r = host.run { host.script([[
      local vg = require "vg"
      local log = require "vg.log"
      local lg = log.bind({ component = "test" })
      lg:info("bound_event", { extra = 1 })
      local function nested() log.info("nested_line") end
      vg.spawn(function()
        log.context({ correlation_id = 77 })
        nested()
        vg.spawn(function() log.info("child_line") end):join()
      end):join()
      log.info("after_task")
    ]]) }
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    local b = host.find(lines, "bound_event")
    assert.equal("test", b.component)
    assert.equal(1, b.extra)
    assert.equal(77, host.find(lines, "nested_line").correlation_id)
    assert.equal(77, host.find(lines, "child_line").correlation_id)
    assert.is_nil(host.find(lines, "after_task").correlation_id)
  end)

  it("writes each key once: context, then bound, then call fields, the host's own keys apart", function()
    local r = host.run { host.script([[
      local vg = require "vg"
      local log = require "vg.log"
      vg.spawn(function()
        log.context({ correlation_id = "ctx", a = "ctx", b = "ctx", c = "ctx" })
        local lg = log.bind({ b = "bound", c = "bound", d = "bound" })
        lg:info("merged", { c = "call", level = "mine", worker_id = "mine", event = "mine" })
      end):join()
    ]]) }
    assert.equal(0, r.code, r.stderr)
    local raw = r.stdout:match('[^\n]*"event":"merged"[^\n]*')
    assert.is_not_nil(raw, r.stdout)
    for _, key in ipairs { "correlation_id", "a", "b", "c", "d", "level", "event", "worker_id",
                           "field_level", "field_worker_id", "field_event" } do
      local _, n = raw:gsub('"' .. key .. '":', "")
      assert.equal(1, n, key .. " appears " .. n .. " times in " .. raw)
    end
    local l = host.lines(raw)[1]
    assert.same({ "ctx", "ctx", "bound", "call", "bound" },
      { l.correlation_id, l.a, l.b, l.c, l.d })
    assert.equal("info", l.level)
    assert.equal("merged", l.event)
    assert.equal("mine", l.field_level)
    assert.not_equal("mine", l.worker_id)
  end)

  it("writes each key once in the host's own lines too: the task's context under the line's fields", function()
    -- proc_started is written by the C side while the task runs, with
    -- fields pid and command; the context holds both names and a host key.
    local r = host.run({ host.script([[
      local vg = require "vg"
      local log = require "vg.log"
      local proc = require "vg.proc"
      vg.spawn(function()
        log.context({ correlation_id = "ctx", pid = "ctx", command = "ctx", event = "ctx" })
        assert(proc.run({ "true" }).code == 0)
      end):join()
    ]]) }, { env = host.env { LOG_LEVEL = "debug" } })
    assert.equal(0, r.code, r.stderr)
    local raw = r.stdout:match('[^\n]*"event":"proc_started"[^\n]*')
    assert.is_not_nil(raw, r.stdout)
    for _, key in ipairs { "timestamp", "level", "event", "worker_id", "correlation_id", "pid",
                           "command", "field_event" } do
      local _, n = raw:gsub('"' .. key .. '":', "")
      assert.equal(1, n, key .. " appears " .. n .. " times in " .. raw)
    end
    local l = host.lines(raw)[1]
    assert.equal("proc_started", l.event)
    assert.equal("ctx", l.correlation_id)
    assert.equal("ctx", l.field_event)
    assert.equal("number", type(l.pid))
    assert.matches("true", l.command)
  end)

  it("filters by LOG_LEVEL", function()
    local r = host.run({ host.script([[
      local log = require "vg.log"
      log.debug("d"); log.info("i"); log.warning("w"); log.error("e")
    ]]) }, { env = host.env { LOG_LEVEL = "warning" } })
    assert.same({ "w", "e" }, host.events(host.lines(r.stdout)))
  end)

  it("prints key=value lines with LOG_FORMAT=console", function()
    local r = host.run({ host.script([[
      require("vg.log").info("hello_console", { answer = 42, who = "ops team" })
    ]]) }, { env = host.env { LOG_FORMAT = "console", WORKER_ID = "w1" } })
    assert.equal(0, r.code)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z info +hello_console worker_id=w1", r.stdout)
    assert.matches("answer=42", r.stdout)
    assert.matches('who="ops team"', r.stdout)
  end)

  it("reports invalid host settings in one configuration_invalid line", function()
    local r = host.run({ host.script("print('ran')") },
      { env = host.env { LOG_LEVEL = "loud", VG_SHUTDOWN_GRACE = "soon" } })
    assert.equal(1, r.code)
    local lines = host.lines(r.stdout)
    assert.equal(1, #lines)
    assert.equal("configuration_invalid", lines[1].event)
    assert.equal("critical", lines[1].level)
    assert.equal(2, #lines[1].errors)
  end)

  it("keeps lines whole when many tasks in several processes log to one file", function()
    -- Four hosts append to the same file (O_APPEND), each from 20 tasks at
    -- once, lines of 10 kB: a line written in more than one write() would
    -- be cut by another process's lines.
    local script = host.script([[
      local vg = require "vg"
      local log = require "vg.log"
      local big = string.rep(arg[1], 10000)
      local ts = {}
      for i = 1, 20 do
        ts[i] = vg.spawn(function()
          for j = 1, 20 do log.info("burst", { i = i, j = j, big = big }); vg.sleep(0) end
        end)
      end
      for _, t in ipairs(ts) do t:join() end
    ]])
    local out = os.tmpname()
    local r = proc.run({ "/bin/sh", "-c", 'for t in a b c d; do "$0" "$1" $t >> "$2" & done; wait',
                         host.bin, script, out }, { env = host.env(), timeout = 120 })
    local f = assert(io.open(out, "rb"))
    local text = f:read("a")
    f:close()
    os.remove(out)
    assert.equal(0, r.code, r.stderr)
    local lines = host.lines(text) -- raises on a line that is not one whole JSON object
    assert.equal(4 * 20 * 20, #lines)
    for _, l in ipairs(lines) do
      assert.equal(10000, #l.big)
      assert.equal(string.rep(l.big:sub(1, 1), 10000), l.big, "a line mixes two processes' text")
    end
  end)
end)

describe("a closed stdout", function()
  after_each(host.cleanup)

  it("sends the log to stderr, and the host exits as usual", function()
    local script = host.script([[
      require("vg.log").info("to_stderr")
      io.stderr:write("script done\n")
    ]])
    local r = proc.run({ "/bin/sh", "-c", 'exec "$0" "$1" >&-', host.bin, script },
      { env = host.env(), timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    assert.matches('"event":"to_stderr"', r.stderr)
  end)

  it("still lets a worker shut down with exit 0 on SIGTERM", function()
    local script = host.script([[
      local vg = require "vg"
      local log = require "vg.log"
      log.info("waiting")
      vg.sleep(120)
      log.info("woken")
    ]])
    local p = proc.spawn({ "/bin/sh", "-c", 'exec "$0" "$1" >&-', host.bin, script },
      { env = host.env() })
    assert.is_truthy(p:wait_output('"event":"waiting"', 30, { plain = true, stream = "stderr" }))
    p:kill("TERM")
    local r = p:wait(30)
    assert.equal(0, r.code, p:stderr())
    assert.matches('"event":"worker_shutdown"', p:stderr())
  end)
end)

describe("vg.config.load", function()
  after_each(host.cleanup)

  it("logs all problems in one critical line and exits 1", function()
    local r = host.run({ host.script([[
      require("vg.config").load({ "DATABASE_URL", "FERNET_KEY" })
      print("not reached")
    ]]) }, { env = { DATABASE_URL = "mysql://u:pw123@x/y", FERNET_KEY = "nope",
                    VG_CONCURRENCY = "many", PATH = os.getenv("PATH") }, clear_env = true })
    assert.equal(1, r.code)
    assert.is_nil(r.stdout:find("not reached", 1, true))
    assert.is_nil(r.stdout:find("pw123", 1, true))
    assert.is_nil(r.stdout:find("nope", 1, true))
    local lines = host.lines(r.stdout)
    local l = host.find(lines, "configuration_invalid")
    assert.equal(3, #l.errors)
    assert.equal("critical", l.level)
  end)
end)

describe("registry references", function()
  after_each(host.cleanup)

  -- The ASan build counts them, and a run that ends with one never released
  -- aborts (include/vg/lref.h); the release build runs the same scripts.
  local function assert_released(r, code)
    assert.equal(code, r.code, r.stdout .. r.stderr)
    assert.not_matches("registry reference", r.stderr)
  end

  it("are all released at the end of a run that used tasks, events, joins and on_shutdown", function()
    assert_released(host.run { host.script([[
      local vg = require "vg"
      vg.on_shutdown(function() end)
      local ev = vg.event()
      local t = vg.spawn(function() ev:wait(); return 1 end)
      vg.spawn(function() ev:set() end)
      assert(t:join() == 1)
      local c = vg.spawn(function() vg.sleep(10) end)
      c:cancel()
      assert(not pcall(c.join, c))
    ]]) }, 0)
  end)

  it("are released by tasks that can never run again (a deadlock)", function()
    local r = host.run { host.script([[
      local vg = require "vg"
      vg.spawn(function() vg.event():wait() end)
      vg.event():wait()
    ]]) }
    assert_released(r, 1)
    assert.is_not_nil(host.find(host.lines(r.stdout), "tasks_deadlocked"))
    assert.is_nil(host.find(host.lines(r.stdout), "handle_still_open"))
  end)

  it("are released by vg.db: the default pool, db.configure and JSON results", function()
    if not os.getenv("TEST_DATABASE_URL") then
      pending("TEST_DATABASE_URL is not set")
      return
    end
    assert_released(host.run { host.script([[
      local db = require "vg.db"
      assert(db.query("select '{\"a\":1}'::json as j")[1].j.a == 1)
      db.configure { pool_size = 1 }
      assert(db.query("select 1 as x")[1].x == 1)
    ]]) }, 0)
  end)
end)
