-- vg-host lua/review.lua: decide on tasks stopped at a review gate.
--
--   vg-host lua/review.lua list
--   vg-host lua/review.lua approve TASK_ID --actor NAME [--reason TEXT]
--   vg-host lua/review.lua reject  TASK_ID --actor NAME [--reason TEXT]
--
-- Only a task in awaiting_review can be approved or rejected. approve sets
-- it to approved: claimable again at once, it resumes at the step after
-- the gate (its finished steps are checkpointed), and the claim starts its
-- attempts afresh. reject sets it to rejected, a final state. Either way an
-- audit_logs row (actor, action task_approved / task_rejected, task_id,
-- details {step, reason}) is written in the same transaction.
--
-- Exit codes: 0 done; 1 the task does not exist or is not awaiting review
-- (or the database failed); 2 usage error.
-- stdout carries the result; log lines go to stderr.
require("vg.log").to_stderr()
local db = require "vg.db"
local config = require "vg.config"
local admin = require "vg.admin"

local USAGE = [==[
usage: vg-host lua/review.lua list
       vg-host lua/review.lua approve TASK_ID --actor NAME [--reason TEXT]
       vg-host lua/review.lua reject  TASK_ID --actor NAME [--reason TEXT]]==]

local usage = admin.usage("review", USAGE)

local function parse(argv)
  local o = { command = argv[1] }
  if o.command == "-h" or o.command == "--help" then
    io.stdout:write(USAGE, "\n")
    os.exit(0)
  end
  if o.command == "list" then
    if #argv > 1 then usage("list takes no arguments") end
    return o
  end
  if o.command ~= "approve" and o.command ~= "reject" then
    usage(o.command and ("unknown command " .. o.command) or nil)
  end
  local i = 2
  while i <= #argv do
    local a = argv[i]
    if a == "--actor" or a == "--reason" then
      local v = argv[i + 1]
      if v == nil then usage(a .. " needs a value") end
      o[a:sub(3)] = v
      i = i + 1
    elseif a:sub(1, 2) == "--" then
      usage("unknown option " .. a)
    elseif o.task_id then
      usage("more than one task id given")
    else
      o.task_id = a
    end
    i = i + 1
  end
  if not o.task_id then usage("a TASK_ID is required") end
  if not o.task_id:match("^[1-9]%d*$") or #o.task_id > 18 then
    usage("TASK_ID must be a positive whole number")
  end
  o.task_id = math.tointeger(tonumber(o.task_id))
  if not o.actor or not o.actor:match("%S") then usage("--actor NAME is required") end
  if #o.actor > 200 then usage("--actor must be at most 200 characters") end
  if o.reason and #o.reason > 2000 then usage("--reason must be at most 2000 characters") end
  return o
end

-- Returns the gate's step, or nil and a message when the task is missing
-- or in another state (vg.reviews, shared with lua/web.lua).
local function decide(o)
  return require("vg.reviews").decide(o.command, o.task_id, o.actor, o.reason)
end

local function list()
  local rows = db.query([[
    SELECT t.id, t.channel_id, t.current_step,
           coalesce(t.payload->>'title', '') AS title,
           extract(epoch FROM now() - t.updated_at)::float8 AS waiting_seconds
      FROM tasks t WHERE t.status = 'awaiting_review'
     ORDER BY t.updated_at, t.id]])
  if #rows == 0 then
    print("no tasks awaiting review")
    return
  end
  print(string.format("%-8s %-20s %-26s %-9s %s", "task", "channel", "gate after step", "waiting", "title"))
  for _, r in ipairs(rows) do
    print(string.format("%-8s %-20s %-26s %7.0fs  %s", tostring(r.id), r.channel_id,
                        tostring(r.current_step ~= db.null and r.current_step or "-"),
                        r.waiting_seconds, r.title))
  end
end

local function main(...)
  local o = parse({ ... })
  config.load { "DATABASE_URL" }
  if o.command == "list" then
    list()
    db.close()
    return 0
  end
  local step, why = decide(o)
  db.close()
  if not step then
    io.stderr:write("review: ", why, "\n")
    return 1
  end
  if o.command == "approve" then
    print(string.format("task %d approved by %s (gate after %s); it resumes at the next step",
                        o.task_id, o.actor, step))
  else
    print(string.format("task %d rejected by %s (gate after %s)", o.task_id, o.actor, step))
  end
  return 0
end

local res = admin.run("review", main, ...)
if res ~= 0 then os.exit(res) end
