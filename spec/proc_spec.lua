-- vg.proc: external commands on the loop (proc.run, proc.spawn).
local vg = require "vg"
local proc = require "vg.proc"
local host = require "spec.support.host"

local function sh(script, opts)
  return proc.run({ "sh", "-c", script }, opts)
end

-- A live process: exists and is not a zombie (PID 1 here may not reap).
local function alive(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat")
  if not f then return false end
  local stat = f:read("a") or ""
  f:close()
  local state = stat:match("%) (%a)")
  return state ~= nil and state ~= "Z"
end

-- Any live process in the process group?
local function group_alive(pgid)
  local r = proc.run({ "pgrep", "-g", tostring(pgid) })
  for pid in r.stdout:gmatch("%d+") do
    if alive(pid) then return true end
  end
  return false
end

-- Processes a test started; whatever is still alive after it is killed.
local started = {}

local function track(pids)
  for _, pid in ipairs(pids) do started[#started + 1] = pid end
  return pids
end

local function pids_in(text)
  local pids = {}
  for pid in text:gmatch("%d+") do pids[#pids + 1] = pid end
  return track(pids)
end

-- True once every pid is gone, false after `within` seconds.
local function all_gone(pids, within)
  local deadline = vg.now() + (within or 3)
  while true do
    local any = false
    for _, pid in ipairs(pids) do
      if alive(pid) then any = true end
    end
    if not any then return true end
    if vg.now() > deadline then return false end
    vg.sleep(0.02)
  end
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

after_each(function()
  for _, pid in ipairs(started) do
    if alive(pid) then proc.run({ "kill", "-KILL", tostring(pid) }) end
  end
  started = {}
  host.cleanup()
end)

describe("proc.run", function()
  it("returns the exit code and captures stdout and stderr apart", function()
    local r = sh("echo out; echo err >&2; exit 7")
    assert.equal(7, r.code)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
    assert.is_nil(r.signal)
    assert.is_false(r.timed_out)
    assert.is_false(r.stdout_truncated)
    assert.is_false(r.stderr_truncated)
    assert.is_number(r.duration)
    assert.is_true(r.duration >= 0 and r.duration < 5)
    assert.equal(0, proc.run({ "true" }).code)
    assert.equal(1, proc.run({ "false" }).code)
  end)

  it("passes argv as it is, without a shell, and converts numbers", function()
    local r = proc.run({ "printf", "%s|", "a b", "$HOME", "*", 42 })
    assert.equal(0, r.code)
    assert.equal("a b|$HOME|*|42|", r.stdout)
  end)

  it("inherits the host's environment with opts.env added, replaced or removed", function()
    local r = sh('printf "%s|%s|%s" "$VG_PROC_A" "$PATH" "${HOME-unset}"',
                 { env = { VG_PROC_A = "x y", HOME = false } })
    assert.equal("x y|" .. os.getenv("PATH") .. "|unset", r.stdout)
  end)

  it("starts from an empty environment with clear_env", function()
    local r = proc.run({ "env" }, { clear_env = true, env = { ONLY = "1", N = 2 } })
    assert.equal(0, r.code)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    assert.same({ "N=2", "ONLY=1" }, lines)
  end)

  it("runs in opts.cwd", function()
    assert.equal("/tmp\n", proc.run({ "pwd" }, { cwd = "/tmp" }).stdout)
    assert.equal("/\n", proc.run({ "pwd" }, { cwd = "/" }).stdout)
  end)

  it("writes opts.stdin to the child and closes it; /dev/null by default", function()
    assert.equal("hello\nworld", proc.run({ "cat" }, { stdin = "hello\nworld" }).stdout)
    assert.equal("", proc.run({ "cat" }, { stdin = "" }).stdout)
    local r = proc.run({ "cat" }, { timeout = 5 })
    assert.equal("", r.stdout)
    assert.is_false(r.timed_out)
    -- Larger than any pipe buffer, in and out at once.
    local big = string.rep("0123456789abcdef", 2 * 65536) -- 2 MiB
    r = proc.run({ "cat" }, { stdin = big, max_output = #big })
    assert.equal(0, r.code)
    assert.is_true(r.stdout == big, "stdin did not round-trip")
    assert.is_false(r.stdout_truncated)
  end)

  it("gives the child real pipes and does not pass on the host's ignored SIGPIPE", function()
    -- /dev/stdout cannot be opened on a socket; SIGPIPE (13, mask bit 12)
    -- must not stay ignored. Other bits depend on whoever started the host.
    local r = sh("echo via-dev-stdout > /dev/stdout; grep SigIgn /proc/self/status")
    assert.equal(0, r.code, r.stderr)
    local first, mask = r.stdout:match("^(via%-dev%-stdout)\nSigIgn:\t(%x+)\n$")
    assert.equal("via-dev-stdout", first)
    local ignored = tonumber(mask, 16)
    assert.equal(0, ignored & (1 << 12), "SIGPIPE is ignored in the child: " .. mask)
  end)

  it("keeps the tail of a large output and flags the truncation", function()
    local r = sh("head -c 10000000 /dev/zero; echo END")
    assert.equal(0, r.code)
    assert.equal(1024 * 1024, #r.stdout)
    assert.equal("\0END\n", r.stdout:sub(-5))
    assert.is_true(r.stdout_truncated)
    assert.is_false(r.stderr_truncated)
    -- A small bound keeps exactly the last max_output bytes.
    local parts = {}
    for i = 1, 100000 do parts[i] = tostring(i) end
    local all = table.concat(parts, "\n") .. "\n"
    r = proc.run({ "seq", "1", "100000" }, { max_output = 20 })
    assert.equal(all:sub(-20), r.stdout)
    assert.is_true(r.stdout_truncated)
    r = proc.run({ "seq", "1", "100000" }, { max_output = #all })
    assert.equal(all, r.stdout)
    assert.is_false(r.stdout_truncated)
    r = proc.run({ "seq", "1", "3" }, { max_output = 0 })
    assert.equal("", r.stdout)
    assert.is_true(r.stdout_truncated)
  end)

  it("on timeout terminates the whole process group", function()
    local r = sh("sleep 100 & echo $!; sleep 100 & echo $!; echo $$; wait", { timeout = 0.3 })
    assert.is_true(r.timed_out)
    assert.is_nil(r.code)
    assert.equal(15, r.signal)
    assert.equal("SIGTERM", r.signal_name)
    local pids = pids_in(r.stdout)
    assert.equal(3, #pids)
    assert.is_true(all_gone(pids), "a process of the group survived")
    assert.is_false(group_alive(pids[3]))
  end)

  it("sends SIGKILL after kill_after when SIGTERM is ignored", function()
    local r = sh("trap '' TERM; echo $$; sleep 100 & echo $!; wait",
                 { timeout = 0.2, kill_after = 0.3 })
    assert.is_true(r.timed_out)
    assert.equal(9, r.signal)
    assert.equal("SIGKILL", r.signal_name)
    assert.is_true(all_gone(pids_in(r.stdout)))
  end)

  it("does not wait for a background process that keeps the pipe open", function()
    -- Waiting for the pipe to close would run into the timeout.
    local r = sh("sleep 30 & echo $!", { timeout = 15 })
    assert.is_false(r.timed_out)
    assert.equal(0, r.code)
    local pids = pids_in(r.stdout)
    assert.equal(1, #pids)
  end)

  it("raises spawn_failed for a missing command", function()
    local ok, err = pcall(proc.run, { "vg-no-such-command-xyz", "arg" })
    assert.is_false(ok)
    assert.equal("spawn_failed", err.code)
    assert.is_false(err.retriable)
    assert.equal("ENOENT", err.reason)
    assert.equal("vg-no-such-command-xyz", err.command)
    assert.truthy(tostring(err):find("vg-no-such-command-xyz", 1, true))
    assert.truthy(err.message:find("no such file", 1, true))
  end)

  it("raises spawn_failed for a file that is not executable", function()
    local path = host.script("#!/bin/sh\necho hi\n", ".sh") -- mode 0600
    local ok, err = pcall(proc.run, { path })
    assert.is_false(ok)
    assert.equal("spawn_failed", err.code)
    assert.equal("EACCES", err.reason)
    assert.truthy(err.message:find(path, 1, true))
    assert.truthy(err.message:find("permission denied", 1, true))
  end)

  it("raises spawn_failed naming a missing working directory", function()
    local ok, err = pcall(proc.run, { "pwd" }, { cwd = "/nonexistent/vg-proc" })
    assert.is_false(ok)
    assert.equal("spawn_failed", err.code)
    assert.truthy(err.message:find("/nonexistent/vg-proc", 1, true))
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() proc.run({}) end)
    assert.has_error(function() proc.run("ls") end)
    assert.has_error(function() proc.run({ "ls", {} }) end)
    assert.has_error(function() proc.run({ "ls" }, { timout = 1 }) end)
    assert.has_error(function() proc.run({ "ls" }, { timeout = -1 }) end)
    assert.has_error(function() proc.run({ "ls" }, { max_output = 1.5 }) end)
    assert.has_error(function() proc.run({ "ls" }, { env = { ["A=B"] = "x" } }) end)
    assert.has_error(function() proc.run({ "ls" }, { env = { A = {} } }) end)
  end)

  it("raises, starting nothing, where it cannot wait", function()
    assert.has_error(function() coroutine.wrap(function() proc.run({ "true" }) end)() end)
    assert.has_error(function()
      table.sort({ 2, 1 }, function(a, b) proc.run({ "true" }); return a < b end)
    end)
    -- The task still works afterwards, and Lua metamethods may wait.
    local meta = setmetatable({}, { __index = function() return proc.run({ "true" }) end })
    assert.equal(0, meta.x.code)
  end)

  it("terminates the child's group when the calling task is cancelled", function()
    local file = os.tmpname()
    local t = vg.spawn(function()
      return sh("sleep 100 & echo $! >> " .. file .. "; echo $$ >> " .. file .. "; wait")
    end)
    local deadline = vg.now() + 5
    local text
    repeat
      vg.sleep(0.02)
      text = read_file(file) or ""
    until select(2, text:gsub("\n", "")) >= 2 or vg.now() > deadline
    os.remove(file)
    local pids = pids_in(text)
    assert.equal(2, #pids)
    assert.is_true(t:cancel())
    local ok, err = pcall(t.join, t)
    assert.is_false(ok)
    assert.equal("task_cancelled", err.code)
    assert.equal("cancelled", t:status())
    assert.is_true(all_gone(pids), "the cancelled command survived")
    assert.is_false(group_alive(pids[2]))
  end)

  it("runs 20 children at once without blocking the loop", function()
    local ticks, stop = 0, false
    local ticker = vg.spawn(function()
      while not stop do
        vg.sleep(0.02)
        ticks = ticks + 1
      end
    end)
    -- Each child prints when it started and ended; they ran at the same
    -- time when the last one started before the first one ended.
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = vg.spawn(function()
        return proc.run({ "sh", "-c", "date +%s.%N; sleep 3; date +%s.%N" })
      end)
    end
    local last_start, first_end = 0, math.huge
    for i = 1, 20 do
      local r = tasks[i]:join()
      assert.equal(0, r.code)
      local s, e = r.stdout:match("^(%S+)\n(%S+)\n$")
      last_start = math.max(last_start, tonumber(s))
      first_end = math.min(first_end, tonumber(e))
    end
    stop = true
    ticker:join()
    assert.is_true(last_start < first_end, "the children did not overlap")
    assert.is_true(ticks >= 5, "the ticker ran only " .. ticks .. " times")
  end)

  it("keeps concurrent outputs apart", function()
    local tasks = {}
    for i = 1, 30 do
      tasks[i] = vg.spawn(function()
        return proc.run({ "sh", "-c", "seq 1 $1; seq 1 $1 >&2", "sh", tostring(20000 + i) })
      end)
    end
    for i = 1, 30 do
      local r = tasks[i]:join()
      local n = 20000 + i
      assert.equal(0, r.code)
      assert.equal(r.stdout, r.stderr)
      assert.equal("\n" .. n .. "\n", r.stdout:sub(-(#tostring(n) + 2)))
      assert.equal("1\n2\n", r.stdout:sub(1, 4))
      local count = select(2, r.stdout:gsub("\n", ""))
      assert.equal(n, count)
    end
  end)
end)

describe("proc.spawn", function()
  it("waits for output, takes a signal and reports it from wait", function()
    local p = proc.spawn({ "sh", "-c", "echo pid=$$; echo ready; exec sleep 100" })
    track({ p:pid() })
    assert.equal("ready", p:wait_output("ready", 5))
    assert.equal(tostring(p:pid()), (p:wait_output("pid=(%d+)", 1)):match("%d+"))
    assert.is_true(p:running())
    assert.is_true(p:kill("TERM"))
    local r = p:wait(5)
    assert.equal(15, r.signal)
    assert.equal("SIGTERM", r.signal_name)
    assert.is_nil(r.code)
    assert.is_false(p:running())
    assert.is_false(p:kill("TERM"))
    assert.same(r, p:wait())
    assert.is_true(all_gone({ p:pid() }))
  end)

  it("wait with a timeout returns nil and a timeout error; the child keeps running", function()
    local p = proc.spawn({ "sleep", "100" })
    track({ p:pid() })
    local r, err = p:wait(0.05)
    assert.is_nil(r)
    assert.equal("timeout", err.code)
    assert.is_true(p:running())
    assert.is_true(alive(p:pid()))
    assert.is_true(p:kill("SIGKILL"))
    r = p:wait(5)
    assert.equal(9, r.signal)
    assert.equal("SIGKILL", r.signal_name)
  end)

  it("accepts signal names and numbers and signals the group on request", function()
    local p = proc.spawn({ "sh", "-c", "sleep 100 & echo $!; wait" })
    local child = p:wait_output("(%d+)\n", 5)
    track({ p:pid(), child })
    assert.has_error(function() p:kill("NOPE") end)
    assert.is_true(p:kill(0))
    assert.is_true(p:kill("term", { group = true }))
    local r = p:wait(5)
    assert.equal(15, r.signal)
    assert.is_true(all_gone({ child }))
    assert.equal(15, proc.signals.TERM)
    assert.equal(9, proc.signals.KILL)
  end)

  it("gives the output so far and waits on stderr or plain text", function()
    local p = proc.spawn({ "sh", "-c", "echo a.b; echo '[x]' >&2; read line; echo got $line" },
                         { stdin = "input\n" })
    track({ p:pid() })
    assert.equal("[x]", p:wait_output("[x]", 5, { plain = true, stream = "stderr" }))
    assert.equal("got input", p:wait_output("got %a+", 5))
    assert.truthy(p:stdout():find("a.b\n", 1, true))
    assert.equal("[x]\n", p:stderr())
    local r = p:wait(5)
    assert.equal(0, r.code)
    assert.equal("a.b\ngot input\n", r.stdout)
  end)

  it("wait_output reports a timeout, and the end of output without a match", function()
    local p = proc.spawn({ "sh", "-c", "echo one; sleep 0.3; echo two" })
    track({ p:pid() })
    local m, err = p:wait_output("never", 0.1)
    assert.is_nil(m)
    assert.equal("timeout", err.code)
    m, err = p:wait_output("never", 5)
    assert.is_nil(m)
    assert.equal("exited", err.code)
    assert.equal("two", p:wait_output("two", 0))
  end)

  it("kills a child whose Process is closed or garbage-collected", function()
    local pid1, pid2
    do
      local p <close> = proc.spawn({ "sleep", "100" })
      pid1 = p:pid()
    end
    do
      local p = proc.spawn({ "sleep", "100" })
      pid2 = p:pid()
    end
    track({ pid1, pid2 })
    collectgarbage()
    collectgarbage()
    assert.is_true(all_gone({ pid1, pid2 }))
    local p = proc.spawn({ "true" })
    getmetatable(p).__close(p)
    assert.has_error(function() p:wait() end, "attempt to use a closed process")
  end)

  it("raises spawn_failed like proc.run", function()
    local ok, err = pcall(proc.spawn, { "vg-no-such-command-xyz" })
    assert.is_false(ok)
    assert.equal("spawn_failed", err.code)
  end)
end)

describe("vg-host exit", function()
  it("terminates a running command when the shutdown grace ends after SIGTERM", function()
    local pidfile = host.tmpname()
    local script = host.script(([[
      local vg = require "vg"
      local proc = require "vg.proc"
      local log = require "vg.log"
      log.info("ready")
      local ok, err = pcall(proc.run, { "sh", "-c", "echo $$ > %s; exec sleep 100" })
      log.info("run_ended", { cancelled = vg.is_cancelled(err) })
      error(err, 0)
    ]]):format(pidfile))
    local p = host.spawn({ script }, { env = host.env { VG_SHUTDOWN_GRACE = "0.3" } })
    track({ p:pid() })
    assert.truthy(host.wait_event(p, "ready"))
    local deadline = vg.now() + 5
    local pid
    repeat
      vg.sleep(0.02)
      pid = (read_file(pidfile) or ""):match("%d+")
    until pid or vg.now() > deadline
    os.remove(pidfile)
    assert.truthy(pid, "the command did not start")
    track({ pid })
    assert.is_true(p:kill("TERM"))
    local r = p:wait(10)
    assert.is_not_nil(r, "vg-host did not exit after SIGTERM")
    assert.equal(0, r.code, r.stderr)
    local lines = host.lines(r.stdout)
    assert.truthy(host.find(lines, "shutdown_grace_expired"))
    assert.is_true(host.find(lines, "run_ended").cancelled)
    assert.equal("worker_shutdown", lines[#lines].event)
    assert.is_true(all_gone({ pid }))
  end)

  it("kills spawned children left running and lets cancelled ones terminate", function()
    local pidfile = host.tmpname()
    local script = host.script(([[
      local vg = require "vg"
      local proc = require "vg.proc"
      local leftover = proc.spawn({ "sleep", "100" })
      print("leftover=" .. leftover:pid())
      local t = vg.spawn(function()
        return proc.run({ "sh", "-c",
          "echo $$ > %s; trap 'sleep 0.3; echo cleaned >> %s; exit 0' TERM; " ..
          "while :; do sleep 0.05; done" })
      end)
      local function pid_written()
        local f = io.open(%q)
        if not f then return nil end
        local n = f:read("n")
        f:close()
        return n
      end
      while not pid_written() do vg.sleep(0.02) end
      t:cancel()
    ]]):format(pidfile, pidfile, pidfile))
    local r = host.run({ script }, { timeout = 20 })
    local text = read_file(pidfile) or ""
    os.remove(pidfile)
    assert.equal(0, r.code, r.stderr .. r.stdout)
    local leftover = r.stdout:match("leftover=(%d+)")
    local runner = text:match("^(%d+)")
    track({ leftover, runner })
    assert.truthy(leftover)
    assert.truthy(runner)
    assert.is_true(all_gone({ leftover, runner }))
    -- The cancelled command got SIGTERM and the time to clean up.
    assert.truthy(text:find("cleaned", 1, true), "no cleanup: " .. text)
    assert.is_nil(r.stdout:find("proc_abandoned", 1, true))
  end)

  -- A command and a child of its (same group) whose pids are in pidfile.
  local FAMILY = "sleep 100 & echo $! $$ > %s; wait"

  local function family(pidfile)
    local deadline = vg.now() + 10
    local pids
    repeat
      vg.sleep(0.02)
      pids = pids_in(read_file(pidfile) or "")
    until #pids == 2 or vg.now() > deadline
    os.remove(pidfile)
    assert.equal(2, #pids, "the command did not start")
    return pids
  end

  it("kills a running command and its child at os.exit", function()
    local pidfile = host.tmpname()
    local script = host.script(([[
      local vg = require "vg"
      local proc = require "vg.proc"
      vg.spawn(function() proc.run({ "sh", "-c", %q }) end)
      while not io.open(%q):read("n") do vg.sleep(0.02) end
      os.exit(3)
    ]]):format(FAMILY:format(pidfile), pidfile))
    local r = host.run({ script }, { timeout = 20 })
    assert.equal(3, r.code, r.stdout .. r.stderr)
    assert.is_true(all_gone(family(pidfile)))
  end)

  it("kills a running command and its child when the host is SIGKILLed (the step guard)", function()
    local pidfile = host.tmpname()
    local script = host.script(([[
      local proc = require "vg.proc"
      local log = require "vg.log"
      log.info("guard", { pid = proc.guard_pid() })
      proc.run({ "sh", "-c", %q })
    ]]):format(FAMILY:format(pidfile)))
    local p = host.spawn({ script })
    track({ p:pid() })
    local pids = family(pidfile)
    assert.is_false(all_gone(pids, 0))
    p:kill("KILL")
    p:wait(10)
    assert.is_true(all_gone(pids, 5), "the command outlived its host")
    assert.is_false(group_alive(pids[2]))
  end)

  it("ends at once on the third signal, killing the running command and its child", function()
    local pidfile = host.tmpname()
    local script = host.script(([[
      local proc = require "vg.proc"
      local log = require "vg.log"
      log.info("ready")
      proc.run({ "sh", "-c", %q })
    ]]):format("trap '' TERM; " .. FAMILY:format(pidfile)))
    -- The command ignores SIGTERM, so only the third signal ends the host.
    local p = host.spawn({ script }, { env = host.env { VG_SHUTDOWN_GRACE = "600" } })
    track({ p:pid() })
    local pids = family(pidfile)
    for _, sig in ipairs { "TERM", "INT", "TERM" } do
      p:kill(sig)
      vg.sleep(0.1)
    end
    local r = p:wait(10)
    assert.is_not_nil(r, "the third signal did not end the host")
    assert.equal(0, r.code)
    local lines = host.lines(r.stdout)
    assert.equal("worker_shutdown", lines[#lines].event)
    assert.equal("forced", lines[#lines].reason)
    assert.is_true(all_gone(pids))
  end)
end)

