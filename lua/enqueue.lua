-- vg-host lua/enqueue.lua: add a task to the queue.
--
--   vg-host lua/enqueue.lua --channel ID [--pipeline NAME] [--priority high|normal|low]
--                           [--run-at ISO-8601|+DURATION] [--max-attempts N]
--                           [--create-channel [NAME]]
--                           [PAYLOAD_JSON | - | --payload-file PATH]
--
-- The payload is a JSON object: on the command line (argv holds at most
-- about 128 KiB), or read from stdin (`-`) or a file (`--payload-file`,
-- any size). It must be valid UTF-8 without NUL characters, which
-- PostgreSQL cannot store. --pipeline must name a pipeline of the
-- VG_PIPELINES module (the workers' own); --run-at is an ISO-8601 time
-- (2026-12-01T09:00:00Z) or a delay from now (+90, +30s, +10m, +2h).
--
-- Prints the new task id. Enqueueing is a plain INSERT, so any service can
-- do the same with SQL; a trigger wakes the listening workers.
-- stdout carries the result; log lines go to stderr.
require("vg.log").to_stderr()
local db = require "vg.db"
local config = require "vg.config"
local cjson = require "cjson"
local admin = require "vg.admin"

local USAGE = [==[
usage: vg-host lua/enqueue.lua --channel ID [--pipeline NAME] [--priority high|normal|low]
                               [--run-at ISO-8601|+DURATION] [--max-attempts N]
                               [--create-channel [NAME]]
                               [PAYLOAD_JSON | - | --payload-file PATH]
The payload is a JSON object; - reads it from stdin.]==]

local usage = admin.usage("enqueue", USAGE)

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
    elseif a == "--payload-file" then
      if o.payload or o.payload_file then usage("more than one payload given") end
      o.payload_file = value(a)
    elseif a == "--create-channel" then
      o.create_channel = true
      if argv[i + 1] and argv[i + 2] and not argv[i + 1]:match("^[%-{%[]") then
        o.channel_name = value(a)
      end
    elseif a == "-h" or a == "--help" then usage()
    elseif a:sub(1, 2) == "--" then usage("unknown option " .. a)
    elseif o.payload or o.payload_file then usage("more than one payload given")
    else o.payload = a end
    i = i + 1
  end
  return o
end

-- The payload's text: argv, stdin (-) or a file.
local function read_payload(o)
  local src = o.payload_file or (o.payload == "-" and "-") or nil
  if not src then return o.payload or "{}", "PAYLOAD_JSON" end
  local f, err = io.stdin, nil
  if src ~= "-" then f, err = io.open(src, "rb") end
  if not f then usage("--payload-file: cannot read " .. src .. ": " .. tostring(err)) end
  local text, rerr = f:read("a")
  if src ~= "-" then f:close() end
  if not text then usage("cannot read the payload: " .. tostring(rerr)) end
  return text, src == "-" and "the payload on stdin" or ("the payload file " .. src)
end

-- A NUL inside any string or key of a decoded payload (JSON's \u0000),
-- which jsonb cannot hold.
local function has_nul(v, depth)
  if type(v) == "string" then return v:find("\0", 1, true) ~= nil end
  if type(v) ~= "table" or depth > 200 then return false end
  for k, x in pairs(v) do
    if has_nul(k, depth + 1) or has_nul(x, depth + 1) then return true end
  end
  return false
end

-- ISO-8601 date or date-time, with an optional zone; checked field by field.
local function iso_time_problem(s)
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return "must start with a date YYYY-MM-DD" end
  mo, d = tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > 31 then return "has no such month or day" end
  if rest == "" then return nil end
  local h, mi, sec, zone = rest:match("^[T ](%d%d):(%d%d):?(%d?%d?%.?%d*)(.*)$")
  if not h then return "needs a time as THH:MM[:SS] after the date" end
  if tonumber(h) > 23 or tonumber(mi) > 59 or (sec ~= "" and (tonumber(sec) or 99) >= 61) then
    return "has no such time of day"
  end
  if zone ~= "" and zone ~= "Z" and not zone:match("^[+-]%d%d:?%d%d$") and not zone:match("^[+-]%d%d$") then
    return "has an unknown time zone (use Z or +HH:MM)"
  end
  return nil
end

local function validate(o)
  local problems = {}
  local function add(msg) problems[#problems + 1] = msg end
  if not o.channel then add("--channel is required")
  elseif not o.channel:match("^[a-z0-9][a-z0-9_%-]*$") or #o.channel > 64 then
    add("--channel: channel ids are 1-64 of a-z, 0-9, _ and -, starting with a letter or digit")
  end
  if not ({ high = true, normal = true, low = true })[o.priority] then
    add("--priority must be high, normal or low")
  end
  if not o.pipeline:match("^[%w_%-]+$") then
    add("--pipeline must be a plain name")
  else
    local modname = os.getenv("VG_PIPELINES")
    if not modname or modname == "" then modname = "pipelines" end
    local ok, pipes = pcall(require("vg.pipeline").load, modname)
    if not ok then
      add("--pipeline cannot be checked: " .. tostring(pipes))
    elseif not pipes[o.pipeline] then
      local known = {}
      for name in pairs(pipes) do known[#known + 1] = name end
      table.sort(known)
      add(string.format("--pipeline: no pipeline named %q in %s (known: %s)", o.pipeline, modname,
                        table.concat(known, ", ")))
    end
  end
  if o.max_attempts then
    local n = tonumber(o.max_attempts)
    if not n or n ~= math.floor(n) or n < 1 or n > 1000 then
      add("--max-attempts must be a whole number from 1 to 1000")
    end
    o.max_attempts = n
  end
  local payload, what = read_payload(o)
  if payload:find("\0", 1, true) then
    add(what .. " holds a NUL byte, which PostgreSQL cannot store")
  elseif not utf8.len(payload) then
    local _, bad = utf8.len(payload)
    add(string.format("%s is not valid UTF-8 (first bad byte at offset %d)", what, bad - 1))
  else
    local ok, decoded = pcall(cjson.decode, payload)
    if not ok or type(decoded) ~= "table" then
      add(what .. " must be a JSON object: " .. tostring(decoded))
    elseif payload:match("^%s*%[") then
      add(what .. " must be a JSON object, not an array")
    elseif has_nul(decoded, 0) then
      add(what .. " holds \\u0000 (NUL) in a string, which PostgreSQL cannot store")
    end
  end
  o.payload_text = payload
  if o.run_at then
    local delay = o.run_at:match("^%+(.+)$")
    if delay then
      local secs = config.duration(delay)
      if not secs or secs < 0 then
        add(string.format("--run-at %q: a delay is +SECONDS or +DURATION (+90, +30s, +10m, +2h)", o.run_at))
      else
        o.delay = secs
      end
    else
      local why = iso_time_problem(o.run_at)
      if why then
        add(string.format("--run-at %q %s (ISO-8601, e.g. 2026-12-01T09:00:00Z, or +DURATION)", o.run_at, why))
      end
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
    os.exit(1)
  elseif type(err) == "table" and err.sqlstate and err.sqlstate:match("^22") then
    -- A value PostgreSQL refused (a date that does not exist, a number
    -- out of range): name it, it is the user's input.
    io.stderr:write("enqueue: a value was refused by the database: ", tostring(err.message),
                    " (check --run-at and the payload)\n")
    os.exit(2)
  end
  admin.fail("enqueue", err)
end
