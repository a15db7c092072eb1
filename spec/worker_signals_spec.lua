-- lua/worker.lua as a process: start-up line, heartbeats, SIGTERM/SIGINT,
-- the shutdown grace, and the error accounting of the loop.
local host = require "spec.support.host"

-- A worker whose loop body is replaced, for the error-accounting tests.
local FAILING_WORKER = [[
  local worker = require "vg.worker"
  worker.BACKOFF_BASE = 0.001
  worker.MAX_BACKOFF = 0.001
  local n = 0
  worker.run {
    required = {},
    body = function(state)
      n = n + 1
      if n <= 12 then error("body failed " .. n) end
      if n == 13 then require("vg.log").info("body_recovered") end
      require("vg").sleep(1)
    end,
  }
]]

-- A script with a task that ignores shutdown (a non-interruptible sleep),
-- to exercise the grace timer.
local STUBBORN = [[
  local vg = require "vg"
  local log = require "vg.log"
  local t = vg.spawn(function()
    local ok, err = pcall(vg.sleep, 60, { interruptible = false })
    log.info("stubborn_cleanup", { cancelled = vg.is_cancelled(err) })
    error(err, 0)
  end)
  log.info("ready")
  vg.sleep(60)
  t:join()
]]

local function worker_env(extra)
  return host.env(extra)
end

