-- vg.http over real sockets: routes, limits, malformed and slow requests,
-- and shutdown with connections open. The clients are curl and socat.
local vg = require "vg"
local proc = require "vg.proc"
local cjson = require "cjson"
local http = require "vg.http"
local host = require "spec.support.host"
local support_http = require "spec.support.http"
local curl = support_http.curl

-- curl: status, body (and headers when asked).
-- Raw bytes to a port with socat; the answer as received.
local function raw(port, bytes)
  local r = proc.run({ "socat", "-t", "5", "-", "TCP:127.0.0.1:" .. port }, { stdin = bytes, timeout = 30 })
  return r.stdout
end

-- A client that sends the start of a request (printf's %b escapes) and
-- then nothing, holding its connection open; its stdout is the answer.
-- "closed" is printed once the server has closed the connection.
local function hold_open(port, prefix)
  return proc.spawn({ "sh", "-c", "(printf '%b' \"$1\"; exec sleep 60) | "
                      .. "{ socat -t 1 - TCP:127.0.0.1:" .. port .. "; echo closed; }",
                      "sh", prefix }, {})
end

local function wait_until(fn)
  while not fn() do vg.sleep(0.01) end
end

describe("vg.http", function()
  local srv
  local released = vg.event()

  setup(function()
    srv = http.serve {
      port = 0,
      max_header_bytes = 2048,
      max_body_bytes = 1000,
      max_connections = 8,
      request_timeout = 1,
      routes = {
        ["/hello"] = function(req)
          return 200, "hello " .. (req.query.name or "world")
        end,
        ["/json"] = function() return 200, { ok = true, n = 3 } end,
        ["/echo"] = { POST = function(req)
          return 201, { body = req.body, form = req.form(), ctype = req.headers["content-type"] }
        end },
        ["/boom"] = function() error("handler exploded") end,
        ["/wait"] = function()
          released:wait(nil, { interruptible = false })
          return 200, "released"
        end,
        ["/files/*"] = function(req) return 200, "file " .. req.path end,
      },
    }
  end)

  teardown(function()
    released:set()
    srv.close()
    host.cleanup()
  end)

  it("routes GET requests to their Lua functions, with the query decoded", function()
    local code, body = curl("http://127.0.0.1:" .. srv.port() .. "/hello?name=a%20b")
    assert.are.equal(200, code)
    assert.are.equal("hello a b", body)
    code, body = curl("http://127.0.0.1:" .. srv.port() .. "/json")
    assert.are.equal(200, code)
    assert.are.same({ ok = true, n = 3 }, cjson.decode(body))
    code, body = curl("http://127.0.0.1:" .. srv.port() .. "/files/a/b.mp4")
    assert.are.equal(200, code)
    assert.are.equal("file /files/a/b.mp4", body)
  end)

  it("answers 404 for unknown paths and 405 for another method", function()
    assert.are.equal(404, (curl("http://127.0.0.1:" .. srv.port() .. "/nope")))
    assert.are.equal(405, (curl("http://127.0.0.1:" .. srv.port() .. "/hello", { "-X", "POST" })))
    assert.are.equal(405, (curl("http://127.0.0.1:" .. srv.port() .. "/echo")))
  end)

  it("hands a POST body and its form fields to the handler", function()
    local code, body = curl("http://127.0.0.1:" .. srv.port() .. "/echo",
                            { "--data", "reason=too%20dark&x=1" })
    assert.are.equal(201, code)
    local t = cjson.decode(body)
    assert.are.equal("reason=too%20dark&x=1", t.body)
    assert.are.same({ reason = "too dark", x = "1" }, t.form)
    assert.are.equal("application/x-www-form-urlencoded", t.ctype)
  end)

  it("answers 500 without details when a handler fails, and keeps serving", function()
    local code, body = curl("http://127.0.0.1:" .. srv.port() .. "/boom")
    assert.are.equal(500, code)
    assert.is_nil(body:find("exploded", 1, true))
    assert.are.equal(200, (curl("http://127.0.0.1:" .. srv.port() .. "/json")))
  end)

  it("refuses headers over the limit with 431", function()
    local code = curl("http://127.0.0.1:" .. srv.port() .. "/json",
                      { "-H", "X-Big: " .. string.rep("a", 4000) })
    assert.are.equal(431, code)
  end)

  it("refuses a body over the limit with 413, by Content-Length and chunked", function()
    local big = string.rep("b", 5000)
    local code = curl("http://127.0.0.1:" .. srv.port() .. "/echo", { "--data-binary", big })
    assert.are.equal(413, code)
    code = curl("http://127.0.0.1:" .. srv.port() .. "/echo",
                { "-H", "Transfer-Encoding: chunked", "--data-binary", big })
    assert.are.equal(413, code)
    assert.are.equal(201, (curl("http://127.0.0.1:" .. srv.port() .. "/echo", { "--data", "small" })))
  end)

  it("refuses malformed requests with 400", function()
    local port = srv.port()
    assert.matches("^HTTP/1.1 400", raw(port, "GARBAGE\r\n\r\n"))
    assert.matches("^HTTP/1.1 400", raw(port, "GET /hello HTTP/1.1\r\nBad Header\r\n\r\n"))
    assert.matches("^HTTP/1.1 400", raw(port, "GET /hello HTTP/9.Z\r\n\r\n"))
    assert.matches("^HTTP/1.1 400", raw(port, "POST /echo HTTP/1.1\r\nContent-Length: zz\r\n\r\n"))
    -- and a good raw request still works
    assert.matches("^HTTP/1.1 200", raw(port, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))
  end)

  it("cuts off a client that sends its request too slowly (408) while others are served", function()
    local port = srv.port()
    local before = srv.stats().timeouts_total
    local p <close> = hold_open(port, "GET /hello HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: ")
    -- Served meanwhile:
    assert.are.equal(200, (curl("http://127.0.0.1:" .. port .. "/json")))
    local got = p:wait_output("HTTP/1.1 408", 30, { plain = true })
    assert.is_truthy(got)
    assert.are.equal(before + 1, srv.stats().timeouts_total)
  end)

  it("answers 503 beyond the connection limit and serves again once below it", function()
    local port = srv.port()
    -- Earlier tests' connections closed first (their lingering closes).
    wait_until(function() return srv.stats().open_connections == 0 end)
    -- Requests that wait for their answer hold their connections.
    local curls = {}
    for i = 1, 8 do
      curls[i] = vg.spawn(curl, "http://127.0.0.1:" .. port .. "/wait")
    end
    wait_until(function() return srv.stats().open_connections >= 8 end)
    local code, body = curl("http://127.0.0.1:" .. port .. "/json")
    assert.are.equal(503, code)
    assert.matches("too many connections", body)
    released:set()
    for _, t in ipairs(curls) do
      local c, b = t:join()
      assert.are.equal(200, c)
      assert.are.equal("released", b)
    end
    assert.are.equal(200, (curl("http://127.0.0.1:" .. port .. "/json")))
  end)

  it("raises listen_failed when the port is taken", function()
    local ok, err = pcall(http.serve, { port = srv.port(), routes = {} })
    assert.is_false(ok)
    assert.are.equal("listen_failed", err.code)
    assert.are.equal("EADDRINUSE", err.reason)
  end)

  it("parses listen addresses from the environment's form", function()
    assert.are.same({ "0.0.0.0", 8080 }, { http.parse_listen("8080") })
    assert.are.same({ "127.0.0.1", 9 }, { http.parse_listen("127.0.0.1:9") })
    assert.are.same({ "::1", 80 }, { http.parse_listen("[::1]:80") })
    assert.is_nil((http.parse_listen("http")))
    assert.is_nil((http.parse_listen("70000")))
  end)
end)

-- A server in its own process, to send it SIGTERM.
local SERVER = [[
  local vg = require "vg"
  local log = require "vg.log"
  local http = require "vg.http"
  local go = vg.event()
  vg.on_shutdown(function() if os.getenv("RELEASE_AT_SHUTDOWN") then go:set() end end)
  local srv = http.serve { port = 0, routes = {
    ["/slow"] = function()
      log.info("slow_started")
      go:wait(60, { interruptible = false })
      return 200, "finished in the grace"
    end,
  } }
  srv.task:join()
  log.info("server_task_ended")
]]

describe("vg.http at shutdown", function()
  after_each(function() host.cleanup() end)

  local function start(env)
    local p = host.spawn({ host.script(SERVER) }, { env = host.env(env) })
    local line = assert(host.wait_event(p, "http_listening"))
    assert.is_truthy(line)
    local port = tonumber(p:stdout():match('"event":"http_listening".-"port":(%d+)'))
    return p, port
  end

  it("closes idle connections, finishes requests in flight within the grace, and exits 0", function()
    local p <close>, port = start { RELEASE_AT_SHUTDOWN = "1", VG_SHUTDOWN_GRACE = "30" }
    local idle <close> = hold_open(port, "GET /slow HTTP/1.1\\r\\n")
    local inflight = vg.spawn(curl, "http://127.0.0.1:" .. port .. "/slow")
    assert(host.wait_event(p, "slow_started"), p:stdout())
    p:kill("TERM")
    local code, body = inflight:join()
    assert.are.equal(200, code)
    assert.are.equal("finished in the grace", body)
    -- The idle connection was closed without an answer.
    assert.is_truthy(idle:wait_output("closed", 30, { plain = true }))
    assert.are.equal("closed\n", idle:stdout())
    local res = p:wait(30)
    assert.are.equal(0, res.code)
    -- Nothing listens any more.
    local c = curl("http://127.0.0.1:" .. port .. "/slow")
    assert.are.equal(0, c or 0)
  end)

  it("answers 503 to a request still running when the grace ends, and exits 0", function()
    local p <close>, port = start { VG_SHUTDOWN_GRACE = "0.2" }
    local inflight = vg.spawn(curl, "http://127.0.0.1:" .. port .. "/slow")
    assert(host.wait_event(p, "slow_started"), p:stdout())
    p:kill("TERM")
    local code, body = inflight:join()
    assert.are.equal(503, code)
    assert.matches("shutting down", body)
    local res = p:wait(30)
    assert.are.equal(0, res.code)
    assert.is_truthy(p:stdout():find('"event":"server_task_ended"', 1, true))
  end)
end)
