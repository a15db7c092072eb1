-- The pool against a real PostgreSQL (TEST_DATABASE_URL): it never blocks
-- the loop, keeps its limits as the server sees them, closes overflow
-- connections, times out waiters with a clear error, serves them in order,
-- pre-pings cheaply, costs nothing when idle, and closes cleanly.
local dbs = require "spec.support.db"
if not dbs.available() then
  describe("vg.db pool", function() pending("TEST_DATABASE_URL is not set") end)
  return
end
local URL = dbs.url

local vg = require "vg"
local db = require "vg.db"

local new_pool = dbs.pool_maker("vgspec-pool")

local function server_count(admin, app)
  return admin:query("select count(*)::int as n from pg_stat_activity "
    .. "where application_name = $1", app)[1].n
end

local wait_until = dbs.wait_until

-- Backends exit a moment after their client closed the connection.
local function server_count_drops_to(admin, app, n)
  return wait_until(function() return server_count(admin, app) <= n end, 5)
end

describe("the pool", function()
  local admin
  setup(function() admin = new_pool() end)
  teardown(function() admin:close(0) end)

  it("never blocks: timers and other queries go on during pg_sleep(1)", function()
    local pool = new_pool()
    local ticks, slow_done, quick_before_slow, ticks_before_slow = 0, false, nil, nil
    local slow = vg.spawn(function()
      pool:query("select pg_sleep(1)")
      slow_done = true
      ticks_before_slow = ticks
    end)
    local ticker = vg.spawn(function()
      while not slow_done do
        vg.sleep(0.05)
        ticks = ticks + 1
      end
    end)
    local quick = vg.spawn(function()
      vg.sleep(0)
      for _ = 1, 5 do pool:query("select 1") end
      quick_before_slow = not slow_done
    end)
    slow:join(); ticker:join(); quick:join()
    assert.is_true(quick_before_slow, "quick queries waited for the slow one")
    assert.is_true(ticks_before_slow >= 2, "the timer ticked " .. ticks_before_slow .. " times")
    pool:close(0)
  end)

  it("never holds more than size + overflow connections on the server (40 tasks, 10+5)", function()
    local pool, app = new_pool { pool_size = 10, max_overflow = 5, pool_timeout = 30 }
    local peak, running = 0, true
    local monitor = vg.spawn(function()
      while running do
        local n = server_count(admin, app)
        if n > peak then peak = n end
        vg.sleep(0.02)
      end
    end)
    local tasks = {}
    for i = 1, 40 do
      tasks[i] = vg.spawn(function() return pool:query("select pg_sleep(0.15), $1::int as i", i) end)
    end
    for i = 1, 40 do
      local rows = tasks[i]:join()
      assert.equal(i, rows[1].i)
    end
    running = false
    monitor:join()
    assert.is_true(peak <= 15, "the server saw " .. peak .. " connections")
    assert.is_true(peak >= 10, "expected the pool to grow, peak " .. peak)
    -- Overflow connections were closed as they came back.
    local s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(0, s.waiters)
    assert.is_true(s.open <= 10, "open " .. s.open)
    assert.is_true(s.opened_total <= 40)
    assert.is_true(server_count_drops_to(admin, app, 10))
    pool:close(0)
    assert.is_true(server_count_drops_to(admin, app, 0))
  end)

  it("closes overflow connections when they are returned", function()
    local pool, app = new_pool { pool_size = 2, max_overflow = 2 }
    local tasks = {}
    for i = 1, 4 do tasks[i] = vg.spawn(function() pool:query("select pg_sleep(0.2)") end) end
    vg.sleep(0.1)
    local busy = pool:stats()
    assert.equal(4, busy.open)
    assert.equal(2, busy.overflow)
    for i = 1, 4 do tasks[i]:join() end
    local s = pool:stats()
    assert.equal(2, s.open)
    assert.equal(2, s.idle)
    assert.equal(0, s.overflow)
    assert.equal(4, s.opened_total)
    assert.equal(2, s.closed_total)
    assert.is_true(server_count_drops_to(admin, app, 2))
    pool:close(0)
  end)

  it("fails a checkout that waits past pool_timeout with pool_timeout naming the limits", function()
    local pool = new_pool { pool_size = 1, max_overflow = 0, pool_timeout = 0.2 }
    local holding = false
    local holder = vg.spawn(function()
      pool:transaction(function() holding = true; vg.sleep(1) end)
    end)
    assert.is_true(wait_until(function() return holding end))
    local ok, err = pcall(pool.query, pool, "select 1")
    assert.is_false(ok)
    assert.equal("pool_timeout", err.code)
    assert.is_true(err.retriable)
    assert.matches("pool_size=1", err.message)
    assert.matches("max_overflow=0", err.message)
    assert.equal(0, pool:stats().waiters)
    holder:join()
    assert.equal(1, pool:query("select 1 as v")[1].v)
    pool:close(0)
  end)

  it("does not count opening a connection into a free slot against pool_timeout", function()
    local pool = new_pool { pool_size = 1, max_overflow = 0, pool_timeout = 0 }
    assert.equal(1, pool:query("select 1 as v")[1].v) -- connecting is not waiting
    local holding, release = false, false
    local holder = vg.spawn(function()
      pool:transaction(function()
        holding = true
        while not release do vg.sleep(0.01) end
      end)
    end)
    assert.is_true(wait_until(function() return holding end))
    local ok, err = pcall(pool.query, pool, "select 1")
    assert.is_false(ok)
    assert.equal("pool_timeout", err.code)
    release = true
    holder:join()
    pool:close(0)
  end)

  it("serves waiters first come, first served", function()
    local pool = new_pool { pool_size = 1, max_overflow = 0 }
    local order = {}
    local holding, release = false, false
    local holder = vg.spawn(function()
      pool:transaction(function()
        holding = true
        while not release do vg.sleep(0.01) end
      end)
    end)
    assert.is_true(wait_until(function() return holding end))
    local waiters = {}
    for i = 1, 6 do
      waiters[i] = vg.spawn(function()
        pool:query("select $1::int", i)
        order[#order + 1] = i
      end)
      vg.sleep(0.01) -- so they queue in this order
    end
    assert.equal(6, pool:stats().waiters)
    release = true
    holder:join()
    for i = 1, 6 do waiters[i]:join() end
    assert.same({ 1, 2, 3, 4, 5, 6 }, order)
    pool:close(0)
  end)

  it("pre-pings only connections idle for more than a second", function()
    local pool = new_pool { pool_size = 1, pre_ping = true }
    pool:query("select 1")
    for _ = 1, 5 do pool:query("select 1") end
    assert.equal(0, pool:stats().pings_total)
    vg.sleep(1.1)
    pool:query("select 1")
    assert.equal(1, pool:stats().pings_total)
    pool:close(0)
    local off = new_pool { pool_size = 1, pre_ping = false }
    off:query("select 1")
    vg.sleep(1.1)
    off:query("select 1")
    assert.equal(0, off:stats().pings_total)
    off:close(0)
  end)

  it("opens connections lazily", function()
    local pool, app = new_pool()
    vg.sleep(0.05)
    assert.equal(0, pool:stats().open)
    assert.equal(0, server_count(admin, app))
    pool:query("select 1")
    assert.equal(1, pool:stats().open)
    pool:close(0)
  end)

  it("reports its state in stats()", function()
    local pool = new_pool { pool_size = 4, max_overflow = 2 }
    local s = pool:stats()
    assert.same({ 4, 2, 0, 0, 0, 0, 0 },
      { s.size, s.max_overflow, s.open, s.idle, s.checked_out, s.waiters, s.overflow })
    local holding, release = false, false
    local conn_task = vg.spawn(function()
      pool:transaction(function()
        holding = true
        while not release do vg.sleep(0.01) end
      end)
    end)
    assert.is_true(wait_until(function() return holding end))
    s = pool:stats()
    assert.equal(1, s.checked_out)
    assert.equal(1, s.open)
    release = true
    conn_task:join()
    s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(1, s.idle)
    assert.is_false(s.closed)
    pool:close(0)
    assert.is_true(pool:stats().closed)
  end)
end)

describe("pool:close", function()
  it("waits for checked-out connections, then closes everything", function()
    local pool, app = new_pool { pool_size = 2 }
    local admin = new_pool()
    pool:query("select 1")
    local holding = false
    local holder = vg.spawn(function()
      return pool:transaction(function(tx)
        holding = true
        vg.sleep(0.3)
        return tx:query("select 5 as v")[1].v
      end)
    end)
    assert.is_true(wait_until(function() return holding end))
    assert.is_true(pool:close(5))
    assert.is_true(holder:done(), "close returned before the transaction gave its connection back")
    assert.equal(5, holder:join())
    assert.is_true(server_count_drops_to(admin, app, 0))
    local s = pool:stats()
    assert.equal(0, s.open)
    assert.is_true(s.closed)
    local ok, err = pcall(pool.query, pool, "select 1")
    assert.is_false(ok)
    assert.equal("pool_closed", err.code)
    admin:close(0)
  end)

  it("closes by force after the timeout; the holder's next query fails", function()
    local pool, app = new_pool { pool_size = 2 }
    local admin = new_pool()
    local holding = false
    local holder = vg.spawn(function()
      return pcall(pool.transaction, pool, function(tx)
        tx:query("select 1")
        holding = true
        vg.sleep(0.5)
        tx:query("select 2")
      end)
    end)
    assert.is_true(wait_until(function() return holding end))
    assert.is_false(pool:close(0.1))
    local ok, err = holder:join()
    assert.is_false(ok)
    assert.equal("connection_lost", err.code)
    assert.is_true(server_count_drops_to(admin, app, 0))
    admin:close(0)
  end)

  it("ends a query in flight when the close is forced", function()
    local pool = new_pool { pool_size = 1 }
    local q = vg.spawn(function() return pcall(pool.query, pool, "select pg_sleep(5)") end)
    assert.is_true(wait_until(function() return pool:stats().checked_out == 1 end))
    vg.sleep(0.1)
    assert.is_false(pool:close(0.1))
    local ok, err = q:join()
    assert.is_false(ok)
    assert.equal("connection_lost", err.code)
  end)
end)

describe("db.wait_ready", function()
  it("returns true at once when the server answers", function()
    local pool = new_pool()
    assert.is_true(pool:wait_ready(5))
    assert.equal(1, pool:stats().idle) -- the probe connection is kept
    assert.equal(0, pool:stats().failed_total)
    pool:close(0)
  end)

  it("raises database_unreachable when nothing listens, after retrying", function()
    local pool = new_pool { url = "postgresql://vg:secret@127.0.0.1:1/nothing",
      connect_timeout = 1 }
    local ok, err = pcall(pool.wait_ready, pool, 0.7)
    assert.is_false(ok)
    assert.equal("database_unreachable", err.code)
    assert.equal("refused", err.reason)
    assert.matches("connection refused", err.message)
    assert.not_matches("secret", err.message)
    assert.is_true(pool:stats().failed_total >= 2, "expected retries")
    pool:close(0)
  end)

  it("waits its whole timeout before giving up, with a last try at its end", function()
    -- With back-off 0.2, 0.4, 0.8, 1.6 s, a timeout of 2 s used to end at the
    -- third try (1.4 s in), as the next back-off did not fit.
    local pool = new_pool { url = "postgresql://127.0.0.1:1/nothing", connect_timeout = 1 }
    local t0 = vg.now()
    local ok, err = pcall(pool.wait_ready, pool, 2)
    assert.is_false(ok)
    assert.equal("database_unreachable", err.code)
    assert.is_true(vg.now() - t0 >= 2, "gave up before its timeout")
    assert.is_true(pool:stats().failed_total >= 5, "expected a last try at the end")
    pool:close(0)
  end)

  it("explains an unknown database and an unknown user, and stops at the first attempt", function()
    -- A timeout long enough that a retry would certainly come first: these
    -- failures are permanent.
    local base = URL:gsub("/[^/?]*$", "")
    local p1 = new_pool { url = base .. "/no_such_db_xyz" }
    local ok, err = pcall(p1.wait_ready, p1, 60)
    assert.is_false(ok)
    assert.equal("database_unreachable", err.code)
    assert.equal("no_database", err.reason)
    assert.matches('database "no_such_db_xyz" does not exist', err.message)
    assert.equal(1, p1:stats().failed_total)
    p1:close(0)
    local p2 = new_pool { url = URL:gsub("//[^@]*@", "//no_such_user_xyz@") }
    ok, err = pcall(p2.wait_ready, p2, 60)
    assert.is_false(ok)
    assert.equal("no_role", err.reason)
    assert.equal(1, p2:stats().failed_total)
    p2:close(0)
  end)

  it("rejects a bad URL with a readable message", function()
    local ok, err = pcall(db.pool, { url = "postgresql://h/db?nonsense_option=1" })
    assert.is_false(ok)
    assert.equal("configuration_invalid", err.code)
    assert.matches("DATABASE_URL is not valid", err.message)
    local ok2, err2 = pcall(db.pool, { url = "mysql://h/db" })
    assert.is_false(ok2)
    assert.equal("configuration_invalid", err2.code)
    local p = new_pool { url = "postgresql://127.0.0.1:notaport/db" }
    local ok3, err3 = pcall(p.wait_ready, p, 0.3)
    assert.is_false(ok3)
    assert.equal("bad_url", err3.reason)
    p:close(0)
  end)
end)
