-- Helpers for the end-to-end specs (make test-e2e): HTTP with curl, free
-- ports, temp folders, and starting real workers and lua/web.lua.
local proc = require "vg.proc"
local cjson = require "cjson"
local http = require "vg.http"
local host = require "spec.support.host"
local tdb = require "spec.support.db"

local M = {}

-- curl: status, body. opts.method, opts.json (a table sent as JSON), args.
function M.curl(url, opts)
  opts = opts or {}
  local argv = { "curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}" }
  if opts.method then argv[#argv + 1] = "-X"; argv[#argv + 1] = opts.method end
  if opts.json then
    argv[#argv + 1] = "-H"; argv[#argv + 1] = "Content-Type: application/json"
    argv[#argv + 1] = "--data-binary"; argv[#argv + 1] = "@-"
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = url
  local r = proc.run(argv, { timeout = 90, stdin = opts.json and cjson.encode(opts.json) or nil,
                             max_output = 64 * 1024 * 1024 })
  local body, code = r.stdout:match("^(.*)\n(%d%d%d)$")
  return tonumber(code), body
end

function M.free_port()
  local s = http.serve { port = 0, routes = {} }
  local port = s.port()
  s.close()
  s.task:join()
  return port
end

function M.tempdir()
  local r = proc.run({ "mktemp", "-d", "/tmp/vg-e2e.XXXXXX" })
  assert(r.code == 0, r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

function M.worker(name, extra)
  local env = tdb.worker_env(extra)
  env.WORKER_ID = name
  local p = host.spawn({ "lua/worker.lua" }, { env = env })
  assert(host.wait_event(p, "worker_started"), p:stdout())
  return p
end

function M.web(extra)
  local port = M.free_port()
  local env = host.env { DATABASE_URL = tdb.url, PORT = tostring(port), VG_HTTP_HOST = "127.0.0.1" }
  for k, v in pairs(extra or {}) do env[k] = v end
  local p = host.spawn({ "lua/web.lua" }, { env = env })
  assert(host.wait_event(p, "web_started"), p:stdout())
  return p, port
end

function M.stop(p)
  if p and p:running() then
    p:kill("TERM")
    if not p:wait(30) then p:kill("KILL", { group = true }); p:wait(10) end
  end
end

return M
