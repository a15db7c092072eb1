-- Pipelines for the queue specs (VG_PIPELINES=spec.support.test_pipelines).
-- Each records its executions in test_executions so specs can count them.
local vg = require "vg"
local db = require "vg.db"
local pipeline = require "vg.pipeline"

local function record(ctx, step)
  db.query("INSERT INTO test_executions (task_id, worker_id, step, attempt) VALUES ($1, $2, $3, $4)",
           ctx.task.id, vg.worker_id(), step, ctx.task.attempts)
end

local function work(ctx)
  local s = ctx.payload.sleep
  if s then vg.sleep(s, { interruptible = false }) end
end

local function recording_step(name)
  return {
    name = name,
    run = function(ctx)
      record(ctx, name)
      if ctx.payload.sleep_in == name or ctx.payload.sleep_in == nil then work(ctx) end
      if ctx.payload.fail_in == name then error("fail_in " .. name) end
      return { step = name }
    end,
  }
end

-- A step command that leaves its own record of how long it ran: it and a
-- child of its (same process group) each append "task pid nanoseconds
-- worker" to payload.log every 50 ms, payload.ticks times. The fencing specs read the
-- lifetimes of every run of a task from that file.
local TICKER = [[
tick() { i=0; while [ $i -lt "$TICKS" ]; do
  echo "$TASK $$ $(date +%s%N) $WORKER" >> "$LOG"; sleep 0.05; i=$((i+1)); done; }
tick & tick; wait
]]

local function ticker(ctx)
  local proc = require "vg.proc"
  local r = proc.run({ "sh", "-c", TICKER }, { env = {
    TASK = tostring(ctx.task.id), LOG = ctx.payload.log, TICKS = tostring(ctx.payload.ticks or 20),
    WORKER = vg.worker_id(),
  } })
  if r.code ~= 0 then error(pipeline.transient("ticker ended with " .. tostring(r.signal_name or r.code))) end
  record(ctx, "ticker")
  return {}
end

return {
  ticker = { steps = { { name = "ticker", run = ticker } } },
  -- A step that never yields, and swallows errors while it spins.
  spin = { steps = { { name = "spin", run = function(ctx)
    record(ctx, "spin")
    while true do pcall(function() local x = 0; while true do x = x + 1 end end) end
  end } } },
  noop = { steps = {} },
  record = { steps = { recording_step("record") } },
  three = { steps = { recording_step("one"), recording_step("two"), recording_step("three") } },
  gated = { steps = { recording_step("one"), { name = "two", review = true,
                      run = function(ctx) record(ctx, "two"); return {} end },
                      recording_step("three") } },
  -- Fails (retriably) until the attempt number reaches payload.succeed_on.
  flaky = { steps = { { name = "flaky", run = function(ctx)
    record(ctx, "flaky")
    if ctx.task.attempts < (ctx.payload.succeed_on or math.huge) then
      error(pipeline.transient("not yet, attempt " .. ctx.task.attempts))
    end
    return {}
  end } } },
  fatal = { steps = { { name = "fatal", run = function(ctx)
    record(ctx, "fatal")
    error(pipeline.fatal("this can never work"))
  end } } },
  strict = {
    validate = function(p) assert(type(p.title) == "string", "title must be a string") end,
    steps = { recording_step("strict") },
  },
  -- Logs from a nested function, to check correlation ids.
  chatty = { steps = { { name = "chatty", run = function(ctx)
    local log = require "vg.log"
    local function deeper() log.info("deep_line", { n = 1 }) end
    deeper()
    vg.spawn(function() log.info("spawned_line") end):join()
    return {}
  end } } },
}
