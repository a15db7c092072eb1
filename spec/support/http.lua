-- HTTP helpers for the specs of vg.http, worker health and lua/web.lua:
-- real requests with curl, and a free port on 127.0.0.1.
local proc = require "vg.proc"

local M = {}

-- curl(url [, args]) -> status code, body, and curl's result.
function M.curl(url, args)
  local argv = { "curl", "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = url
  local r = proc.run(argv, { timeout = 40 })
  local body, code = r.stdout:match("^(.*)\n(%d%d%d)$")
  return tonumber(code), body, r
end

-- A free port on 127.0.0.1 (bound and released at once).
function M.free_port()
  local http = require "vg.http"
  local s = http.serve { port = 0, routes = {} }
  local port = s.port()
  s.close()
  s.task:join()
  return port
end

return M