describe("lua/worker.lua", function()
  after_each(host.cleanup)

  for _, sig in ipairs { "TERM", "INT", "HUP" } do
    it("exits 0 soon after SIG" .. sig .. " when idle, with worker_shutdown last", function()
      local p = host.spawn({ "lua/worker.lua" }, { env = worker_env { WORKER_ID = "w-sig" } })
      assert.truthy(host.wait_event(p, "worker_started"))
      p:kill(sig)
      local r = p:wait(10)
      assert.is_not_nil(r, "worker did not exit within 10 s of SIG" .. sig)
      assert.equal(0, r.code, r.stdout:sub(-2000))
      local lines = host.lines(r.stdout)
      local started = host.find(lines, "worker_started")
      assert.equal("w-sig", started.worker_id)
      assert.equal("***", started.config.FERNET_KEY)
      local _, i_sig = host.find(lines, "shutdown_signal_received")
      assert.equal("SIG" .. sig, lines[i_sig].signal)
      assert.equal("worker_shutdown", lines[#lines].event)
      assert.is_true(i_sig < #lines)
      for _, l in ipairs(lines) do assert.equal("w-sig", l.worker_id) end
    end)
  end

  it("is interrupted in the middle of a long poll sleep", function()
    local p = host.spawn({ "lua/worker.lua" },
      { env = worker_env { VG_POLL_INTERVAL = "3600", VG_HEARTBEAT_INTERVAL = "3600" } })
    assert.truthy(host.wait_event(p, "worker_started"))
    p:kill("TERM")
    local r = p:wait(10)
    assert.is_not_nil(r)
    assert.equal(0, r.code)
  end)

  it("logs heartbeats with the iteration count and consecutive errors", function()
    local p = host.spawn({ "lua/worker.lua" }, { env = worker_env { VG_HEARTBEAT_INTERVAL = "0.05" } })
    assert.truthy(host.wait_event(p, "worker_heartbeat"))
    p:kill("TERM")
    local r = p:wait(10)
    local hb = host.find(host.lines(r.stdout), "worker_heartbeat")
    assert.is_number(hb.iterations)
    assert.equal(0, hb.consecutive_errors)
  end)

  it("exits 1 with configuration_invalid when FERNET_KEY is missing", function()
    local env = worker_env {}
    env.FERNET_KEY = nil
    local r = host.run({ "lua/worker.lua" }, { env = env })
    assert.equal(1, r.code)
    local l = host.find(host.lines(r.stdout), "configuration_invalid")
    assert.matches("FERNET_KEY is required", l.errors[1])
  end)

  it("catches loop errors with tracebacks, reports excessive errors, carries on", function()
    local p = host.spawn({ host.script(FAILING_WORKER) }, { env = worker_env {} })
    assert.truthy(host.wait_event(p, "body_recovered"))
    p:kill("TERM")
    local r = p:wait(10)
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    local errors, excessive = 0, nil
    for _, l in ipairs(lines) do
      if l.event == "worker_loop_error" then
        errors = errors + 1
        assert.matches("body failed", l.error)
        assert.matches("stack traceback", l.traceback)
      elseif l.event == "worker_excessive_errors" then
        excessive = excessive or l
      end
    end
    assert.equal(12, errors)
    assert.is_not_nil(excessive)
    assert.equal("critical", excessive.level)
    -- The first critical line comes with the tenth error in a row (the
    -- back-off keeps the rate per minute low during a long outage).
    assert.equal(10, excessive.consecutive_errors)
  end)
end)

describe("as PID 1 of a PID namespace", function()
  after_each(host.cleanup)

  it("still sees SIGTERM and shuts down cleanly", function()
    local proc = require "vg.proc"
    local probe = proc.run({ "unshare", "--pid", "--fork", "--mount-proc", "true" })
    if probe.code ~= 0 then
      return pending("unshare --pid needs root and util-linux: " .. probe.stderr)
    end
    local env = worker_env { WORKER_ID = "w-pid1" }
    local p = proc.spawn({ "unshare", "--pid", "--fork", "--mount-proc", host.bin, "lua/worker.lua" },
                         { env = env, cwd = host.root })
    assert.truthy(host.wait_event(p, "worker_started"))
    -- unshare's child is vg-host, PID 1 inside the namespace
    local f = assert(io.open("/proc/" .. p:pid() .. "/task/" .. p:pid() .. "/children"))
    local child = tonumber(f:read("a"):match("%d+"))
    f:close()
    local status = assert(io.open("/proc/" .. child .. "/status")):read("a")
    assert.matches("NSpid:%s+%d+%s+1\n", status)
    assert.equal(0, proc.run({ "kill", "-TERM", tostring(child) }).code)
    local r = p:wait(10)
    assert.is_not_nil(r, "vg-host as PID 1 did not exit after SIGTERM")
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    assert.equal("worker_shutdown", lines[#lines].event)
  end)
end)

describe("shutdown grace", function()
  after_each(host.cleanup)

  it("cancels tasks still running when the grace ends, runs their cleanup, exits 0", function()
    local p = host.spawn({ host.script(STUBBORN) }, { env = worker_env { VG_SHUTDOWN_GRACE = "0.2" } })
    assert.truthy(host.wait_event(p, "ready"))
    p:kill("TERM")
    local r = p:wait(10)
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    local _, i_exp = host.find(lines, "shutdown_grace_expired")
    local cleanup, i_clean = host.find(lines, "stubborn_cleanup")
    assert.is_not_nil(i_exp)
    assert.is_true(cleanup.cancelled)
    assert.is_true(i_exp < i_clean)
    assert.equal("worker_shutdown", lines[#lines].event)
  end)

  it("skips the rest of the grace on a second signal", function()
    local p = host.spawn({ host.script(STUBBORN) }, { env = worker_env { VG_SHUTDOWN_GRACE = "600" } })
    assert.truthy(host.wait_event(p, "ready"))
    p:kill("TERM")
    assert.truthy(host.wait_event(p, "shutdown_signal_received"))
    p:kill("TERM")
    local r = p:wait(10)
    assert.is_not_nil(r, "second signal did not end the grace")
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    assert.is_not_nil(host.find(lines, "shutdown_grace_skipped"))
    assert.is_true(host.find(lines, "stubborn_cleanup").cancelled)
  end)

  it("runs on_shutdown callbacks", function()
    local p = host.spawn({ host.script([[
      local vg = require "vg"
      vg.on_shutdown(function() require("vg.log").info("callback_ran") end)
      require("vg.log").info("ready")
      vg.sleep(60)
    ]]) })
    assert.truthy(host.wait_event(p, "ready"))
    p:kill("TERM")
    local r = p:wait(10)
    assert.equal(0, r.code)
    assert.is_not_nil(host.find(host.lines(r.stdout), "callback_ran"))
  end)
end)
