-- make demo's database URL (issue 12): the real scripts/demo.sh, end to end,
-- in its quick form (VG_DEMO_PIPELINE=noop: five tasks with no steps, so a
-- run takes a few seconds). The demo starts its own throw-away PostgreSQL
-- (tests/pgtmp.sh) in a temp folder of the spec's, so whatever happens the
-- spec finds the cluster and stops it. Without VG_DEMO_KEEP_DB the demo
-- prints no URL and removes the cluster; with VG_DEMO_KEEP_DB=1 the printed
-- URL works after the demo has exited, and the printed command stops it.
local proc = require "vg.proc"
local host = require "spec.support.host"
local tdb = require "spec.support.db"

local function have(tool)
  local r = proc.run({ "sh", "-c", 'command -v "$0"', tool }, { timeout = 10 })
  return r.code == 0
end

-- A PostgreSQL server that tests/pgtmp.sh can start (found the way it
-- looks for one).
local function have_server()
  local r = proc.run({ "sh", "-c", [[
    [ -n "${PGTMP_BINDIR:-}" ] && exit 0
    for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && exit 0; done
    command -v initdb >/dev/null || command -v pg_config >/dev/null]] }, { timeout = 10 })
  return r.code == 0
end

-- Runs with the database specs (TEST_DATABASE_URL set), and needs a server
-- to start and the demo's psql and jq.
local describe_demo = (tdb.available() and have_server() and have("psql") and have("jq"))
  and describe or pending

local function output(r) return (r.stdout or "") .. (r.stderr or "") end

local function sh(script, ...)
  return proc.run({ "sh", "-c", script, "sh", ... }, { timeout = 90, cwd = host.root })
end

-- Can psql connect to url? (connect_timeout keeps a dead port quick.)
local function answers(url)
  local r = proc.run({ "psql", url, "-X", "-At", "-c", "SELECT count(*) FROM tasks" },
    { timeout = 30, env = { PGCONNECT_TIMEOUT = "5" } })
  return r.code == 0, r.stdout:gsub("%s+$", ""), r.stderr
end

describe_demo("scripts/demo.sh", function()
  local tmp -- the demo's TMPDIR: its cluster folder is made in here

  -- The cluster folders the demo made (vg-demo-pg.XXXXXX under TMPDIR).
  local function clusters()
    local r = sh('for d in "$1"/vg-demo-pg.*; do [ -e "$d" ] && echo "$d"; done; true', tmp)
    local list = {}
    for d in r.stdout:gmatch("[^\n]+") do list[#list + 1] = d end
    return list
  end

  local function demo(extra)
    local env = {
      PATH = os.getenv("PATH"),
      TMPDIR = tmp,
      VG_DEMO_PIPELINE = "noop",
      VG_DEMO_OUTPUT = tmp .. "/out",
      VG_DEMO_TIMEOUT = "60",
      VG_HOST_BIN = host.bin,
      PGTMP_FSYNC = "off",
      ASAN_OPTIONS = os.getenv("ASAN_OPTIONS"),
    }
    for k, v in pairs(extra or {}) do env[k] = v end
    -- No DATABASE_URL (clear_env): the demo starts its own cluster.
    return proc.run({ "sh", "scripts/demo.sh" },
      { env = env, clear_env = true, cwd = host.root, timeout = 120 })
  end

  -- The port the demo's cluster listened on, from pgtmp's lines in the log.
  local function port_in_log()
    local f = assert(io.open(tmp .. "/out/logs/postgres.log"))
    local text = f:read("a")
    f:close()
    return text:match("running in %S+ on 127%.0%.0%.1:(%d+)")
  end

  before_each(function()
    local r = proc.run({ "mktemp", "-d" }, { timeout = 10 })
    assert.equal(0, r.code, r.stderr)
    tmp = r.stdout:gsub("%s+$", "")
  end)

  -- Always: stop whatever cluster is left (a failed assertion included).
  after_each(function()
    for _, d in ipairs(clusters()) do sh('sh tests/pgtmp.sh stop "$1" >/dev/null 2>&1', d) end
    sh('rm -rf "$1"', tmp)
  end)

  it("prints no URL by default and removes its database at the end", function()
    local r = demo()
    local out = output(r)
    assert.equal(0, r.code, out)
    assert.matches("done: 5 noop tasks completed", out, 1, true)
    assert.is_nil(out:find("postgresql://", 1, true), "a URL was printed:\n" .. out)
    assert.is_nil(out:find("DATABASE_URL=", 1, true), out)
    assert.matches("removing the throw-away PostgreSQL", out, 1, true)
    -- Gone: no cluster folder, and nothing answers on its port.
    assert.same({}, clusters())
    local port = port_in_log()
    assert.is_not_nil(port, "no port in the demo's postgres.log")
    local ok = answers("postgresql://postgres@127.0.0.1:" .. port .. "/vg")
    assert.is_false(ok, "the demo's database still answers on port " .. port)
  end)

  it("with VG_DEMO_KEEP_DB=1 keeps it up after exit and prints the command that stops it", function()
    local r = demo { VG_DEMO_KEEP_DB = "1" }
    local out = output(r)
    assert.equal(0, r.code, out)
    local url = out:match("DATABASE_URL=(postgresql://%S+)")
    assert.is_not_nil(url, "no URL printed:\n" .. out)
    local stop = out:match("stop it with: ([^\n]+)")
    assert.is_not_nil(stop, "no stop command printed:\n" .. out)
    -- The demo has exited; its database is up and holds the demo's tasks.
    local ok, count, err = answers(url)
    assert.is_true(ok, "the printed URL does not answer: " .. tostring(err))
    assert.equal("5", count)
    assert.equal(1, #clusters())
    -- The printed command, run as printed from another folder, stops it.
    local s = proc.run({ "sh", "-c", stop }, { timeout = 90, cwd = "/" })
    assert.equal(0, s.code, output(s))
    assert.is_false((answers(url)), "the database still answers after: " .. stop)
    assert.same({}, clusters())
  end)
end)
