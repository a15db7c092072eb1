-- The scheduler: tasks, sleep, join, cancel, errors, context inheritance.
local vg = require "vg"
local log = require "vg.log"
local host = require "spec.support.host"

describe("vg.sleep", function()
  it("returns true when it slept the whole time", function()
    assert.is_true(vg.sleep(0.05))
  end)

  it("rejects negative and non-numeric durations", function()
    assert.has_error(function() vg.sleep(-1) end)
    assert.has_error(function() vg.sleep("soon") end)
  end)

  it("lets other tasks run while one sleeps", function()
    local order = {}
    local a = vg.spawn(function() vg.sleep(0.06); order[#order + 1] = "slow" end)
    local b = vg.spawn(function() vg.sleep(0.01); order[#order + 1] = "fast" end)
    a:join(); b:join()
    assert.same({ "fast", "slow" }, order)
  end)
end)

describe("vg.now and vg.time", function()
  it("gives a monotonic clock and the wall clock", function()
    local a = vg.now()
    local b = vg.now()
    assert.is_true(b >= a)
    assert.is_true(math.abs(vg.time() - os.time()) < 2)
  end)
end)

describe("vg.spawn", function()
  it("passes arguments and returns results through join", function()
    local t = vg.spawn(function(x, y) vg.sleep(0); return x + y, "done" end, 2, 3)
    local sum, word = t:join()
    assert.equal(5, sum)
    assert.equal("done", word)
    assert.is_true(t:done())
    assert.equal("completed", t:status())
  end)

  it("joins a task that already finished", function()
    local t = vg.spawn(function() return 42 end)
    vg.sleep(0.01)
    assert.equal(42, t:join())
  end)

  it("reports a task's error to the joiner without killing the host", function()
    local t = vg.spawn(function() error({ code = "boom" }) end)
    local ok, err = pcall(t.join, t)
    assert.is_false(ok)
    assert.equal("boom", err.code)
    assert.equal("failed", t:status())
  end)

  it("join with a timeout returns nil and a timeout error", function()
    local t = vg.spawn(function() vg.sleep(5) end)
    local r, err = t:join(0.02)
    assert.is_nil(r)
    assert.equal("timeout", err.code)
    t:cancel()
  end)

  it("runs ten thousand sleeping tasks", function()
    local n, tasks = 0, {}
    for i = 1, 10000 do
      tasks[i] = vg.spawn(function() vg.sleep(0.05); n = n + 1 end)
    end
    for i = 1, #tasks do tasks[i]:join() end
    assert.equal(10000, n)
  end)

  it("gives yielding tasks turns without starving timers", function()
    local ticks = 0
    local spinner = vg.spawn(function()
      while ticks < 3 do coroutine.yield() end
    end)
    for _ = 1, 3 do vg.sleep(0.001); ticks = ticks + 1 end
    spinner:join()
    assert.equal(3, ticks)
  end)
end)

describe("cancellation", function()
  it("raises cancelled at the current wait so cleanup runs", function()
    local cleaned = false
    local t = vg.spawn(function()
      local ok, err = pcall(vg.sleep, 10)
      cleaned = true
      assert(not ok and vg.is_cancelled(err))
      error(err, 0)
    end)
    vg.sleep(0.01)
    assert.is_true(t:cancel())
    local ok, err = pcall(t.join, t)
    assert.is_false(ok)
    assert.equal("task_cancelled", err.code)
    assert.is_true(cleaned)
    assert.equal("cancelled", t:status())
  end)

  it("makes join of a cancelled task raise task_cancelled, which is not the joiner's own", function()
    local t = vg.spawn(function() vg.sleep(10) end)
    vg.sleep(0)
    t:cancel()
    local ok, err = pcall(t.join, t)
    assert.is_false(ok)
    assert.equal("task_cancelled", err.code)
    assert.is_false(err.retriable)
    assert.is_false(vg.is_cancelled(err))
    assert.matches("task %d+ was cancelled", tostring(err))
    assert.is_true(vg.sleep(0)) -- the joiner goes on
  end)

  it("ends a script that joins a cancelled task with exit 1 and a critical line", function()
    local script = host.script([[
      local vg = require "vg"
      local t = vg.spawn(function() vg.sleep(10) end)
      vg.sleep(0)
      t:cancel()
      t:join()
    ]])
    local r = host.run({ script })
    host.cleanup()
    assert.equal(1, r.code)
    local line = r.stdout:match('[^\n]*"event":"script_error"[^\n]*')
    assert.is_not_nil(line, r.stdout)
    assert.matches('"level":"critical"', line)
    assert.matches("task_cancelled", line)
  end)

  it("delivers a cancel requested before the task waits at its next wait", function()
    local reached = false
    local t = vg.spawn(function()
      reached = true
      vg.sleep(10)
      return "not cancelled"
    end)
    t:cancel()
    local ok, err = pcall(t.join, t)
    assert.is_true(reached)
    assert.is_false(ok)
    assert.equal("task_cancelled", err.code)
  end)

  it("lets cleanup code wait after the cancellation", function()
    local t = vg.spawn(function()
      local ok = pcall(vg.sleep, 10)
      assert(not ok)
      vg.sleep(0.01) -- cleanup that waits works
      return "cleaned up"
    end)
    vg.sleep(0.01)
    t:cancel()
    assert.equal("cleaned up", t:join())
  end)

  it("cancelling a finished task does nothing", function()
    local t = vg.spawn(function() return 1 end)
    t:join()
    assert.is_false(t:cancel())
  end)

  it("cancels a task waiting in join", function()
    local inner = vg.spawn(function() vg.sleep(10) end)
    local outer = vg.spawn(function() return inner:join() end)
    vg.sleep(0.01)
    outer:cancel()
    assert.is_false(pcall(outer.join, outer))
    assert.is_false(inner:done())
    inner:cancel()
    assert.is_false(pcall(inner.join, inner))
  end)
end)

describe("waits outside a task", function()
  it("raise a clear error in a nested coroutine", function()
    local co = coroutine.create(function() return vg.sleep(0.01) end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("must run in a vg task", err)
  end)
end)

describe("waits where the task cannot yield", function()
  it("raise before they start anything, and the task can still wait afterwards", function()
    local ok, err = pcall(table.sort, { 2, 1 }, function(a, b) vg.sleep(0); return a < b end)
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
    ok, err = pcall(string.gsub, "x", "x", function() vg.sleep(0) end)
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
    local shown = setmetatable({}, { __tostring = function() vg.sleep(0); return "x" end })
    ok, err = pcall(tostring, shown)
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
    package.preload["spec_waits_at_top_level"] = function() vg.sleep(0) end
    ok, err = pcall(require, "spec_waits_at_top_level")
    package.preload["spec_waits_at_top_level"] = nil
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
    local ev = vg.event()
    ok = pcall(table.sort, { 2, 1 }, function(a, b) ev:wait(); return a < b end)
    assert.is_false(ok)
    assert.is_true(vg.sleep(0))
    vg.spawn(function() ev:set() end)
    assert.is_true(ev:wait(5))
  end)
end)

describe("many arguments and results", function()
  after_each(host.cleanup)

  it("passes 1,000 arguments to a task and returns its 1,000 results", function()
    local args = {}
    for i = 1, 1000 do args[i] = i end
    local t = vg.spawn(function(...) return ... end, table.unpack(args))
    local r = table.pack(t:join())
    assert.equal(1000, r.n)
    assert.equal(1, r[1])
    assert.equal(1000, r[1000])
    -- and a task that finished before anyone joined it
    local done = vg.spawn(function() return table.unpack(args) end)
    vg.sleep(0)
    assert.is_true(done:done())
    assert.equal(1000, select("#", done:join()))
  end)

  it("gives a script 1,000 arguments and lets it return 1,000 values", function()
    local script = host.script([[
      io.write(select("#", ...), " ", #arg, "\n")
      local t = {}
      for i = 1, 1000 do t[i] = i end
      return table.unpack(t)
    ]])
    local args = { script }
    for i = 1, 1000 do args[#args + 1] = tostring(i) end
    local r = host.run(args)
    assert.equal(0, r.code, r.stderr)
    assert.equal("1000 1000\n", r.stdout)
  end)
end)

describe("log context", function()
  it("is bound to the task and inherited by the tasks it spawns", function()
    local seen = {}
    local t = vg.spawn(function()
      log.context({ correlation_id = "42" })
      local child = vg.spawn(function()
        vg.sleep(0)
        return log.get_context().correlation_id
      end)
      seen.child = child:join()
      seen.own = log.get_context().correlation_id
      log.clear_context("correlation_id")
      seen.cleared = log.get_context().correlation_id
    end)
    t:join()
    assert.equal("42", seen.child)
    assert.equal("42", seen.own)
    assert.is_nil(seen.cleared)
    assert.is_nil(log.get_context().correlation_id) -- not leaked to the spec's task
  end)
end)

describe("vg.event", function()
  it("wakes every waiting task when set", function()
    local ev = vg.event()
    local woke = 0
    local ts = {}
    for i = 1, 3 do ts[i] = vg.spawn(function() if ev:wait() then woke = woke + 1 end end) end
    vg.sleep(0.01)
    assert.equal(0, woke)
    ev:set()
    for _, t in ipairs(ts) do t:join() end
    assert.equal(3, woke)
  end)

  it("returns at once when already set, and false on timeout once cleared", function()
    local ev = vg.event()
    ev:set()
    assert.is_true(ev:wait(0.01))
    ev:clear()
    assert.is_false(ev:is_set())
    assert.is_false(ev:wait(0.01))
  end)

  it("a cancelled waiter leaves the event usable", function()
    local ev = vg.event()
    local t = vg.spawn(function() return ev:wait() end)
    vg.sleep(0.01)
    t:cancel()
    assert.is_false(pcall(t.join, t))
    local t2 = vg.spawn(function() return ev:wait() end)
    vg.sleep(0.01)
    ev:set()
    assert.is_true(t2:join())
  end)
end)

describe("the time slice (VG_TASK_SLICE)", function()
  after_each(host.cleanup)

  local function run(body)
    return host.run({ host.script(body) }, { env = host.env { VG_TASK_SLICE = "0.3" } })
  end

  it("ends a task that never yields, however it catches errors, and the others go on", function()
    local r = run([[
      local vg = require "vg"
      local ticks = 0
      local ticker = vg.spawn(function()
        for _ = 1, 5 do vg.sleep(0.05); ticks = ticks + 1 end
      end)
      local hog = vg.spawn(function()
        while true do pcall(function() while true do end end) end
      end)
      local ok, err = pcall(hog.join, hog)
      ticker:join()
      print(ok, err.code, err.retriable, ticks)
    ]])
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("false\tslice_exceeded\ttrue\t5", r.stdout, 1, true)
    local line = host.find(host.lines(r.stdout:match("^(.-)\n[^\n]*\n$") or ""), "task_slice_exceeded")
    assert.is_not_nil(line, r.stdout)
    assert.matches("without yielding", line.error)
    assert.matches("stack traceback", line.traceback)
  end)

  it("raises at every check where the task cannot yield, until it gets out", function()
    local r = run([[
      local vg = require "vg"
      local caught = 0
      local t = vg.spawn(function()
        local list = { 3, 2, 1 }
        -- Inside a comparator the task cannot yield: the slice raises there,
        -- and again at each later check while it keeps catching.
        for _ = 1, 3 do
          local ok, err = pcall(table.sort, list, function(a, b)
            while true do end
          end)
          if not ok and tostring(err):find("slice_exceeded") then caught = caught + 1 end
        end
        return caught
      end)
      print("caught", t:join())
    ]])
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("caught\t3", r.stdout, 1, true)
  end)
end)
