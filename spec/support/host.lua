-- Helpers for process-level specs: run the real vg-host binary (the one
-- under test, VG_HOST_BIN) as a child and read its JSON log lines.
local proc = require "vg.proc"
local cjson = require "cjson"

local M = {}

M.root = os.getenv("PWD") or "."
M.bin = os.getenv("VG_HOST_BIN") or "build/vg-host"
if M.bin:sub(1, 1) ~= "/" then M.bin = M.root .. "/" .. M.bin end
M.key = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="

local tmp_files = {}

-- A fresh temp file's name (os.tmpname creates it, empty); removed by
-- M.cleanup().
function M.tmpname()
  local path = os.tmpname()
  tmp_files[#tmp_files + 1] = path
  return path
end

-- A temp file with the given text (next to an empty one, M.tmpname());
-- both removed by M.cleanup().
function M.script(text, suffix)
  local path = M.tmpname() .. (suffix or ".lua")
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  tmp_files[#tmp_files + 1] = path
  return path
end

function M.cleanup()
  for _, p in ipairs(tmp_files) do os.remove(p) end
  tmp_files = {}
end

-- Environment for a child: DATABASE_URL / FERNET_KEY set to harmless
-- values unless given, plus extra.
function M.env(extra)
  local env = {
    DATABASE_URL = os.getenv("TEST_DATABASE_URL") or "postgresql://127.0.0.1:1/none",
    FERNET_KEY = M.key,
    LOG_LEVEL = "info",
  }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function argv(args)
  local a = { M.bin }
  for _, x in ipairs(args) do a[#a + 1] = x end
  return a
end

-- Run vg-host to completion.
function M.run(args, opts)
  opts = opts or {}
  return proc.run(argv(args), {
    env = opts.env or M.env(), timeout = opts.timeout or 60, cwd = opts.cwd or M.root,
    clear_env = opts.clear_env, max_output = opts.max_output,
  })
end

-- Start vg-host; returns the Process.
function M.spawn(args, opts)
  opts = opts or {}
  return proc.spawn(argv(args), {
    env = opts.env or M.env(), cwd = opts.cwd or M.root,
  })
end

-- Decode every line of a log output. Each line must be one JSON object
-- with timestamp, level, event and worker_id; raises otherwise.
function M.lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local ok, obj = pcall(cjson.decode, line)
    if not ok or type(obj) ~= "table" then
      error("log line is not JSON: " .. line, 2)
    end
    for _, key in ipairs { "timestamp", "level", "event", "worker_id" } do
      if obj[key] == nil then error("log line lacks " .. key .. ": " .. line, 2) end
    end
    if not obj.timestamp:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$") then
      error("timestamp is not RFC 3339 UTC with milliseconds: " .. line, 2)
    end
    out[#out + 1] = obj
  end
  return out
end

-- The first line with this event (and the index), or nil.
function M.find(lines, event)
  for i, l in ipairs(lines) do
    if l.event == event then return l, i end
  end
end

function M.events(lines)
  local ev = {}
  for i, l in ipairs(lines) do ev[i] = l.event end
  return ev
end

-- Wait until the child's output has a line with this event.
function M.wait_event(p, event, timeout)
  return p:wait_output('"event":"' .. event .. '"', timeout or 20, { plain = true })
end

return M
