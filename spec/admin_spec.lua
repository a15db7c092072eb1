-- The admin commands as a user runs them: migrate (also two at once),
-- enqueue and status.
local host = require "spec.support.host"
local tdb = require "spec.support.db"
local cjson = require "cjson"

local describe_db = tdb.available() and describe or pending

-- URL of another database on the same server.
local function other_db_url(name)
  return (tdb.url:gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1"))
end

describe_db("lua/migrate.lua", function()
  local db
  setup(function() db = tdb.setup() end)

  it("applies every migration exactly once when two copies run at once", function()
    db.query("DROP DATABASE IF EXISTS vg_migrate_twice")
    db.query("CREATE DATABASE vg_migrate_twice")
    local env = host.env { DATABASE_URL = other_db_url("vg_migrate_twice") }
    local a = host.spawn({ "lua/migrate.lua" }, { env = env })
    local b = host.spawn({ "lua/migrate.lua" }, { env = env })
    local ra, rb = a:wait(60), b:wait(60)
    assert.equal(0, ra.code, ra.stdout .. ra.stderr)
    assert.equal(0, rb.code, rb.stdout .. rb.stderr)
    local applied = 0
    for _, r in ipairs { ra, rb } do
      local l = host.find(host.lines(r.stdout), "migrations_done")
      applied = applied + l.applied
    end
    -- one of them applied everything, the other found nothing to do
    local files = 0
    for name in require("lfs").dir("sql") do
      if name:match("^%d+_.*%.sql$") then files = files + 1 end
    end
    assert.equal(files, applied)
    local again = host.run({ "lua/migrate.lua" }, { env = env })
    assert.equal(0, again.code)
    assert.equal(0, host.find(host.lines(again.stdout), "migrations_done").applied)
    db.query("DROP DATABASE vg_migrate_twice")
  end)
end)

describe_db("lua/enqueue.lua and lua/status.lua", function()
  local db
  setup(function() db = tdb.setup() end)
  before_each(function() tdb.reset() end)

  local function enqueue(args)
    local argv = { "lua/enqueue.lua" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return host.run(argv, { env = host.env { DATABASE_URL = tdb.url } })
  end

  it("adds a task and prints only its id", function()
    local r = enqueue { "--create-channel", "--channel", "adm-1", "--priority", "high",
                        "--pipeline", "noop", "--max-attempts", "5", '{"title":"x"}' }
    assert.equal(0, r.code, r.stderr)
    local id = tonumber(r.stdout:match("^(%d+)\n$"))
    assert.is_not_nil(id, "stdout was: " .. r.stdout)
    local row = db.query("SELECT channel_id, pipeline, priority, max_attempts, payload, status FROM tasks WHERE id = $1", id)[1]
    assert.equal("adm-1", row.channel_id)
    assert.equal("noop", row.pipeline)
    assert.equal("high", row.priority)
    assert.equal(5, row.max_attempts)
    assert.same({ title = "x" }, row.payload)
    assert.equal("pending", row.status)
  end)

  it("is quiet at info: the id on stdout, nothing on stderr; its log lines go to stderr", function()
    local r = enqueue { "--create-channel", "--channel", "adm-q", "--pipeline", "noop", "{}" }
    assert.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:match("^%d+\n$"), "stdout was: " .. r.stdout)
    assert.equal("", r.stderr)
    -- At debug the pool's normal close shows, on stderr, stdout still only the id.
    local argv = { "lua/enqueue.lua", "--channel", "adm-q", "--pipeline", "noop", "{}" }
    local d = host.run(argv, { env = host.env { DATABASE_URL = tdb.url, LOG_LEVEL = "debug" } })
    assert.equal(0, d.code, d.stderr)
    assert.truthy(d.stdout:match("^%d+\n$"), "stdout was: " .. d.stdout)
    local closed = host.find(host.lines(d.stderr), "database_connections_closed")
    assert.is_not_nil(closed, "stderr was: " .. d.stderr)
    assert.equal("debug", closed.level)
    assert.is_false(closed.forced)
  end)

  it("delays a task with --run-at +SECONDS", function()
    local r = enqueue { "--create-channel", "--channel", "adm-1", "--run-at", "+120", "{}" }
    assert.equal(0, r.code, r.stderr)
    local id = tonumber(r.stdout:match("^(%d+)"))
    local s = db.query("SELECT extract(epoch FROM run_at - now())::float8 AS s FROM tasks WHERE id = $1", id)[1].s
    assert.is_true(s > 100 and s <= 120)
  end)

  it("rejects bad input with exit 2 and writes nothing", function()
    for _, args in ipairs {
      { "--channel", "Bad Channel", "{}" },
      { "--channel", "ok", "--priority", "urgent", "{}" },
      { "--channel", "ok", "not json" },
      { "--channel", "ok", "[1,2]" },
      { "{}" },
      { "--channel", "ok", "--max-attempts", "0", "{}" },
    } do
      local r = enqueue(args)
      assert.equal(2, r.code, table.concat(args, " "))
      assert.is_true(#r.stderr > 0)
    end
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks"))
  end)

  it("names an unknown channel", function()
    local r = enqueue { "--channel", "nobody", "{}" }
    assert.equal(1, r.code)
    assert.matches("no channel with that id", r.stderr)
  end)

  it("status --json reports counts, workers, failures and costs", function()
    tdb.channel("adm-1")
    tdb.channel("adm-2")
    tdb.enqueue("adm-1", 3)
    local failed = tdb.enqueue("adm-2", 1)[1]
    db.query("UPDATE tasks SET status = 'failed', last_error = 'broken' WHERE id = $1", failed)
    db.query([[INSERT INTO workers (worker_id, instance, status, tasks_done) VALUES ('w9', 'h:1', 'running', 7)]])
    -- Done is counted from the tasks the worker claimed, not the row's
    -- heartbeat counter.
    local done = tdb.enqueue("adm-1", 1)[1]
    db.query([[UPDATE tasks SET status = 'completed', claimed_by = 'w9', claimed_instance = 'h:1'
                WHERE id = $1]], done)
    db.query([[INSERT INTO video_costs (task_id, channel_id, step, component, cost_usd)
               VALUES ($1, 'adm-2', 'asset_generation', 'image_generation', 0.12)]], failed)
    local r = host.run({ "lua/status.lua", "--json" }, { env = host.env { DATABASE_URL = tdb.url } })
    assert.equal(0, r.code, r.stderr)
    local s = cjson.decode(r.stdout)
    local by = {}
    for _, x in ipairs(s.by_status) do by[x.status] = x.n end
    assert.equal(3, by.pending)
    assert.equal(1, by.failed)
    assert.equal("broken", s.recent_failures[1].last_error)
    assert.equal("w9", s.workers[1].worker_id)
    assert.equal(1, s.workers[1].tasks_done)
    assert.equal("0.1200", s.cost_by_channel[1].cost_usd)
    assert.is_not_nil(s.oldest_pending)
    local text = host.run({ "lua/status.lua" }, { env = host.env { DATABASE_URL = tdb.url } })
    assert.equal(0, text.code)
    assert.matches("tasks by status", text.stdout)
    assert.matches("w9", text.stdout)
  end)
end)
