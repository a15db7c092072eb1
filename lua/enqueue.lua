-- vg-host lua/enqueue.lua: add a task to the queue.
--
--   vg-host lua/enqueue.lua --channel ID [--pipeline NAME] [--priority high|normal|low]
--                           [--run-at ISO-8601|+SECONDS] [--max-attempts N]
--                           [--create-channel [NAME]] PAYLOAD_JSON
--
-- Prints the new task id. Enqueueing is a plain INSERT, so any service can
-- do the same with SQL; a trigger wakes the listening workers.
-- stdout carries the result; log lines go to stderr.
require("vg.log").to_stderr()
local db = require "vg.db"
local config = require "vg.config"
local cjson = require "cjson"

local USAGE = [==[
usage: vg-host lua/enqueue.lua --channel ID [--pipeline NAME] [--priority high|normal|low]
                               [--run-at ISO-8601|+SECONDS] [--max-attempts N]
                               [--create-channel [NAME]] PAYLOAD_JSON]==]

local function usage(msg)
  if msg then io.stderr:write("enqueue: ", msg, "\n") end
  io.stderr:write(USAGE, "\n")
  os.exit(2)
end

local function parse(argv)
  local o = { pipeline = "video", priority = "normal" }
  local i = 1
  local function value(flag)
    i = i + 1
    local v = argv[i]
    if v == nil then usage(flag .. " needs a value") end
    return v
  end
  while i <= #argv do
    local a = argv[i]
    if a == "--channel" then o.channel = value(a)
    elseif a == "--pipeline" then o.pipeline = value(a)
    elseif a == "--priority" then o.priority = value(a)
    elseif a == "--run-at" then o.run_at = value(a)
    elseif a == "--max-attempts" then o.max_attempts = value(a)
    elseif a == "--create-channel" then
      o.create_channel = true
      if argv[i + 1] and argv[i + 2] and not argv[i + 1]:match("^[%-{%[]") then
        o.channel_name = value(a)
      end
    elseif a == "-h" or a == "--help" then usage()
    elseif a:sub(1, 2) == "--" then usage("unknown option " .. a)
    elseif o.payload then usage("more than one payload given")
    else o.payload = a end
    i = i + 1
  end
  return o
end

local function validate(o)
  local problems = {}
  if not o.channel then problems[#problems + 1] = "--channel is required"
  elseif not o.channel:match("^[a-z0-9][a-z0-9_%-]*$") or #o.channel > 64 then
    problems[#problems + 1] = "channel ids are 1-64 of a-z, 0-9, _ and -, starting with a letter or digit"
  end
  if not ({ high = true, normal = true, low = true })[o.priority] then
    problems[#problems + 1] = "--priority must be high, normal or low"
  end
  if not o.pipeline:match("^[%w_%-]+$") then problems[#problems + 1] = "--pipeline must be a plain name" end
  if o.max_attempts then
    local n = tonumber(o.max_attempts)
    if not n or n ~= math.floor(n) or n < 1 or n > 1000 then
      problems[#problems + 1] = "--max-attempts must be a whole number from 1 to 1000"
    end
    o.max_attempts = n
  end
  local payload = o.payload or "{}"
  local ok, decoded = pcall(cjson.decode, payload)
  if not ok or type(decoded) ~= "table" then
    problems[#problems + 1] = "PAYLOAD_JSON must be a JSON object: " .. tostring(decoded)
  elseif payload:match("^%s*%[") then
    problems[#problems + 1] = "PAYLOAD_JSON must be a JSON object, not an array"
  end
  o.payload_text = payload
  if o.run_at then
    local secs = o.run_at:match("^%+(%d+%.?%d*)$")
    if secs then o.delay = tonumber(secs)
    elseif not o.run_at:match("^%d%d%d%d%-%d%d%-%d%d") then
      problems[#problems + 1] = "--run-at must be an ISO-8601 time or +SECONDS"
    end
  end
  if #problems > 0 then usage(table.concat(problems, "\n         ")) end
end

local function main(...)
  local o = parse({ ... })
  validate(o)
  config.load { "DATABASE_URL" }
  local id = db.transaction(function(tx)
    if o.create_channel then
      tx:query("INSERT INTO channels (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
               o.channel, o.channel_name or o.channel)
    end
    local rows = tx:query([[
      INSERT INTO tasks (channel_id, pipeline, payload, priority, max_attempts, run_at)
      SELECT $1, $2, $3::jsonb, $4, coalesce($5::int, $7::int),
             CASE WHEN $6::float8 IS NOT NULL THEN now() + make_interval(secs => $6::float8)
                  WHEN $8::timestamptz IS NOT NULL THEN $8::timestamptz
                  ELSE now() END
      RETURNING id]],
      o.channel, o.pipeline, o.payload_text, o.priority, o.max_attempts or db.null,
      o.delay or db.null, config.load({}).VG_MAX_ATTEMPTS,
      (not o.delay and o.run_at) or db.null)
    return rows[1].id
  end)
  print(id)
  db.close()
end

local ok, err = pcall(main, ...)
if not ok then
  if type(err) == "table" and err.sqlstate == "23503" then
    io.stderr:write("enqueue: no channel with that id (add --create-channel to create it)\n")
  else
    io.stderr:write("enqueue: ", tostring(err), "\n")
  end
  os.exit(1)
end
