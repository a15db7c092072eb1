-- A TCP proxy in front of the test PostgreSQL (socat, one process group:
-- the listener and a child per connection), for the specs that cut a
-- worker off from its database: kill the group to drop every connection
-- through it, SIGSTOP it for a partition, start it again on the same port.
local proc = require "vg.proc"
local tdb = require "spec.support.db"
local http = require "spec.support.http"

local M = {}
local started = {}
local Proxy = {}
Proxy.__index = Proxy

-- M.start([port]) -> proxy on 127.0.0.1:port (a free one by default),
-- listening once it returns. proxy.url is TEST_DATABASE_URL through it.
function M.start(port)
  local pg_host, pg_port = tdb.url:match("@([^:/]+):(%d+)/")
  local px = setmetatable({ port = port or http.free_port(), target = pg_host .. ":" .. pg_port }, Proxy)
  px.url = tdb.url:gsub("@[^/]+/", "@127.0.0.1:" .. px.port .. "/")
  px:up()
  started[#started + 1] = px
  return px
end

-- Kill every proxy started since the last cleanup (for after_each).
function M.cleanup()
  for _, px in ipairs(started) do px:kill() end
  started = {}
end

-- Start listening (again, after kill).
function Proxy:up()
  self.p = proc.spawn({ "socat", "TCP-LISTEN:" .. self.port .. ",bind=127.0.0.1,reuseaddr,fork",
                        "TCP:" .. self.target }, {})
  assert(tdb.eventually(function()
    return proc.run({ "socat", "-u", "/dev/null", "TCP:127.0.0.1:" .. self.port }).code == 0
  end, 10, 0.05), "the proxy did not start")
end

-- Drop every connection through it, and stop listening.
function Proxy:kill()
  if self.p and self.p:running() then
    self.p:kill("CONT", { group = true })
    self.p:kill("KILL", { group = true })
    self.p:wait(10)
  end
end

-- A partition: connections stay open, no byte moves (stop), until cont.
function Proxy:stop() self.p:kill("STOP", { group = true }) end
function Proxy:cont() self.p:kill("CONT", { group = true }) end

return M
