-- require "vg.http": a small HTTP server for Lua scripts, on the host's
-- loop (the listener and the parsing are in C: src/http.c, src/l_http.c).
--
--   local srv = http.serve {
--     host = "127.0.0.1", port = 8080,          -- port 0: any free port
--     routes = {
--       ["/healthz"] = function(req) return 200, { ok = true } end,      -- GET (and HEAD)
--       ["/review"]  = { GET = show, POST = decide },
--       ["/files/*"] = serve_file,                 -- a prefix route
--     },
--     -- limits (defaults): max_connections 64, max_header_bytes 16 KiB,
--     -- max_body_bytes 1 MiB, request_timeout 10 s (the whole request)
--     serve_during_shutdown = false,  -- true: keep serving through the
--                                     -- grace until srv:close()
--   }
--   srv:port(), srv:stats(), srv:close(), srv.task (the accepting task)
--
-- Every request runs in a task of its own. A handler gets
--   req = { method, target, path, query (decoded table), headers (lower-case
--           names), body, remote, form() (decoded urlencoded body) }
-- and returns status, body [, headers]. A table body is sent as JSON; a
-- string as text/plain unless headers say otherwise. A handler's error is
-- logged and answered 500 without its details. Unknown paths get 404, a
-- known path with another method 405.
--
-- At shutdown (or at srv:close() with serve_during_shutdown) the server
-- stops listening and closes connections that have not sent a whole request; requests being answered finish within the
-- shutdown grace (the host cancels them at its end, and their connections
-- get 500 and are closed).
local vg = require "vg"
local log = require "vg.log"
local core = require "vg.http.core"
local cjson = require "cjson"

local M = {}

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.unescape = unescape

function M.escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- "a=1&b=x%20y" -> { a = "1", b = "x y" } (the first value of a repeated key)
function M.decode_form(s)
  local t = {}
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if t[k] == nil then t[k] = unescape(v) end
  end
  return t
end

local function split_target(target)
  local path, query = target:match("^([^?#]*)%??([^#]*)")
  return path or target, query or ""
end

local function find_route(routes, prefixes, path)
  local r = routes[path]
  if r then return r end
  for _, p in ipairs(prefixes) do
    if path:sub(1, #p.prefix) == p.prefix then return p.route end
  end
end

local function handler_for(route, method)
  if type(route) == "function" then
    if method == "GET" or method == "HEAD" then return route end
    return nil
  end
  return route[method] or (method == "HEAD" and route.GET) or nil
end

local function send(res, method, status, body, headers)
  headers = headers or {}
  if type(body) == "table" then
    body = cjson.encode(body) .. "\n"
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
  elseif body == nil then
    body = ""
  else
    body = tostring(body)
    headers["Content-Type"] = headers["Content-Type"] or "text/plain; charset=utf-8"
  end
  if method == "HEAD" then body = "" end
  return res:send(status, headers, body)
end

local function handle(routes, prefixes, req, res)
  local path, query = split_target(req.target)
  req.path, req.query = path, M.decode_form(query)
  req.form = function() return M.decode_form(req.body) end
  local route = find_route(routes, prefixes, path)
  if not route then
    return send(res, req.method, 404, { error = "not found" })
  end
  local fn = handler_for(route, req.method)
  if not fn then
    return send(res, req.method, 405, { error = "method not allowed" })
  end
  local ok, status, body, headers = pcall(fn, req)
  if not ok then
    if vg.is_cancelled(status) then
      send(res, req.method, 503, { error = "shutting down" })
      error(status, 0)
    end
    log.error("http_handler_failed", { path = path, method = req.method, error = tostring(status) })
    return send(res, req.method, 500, { error = "internal error" })
  end
  return send(res, req.method, status or 200, body, headers)
end

function M.serve(opts)
  local routes, prefixes = {}, {}
  for k, v in pairs(opts.routes or {}) do
    if k:sub(-1) == "*" then prefixes[#prefixes + 1] = { prefix = k:sub(1, -2), route = v }
    else routes[k] = v end
  end
  -- Longest prefix first.
  table.sort(prefixes, function(a, b) return #a.prefix > #b.prefix end)
  local srv = core.listen {
    host = opts.host, port = opts.port, max_connections = opts.max_connections,
    max_header_bytes = opts.max_header_bytes, max_body_bytes = opts.max_body_bytes,
    request_timeout = opts.request_timeout,
  }
  local server = { core = srv }
  function server.port() return srv:port() end
  function server.stats() return srv:stats() end
  function server.close() srv:close() end
  log.info("http_listening", { host = opts.host or "127.0.0.1", port = srv:port() })
  local wait = { interruptible = not opts.serve_during_shutdown }
  server.task = vg.spawn(function()
    while true do
      local req, res = srv:next(wait)
      if not req then break end
      vg.spawn(function()
        local ok, err = pcall(handle, routes, prefixes, req, res)
        if not ok then
          if vg.is_cancelled(err) then error(err, 0) end
          log.error("http_request_failed", { error = tostring(err) })
        end
      end)
    end
    srv:close()
  end)
  return server
end

-- The address and port to listen on from a variable's value: "8080",
-- ":8080", "0.0.0.0:8080", "[::1]:8080". Returns host, port or nil, problem.
function M.parse_listen(value, default_host)
  value = tostring(value or "")
  local host, port = value:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = value:match("^([^:]*):(%d+)$") end
  if not host then port = value:match("^(%d+)$") end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 then
    return nil, string.format("%q is not a port (1-65535) or host:port", value)
  end
  if host == nil or host == "" then host = default_host or "0.0.0.0" end
  return host, port
end

return M
