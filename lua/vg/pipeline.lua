-- Runs one claimed task through its pipeline (DESIGN section 7).
--
-- A pipelines module (VG_PIPELINES, default "pipelines") returns
--   { name = { steps = { {name=..., run=function(ctx) ... end, review=bool}, ... },
--              validate = function(payload) ... end (optional) }, ... }
-- Each finished step is checkpointed in task_steps (with the table its run
-- returned), so a retried, rescued or released task resumes at the first
-- unfinished step and paid steps are not redone. A step with review = true
-- ends at a review gate (awaiting_review) unless gates are off for the
-- channel or globally; approval resumes at the next step.
--
-- Errors: a step raises; an error object with retriable = false fails the
-- task at once, anything else is retried with back-off until max_attempts.
local vg = require "vg"
local log = require "vg.log"
local db = require "vg.db"

local M = {}

-- Error raised when a fenced write matched no row: the lease was lost,
-- nothing more may be written for this task.
M.LEASE_LOST = setmetatable({ code = "lease_lost", message = "the task's lease was lost",
                              retriable = false },
                            { __tostring = function() return "lease_lost: the task's lease was lost" end })

-- A non-retriable error for pipelines and steps to raise.
function M.fatal(message, fields)
  local e = { code = "step_failed", message = message, retriable = false }
  for k, v in pairs(fields or {}) do e[k] = v end
  return setmetatable(e, { __tostring = function(x) return x.code .. ": " .. x.message end })
end

-- A retriable error.
function M.transient(message, fields)
  local e = M.fatal(message, fields)
  e.retriable = true
  e.code = "step_transient"
  return e
end

local function fenced(ok)
  if not ok then error(M.LEASE_LOST, 0) end
end

-- Load and check the pipelines module once.
function M.load(modname)
  local ok, mod = pcall(require, modname)
  if not ok then
    error(string.format("cannot load the pipelines module %q (VG_PIPELINES): %s", modname,
                        tostring(mod)), 0)
  end
  if type(mod) ~= "table" then
    error(string.format("pipelines module %q must return a table", modname), 0)
  end
  for name, p in pairs(mod) do
    if type(p) ~= "table" or type(p.steps) ~= "table" then
      error(string.format("pipeline %q needs a steps list", tostring(name)), 0)
    end
    for i, s in ipairs(p.steps) do
      if type(s.name) ~= "string" or type(s.run) ~= "function" then
        error(string.format("pipeline %q step %d needs a name and a run function", name, i), 0)
      end
    end
  end
  return mod
end

-- A finished step's files must still be in the workspace for the steps
-- after it: a task resumed on another worker (another container, or one
-- started anew) may find them gone. The workspace after the last finished
-- step is checked against what was recorded then; for each file it lacks,
-- the step that last wrote it (the first of the run of steps whose records
-- show it as it is now) is run again, with every step after it. files:
-- env.files ({ snapshot = fn(task), missing = fn(task, recorded) }).
function M.redo_missing(files, task, steps, done, recorded)
  local last
  for i, step in ipairs(steps) do
    if not done[step.name] then break end
    last = i
  end
  local want = last and recorded[steps[last].name]
  if not want then return end
  local lacking = files.missing(task, want)
  if #lacking == 0 then return end
  local from = last
  for _, path in ipairs(lacking) do
    local k = last -- back to the step that wrote it as it is now
    while k > 1 do
      local before = recorded[steps[k - 1].name]
      if not (before and before[path] == want[path]) then break end
      k = k - 1
    end
    if k < from then from = k end
  end
  for j = from, #steps do done[steps[j].name] = nil end
  log.warning("steps_redone", { from_step = steps[from].name, missing = lacking[1],
    files_missing = #lacking,
    reason = "files that finished steps left in the workspace are not in this worker's workspace" })
end

-- Run task (a claimed row) through pipe. env: { queue, gates (bool),
-- context = function(task, step) -> extra ctx fields }.
-- Returns "completed" or "awaiting_review"; raises on failure.
function M.execute(env, pipe, task)
  local q = env.queue
  if type(task.payload) ~= "table" or task.payload[1] ~= nil then
    local kind = type(task.payload) == "table" and "an array" or type(task.payload)
    error(M.fatal("payload must be a JSON object, got " .. kind), 0)
  end
  if pipe.validate then
    local ok, why = pcall(pipe.validate, task.payload)
    if not ok then
      if vg.is_cancelled(why) then error(why, 0) end
      error(M.fatal("invalid payload: " .. tostring(type(why) == "table" and why.message or why)), 0)
    end
  end
  local steps = pipe.steps
  -- Steps a previous attempt (or the part before a review gate) finished.
  local done, files = {}, {}
  if #steps > 0 then done, files = q:completed_steps(task) end
  if env.files then M.redo_missing(env.files, task, steps, done, files) end
  if #steps > 0 then fenced(q:start(task, steps[1].name)) end
  local outputs = {}
  for i, step in ipairs(steps) do
    if done[step.name] then
      outputs[step.name] = done[step.name]
    else
      local ctx = {
        task = task, payload = task.payload, step = step.name, index = i,
        outputs = outputs, log = log.bind({ step = step.name }),
      }
      if env.context then env.context(ctx, task, step) end
      local started = vg.time()
      log.info("step_started", { step = step.name, attempt = task.attempts })
      local out = step.run(ctx)
      if out ~= nil and type(out) ~= "table" then out = { value = out } end
      outputs[step.name] = out or {}
      local snapshot = env.files and env.files.snapshot(task)
      fenced(q:checkpoint(task, step.name, task.attempts, out or {}, started, snapshot))
      local took = vg.time() - started
      log.info("step_completed", { step = step.name, duration_ms = math.floor(took * 1000) })
      if env.after_step then env.after_step(ctx, out, took) end
      if step.review and env.gates and env.gates(task) and i < #steps then
        fenced(q:await_review(task, step.name, db.null))
        log.info("task_awaiting_review", { step = step.name })
        return "awaiting_review"
      end
    end
  end
  local result = pipe.result and pipe.result(outputs, task) or { steps = #steps }
  -- env.complete (batched completion) when the consumer batches results.
  if env.complete then fenced(env.complete(task, result)) else fenced(q:complete(task, result)) end
  return "completed"
end

return M
