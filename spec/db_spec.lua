-- vg.db against a real PostgreSQL (TEST_DATABASE_URL): queries, parameters,
-- typed results, error objects and transactions.
local dbs = require "spec.support.db"
if not dbs.available() then
  describe("vg.db", function() pending("TEST_DATABASE_URL is not set") end)
  return
end
local URL = dbs.url

local vg = require "vg"
local db = require "vg.db"

local new_pool = dbs.pool_maker("vgspec-db")

local table_name = dbs.table_name

local wait_until = dbs.wait_until

describe("db.query", function()
  local pool
  before_each(function() pool = new_pool() end)
  after_each(function() pool:close(0) end)

  it("raises where it cannot wait, and takes no connection", function()
    local small = new_pool { pool_size = 1, max_overflow = 0, pool_timeout = 2 }
    for _ = 1, 2 do
      local ok, err = pcall(table.sort, { 2, 1 }, function(a, b)
        small:query("select 1")
        return a < b
      end)
      assert.is_false(ok)
      assert.matches("cannot wait here", tostring(err))
    end
    assert.equal(0, small:stats().checked_out)
    assert.equal(1, small:query("select 1 as n")[1].n)
    small:close(0)
  end)

  it("returns rows keyed by column name and the affected-row count", function()
    local t = table_name("rows")
    pool:query("create table " .. t .. " (id int primary key, name text)")
    local _, n = pool:query("insert into " .. t .. " values (1, 'a'), (2, 'b'), (3, 'c')")
    assert.equal(3, n)
    local rows, count = pool:query("select id, name from " .. t .. " order by id")
    assert.equal(3, #rows)
    assert.equal(3, count)
    assert.same({ id = 2, name = "b" }, rows[2])
    local _, updated = pool:query("update " .. t .. " set name = 'x' where id > $1", 1)
    assert.equal(2, updated)
    local none, zero = pool:query("select * from " .. t .. " where id < 0")
    assert.same({}, none)
    assert.equal(0, zero)
    pool:query("drop table " .. t)
  end)

  it("runs several statements in one call when there are no parameters", function()
    local rows = pool:query("create temp table multi (a int); insert into multi values (5); "
      .. "select a from multi")
    assert.same({ { a = 5 } }, rows)
  end)

  it("module functions use the default pool from DATABASE_URL settings", function()
    db.configure { url = URL, application_name = "vgspec-default" }
    local rows = db.query("select current_setting('application_name') as app")
    assert.equal("vgspec-default", rows[1].app)
    assert.is_true(db.stats().opened_total >= 1)
    assert.is_true(db.close(1))
    assert.has_error(function() db.query("select 1") end)
    db.configure { url = URL } -- a fresh default pool for whoever comes next
    assert.equal(1, db.query("select 1 as one")[1].one)
  end)
end)

describe("parameters and typed results", function()
  local pool
  setup(function() pool = new_pool() end)
  teardown(function() pool:close(0) end)

  it("gives integers as Lua integers", function()
    local r = pool:query("select 1::int2 as a, 2::int4 as b, 9223372036854775807::int8 as c, "
      .. "$1::int8 as d", -42)[1]
    assert.equal(1, r.a)
    assert.equal(2, r.b)
    assert.equal(math.maxinteger, r.c)
    assert.equal(-42, r.d)
    assert.equal("integer", math.type(r.a))
    assert.equal("integer", math.type(r.c))
    -- integer parameters at both ends of the range, and zero
    local e = pool:query("select $1::int8 as lo, $2::int8 as hi, $3::int8 as z, $1::text as t",
                         math.mininteger, math.maxinteger, 0)[1]
    assert.same({ lo = math.mininteger, hi = math.maxinteger, z = 0, t = "-9223372036854775808" }, e)
  end)

  it("gives floats as numbers, NaN and infinities included", function()
    local r = pool:query("select 1.5::float4 as a, $1::float8 as b, 'NaN'::float8 as n, "
      .. "'Infinity'::float8 as i, $2::float8 as m", 0.1, -math.huge)[1]
    assert.equal(1.5, r.a)
    assert.equal(0.1, r.b)
    assert.is_true(r.n ~= r.n)
    assert.equal(math.huge, r.i)
    assert.equal(-math.huge, r.m)
  end)

  it("gives numeric as a string, without losing precision", function()
    local r = pool:query("select 12345678901234567890.123456789::numeric as n, "
      .. "$1::numeric as p", "0.1000000000000000000001")[1]
    assert.equal("12345678901234567890.123456789", r.n)
    assert.equal("0.1000000000000000000001", r.p)
  end)

  it("round-trips booleans", function()
    local r = pool:query("select $1::bool as t, $2::bool as f, true as lit", true, false)[1]
    assert.is_true(r.t)
    assert.is_false(r.f)
    assert.is_true(r.lit)
  end)

  it("decodes json and jsonb, and sends tables as JSON", function()
    local r = pool:query("select $1::jsonb as j, $2::json as k, 'null'::jsonb as jn, "
      .. "'[1, 2.5, \"x\", null]'::jsonb as arr",
      { name = "clip", n = 3, tags = { "a", "b" }, nested = { ok = true } }, { 1, 2, 3 })[1]
    assert.same({ name = "clip", n = 3, tags = { "a", "b" }, nested = { ok = true } }, r.j)
    assert.equal("integer", math.type(r.j.n))
    assert.same({ 1, 2, 3 }, r.k)
    assert.equal(db.null, r.jn)
    assert.equal(1, r.arr[1])
    assert.equal(2.5, r.arr[2])
    assert.equal("x", r.arr[3])
    assert.equal(db.null, r.arr[4])
    assert.equal("clip", pool:query("select $1::jsonb ->> 'name' as v", { name = "clip" })[1].v)
  end)

  it("gives text, varchar, uuid as strings", function()
    local r = pool:query("select $1::text as t, $2::varchar as v, "
      .. "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, 'héllo ✓' as utf", "plain", "vc")[1]
    assert.equal("plain", r.t)
    assert.equal("vc", r.v)
    assert.equal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.u)
    assert.equal("héllo ✓", r.utf)
  end)

  it("gives timestamps and dates as ISO strings in UTC", function()
    local r = pool:query("select '2024-03-05 06:07:08.5+02'::timestamptz as tz, "
      .. "'2024-03-05 06:07:08'::timestamp as ts, '2024-03-05'::date as d, "
      .. "$1::timestamptz as p", "2024-01-02T03:04:05Z")[1]
    assert.equal("2024-03-05 04:07:08.5+00", r.tz)
    assert.equal("2024-03-05 06:07:08", r.ts)
    assert.equal("2024-03-05", r.d)
    assert.equal("2024-01-02 03:04:05+00", r.p)
  end)

  it("round-trips bytea, zero bytes included", function()
    local bin = "a\0b\255\1\0"
    local r = pool:query("select $1::bytea as b, length($1::bytea) as n, "
      .. "'\\x00ff'::bytea as lit, $2::bytea as marked", db.bytea(bin), db.bytea("\\x41"))[1]
    assert.equal(bin, r.b)
    assert.equal(6, r.n)
    assert.equal("\0\255", r.lit)
    assert.equal("\\x41", r.marked) -- db.bytea: the bytes as they are, no escapes
  end)

  it("maps nil and db.null to NULL, and NULL to db.null", function()
    local r = pool:query("select $1::text is null as a, $2::int is null as b, "
      .. "null::text as n, $3::text as after", nil, db.null, "z")[1]
    assert.is_true(r.a)
    assert.is_true(r.b)
    assert.equal(db.null, r.n)
    assert.equal("z", r.after)
  end)

  it("takes parameters only through $n, so quotes in values are data", function()
    local evil = "'); drop table nothing; --"
    assert.equal(evil, pool:query("select $1::text as v", evil)[1].v)
  end)

  it("refuses a parameter it cannot send", function()
    assert.has_error(function() pool:query("select $1", function() end) end)
  end)

  it("refuses, before it takes a connection, what it cannot store exactly", function()
    local small = new_pool { pool_size = 1, max_overflow = 0, pool_timeout = 2 }
    local deep, ok_deep = {}, {}
    local d = deep
    for _ = 1, 70 do d[1] = {}; d = d[1] end
    d = ok_deep
    for _ = 1, 60 do d[1] = {}; d = d[1] end
    local cycle = { a = 1 }
    cycle.self = cycle
    local cases = {
      { "x\0y", "zero byte.*db%.bytea" },
      { "caf\233", "not valid UTF%-8" },
      { function() end, "cannot send a function" },
      { io.stdout, "cannot send a userdata" },
      { { step = "a", run = function() end }, "holds a function" },
      { { out = io.stdout }, "holds a userdata" },
      { cycle, "contains itself" },
      { deep, "deeper than 64" },
      { { 1, 0 / 0 }, "NaN" },
      { { [1] = 1, [100] = 2 }, "sparse" },
      { { [true] = 1 }, "key of type boolean" },
      { { "x\0" }, "zero byte" },
      { { db.bytea("b") }, "db%.bytea inside a table" },
    }
    for i, c in ipairs(cases) do
      local ok, err = pcall(small.query, small, "select $1::text as v", c[1])
      assert.is_false(ok, "case " .. i .. " was accepted")
      assert.matches("parameter %$1", tostring(err))
      assert.matches(c[2], tostring(err))
    end
    -- A table's __tostring is not its data, and it never runs here.
    local loud = setmetatable({ a = 1 }, { __tostring = function() error("no") end })
    for _ = 1, 2 do
      assert.same({ a = 1 }, small:query("select $1::jsonb as v", loud)[1].v)
    end
    assert.equal(0, small:stats().checked_out)
    -- 60 nested arrays around an empty table are within the limit.
    assert.equal(60, small:query(
      "select length($1::text) - length(replace($1::text, '[', '')) as n", ok_deep)[1].n)
    small:close(0)
  end)

  it("refuses COPY as unsupported, not as a retriable lost connection", function()
    local small = new_pool { pool_size = 1, max_overflow = 0 }
    local t = table_name("copy")
    small:query("create table " .. t .. " (id int)")
    for _, sql in ipairs { "copy (select 1) to stdout", "copy " .. t .. " from stdin" } do
      local ok, err = pcall(small.query, small, sql)
      assert.is_false(ok)
      assert.equal("unsupported", err.code)
      assert.is_false(err.retriable)
      assert.matches("COPY is not supported", err.message)
    end
    assert.equal(0, small:query("select count(*)::int as n from " .. t)[1].n)
    small:query("drop table " .. t)
    small:close(0)
  end)

  it("sends an array's holes as JSON null", function()
    local r = pool:query("select $1::jsonb as v", { 1, nil, 3, [5] = "e" })[1]
    assert.same({ 1, db.null, 3, db.null, "e" }, r.v)
    assert.equal("[1, null, 3, null, \"e\"]",
      pool:query("select $1::jsonb::text as v", { 1, nil, 3, [5] = "e" })[1].v)
    assert.equal('{"1": "a", "k": true}',
      pool:query("select $1::jsonb::text as v", { [1] = "a", k = true })[1].v)
  end)
end)

describe("error objects", function()
  local pool
  setup(function() pool = new_pool() end)
  teardown(function() pool:close(0) end)

  it("carry sqlstate 23505, detail and constraint on a unique violation", function()
    local t = table_name("uniq")
    pool:query("create table " .. t .. " (id int constraint " .. t .. "_pk primary key)")
    pool:query("insert into " .. t .. " values (1)")
    local ok, err = pcall(pool.query, pool, "insert into " .. t .. " values ($1)", 1)
    pool:query("drop table " .. t)
    assert.is_false(ok)
    assert.equal("sql_error", err.code)
    assert.equal("23505", err.sqlstate)
    assert.is_false(err.retriable)
    assert.matches("duplicate key", err.message)
    assert.matches("Key %(id%)=%(1%) already exists", err.detail)
    assert.equal(t .. "_pk", err.constraint)
    assert.matches("^sql_error: duplicate key", tostring(err))
  end)

  it("carry sqlstate 42601 and the position on a syntax error", function()
    local ok, err = pcall(pool.query, pool, "selec 1")
    assert.is_false(ok)
    assert.equal("42601", err.sqlstate)
    assert.equal(1, err.position)
    assert.is_false(err.retriable)
  end)

  it("carry the hint when the server gives one", function()
    local ok, err = pcall(pool.query, pool, "select 1 + 'x'::text")
    assert.is_false(ok)
    assert.equal("42883", err.sqlstate)
    assert.is_string(err.hint)
  end)

  it("leave the connection usable after an error", function()
    for _ = 1, 3 do pcall(pool.query, pool, "select 1/0") end
    assert.equal(1, pool:query("select 1 as v")[1].v)
    local s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(1, s.open)
  end)

  it("mark serialization failures retriable (40001)", function()
    local t = table_name("ser")
    pool:query("create table " .. t .. " (v int)")
    local go, ready = false, 0
    local function writer(v)
      return pcall(pool.transaction, pool, function(tx)
        tx:query("set transaction isolation level serializable")
        tx:query("select sum(v) from " .. t)
        tx:query("insert into " .. t .. " values ($1)", v)
        ready = ready + 1
        while not go do vg.sleep(0.01) end
      end)
    end
    local a = vg.spawn(writer, 1)
    local b = vg.spawn(writer, 2)
    assert.is_true(wait_until(function() return ready == 2 end))
    go = true
    local ok1, e1 = a:join()
    local ok2, e2 = b:join()
    pool:query("drop table " .. t)
    assert.is_true(ok1 ~= ok2, "exactly one of the two must fail")
    local err = ok1 and e2 or e1
    assert.equal("40001", err.sqlstate)
    assert.is_true(err.retriable)
  end)
end)

describe("db.transaction", function()
  local pool, app, admin, t
  before_each(function()
    pool, app = new_pool { pool_size = 3, max_overflow = 0 }
    admin = new_pool()
    t = table_name("tx")
    admin:query("create table " .. t .. " (id int primary key, who text)")
  end)
  after_each(function()
    admin:query("drop table if exists " .. t)
    pool:close(0)
    admin:close(0)
  end)

  local function count()
    return admin:query("select count(*)::int as n from " .. t)[1].n
  end

  it("commits and returns the function's results", function()
    local a, b = pool:transaction(function(tx, x)
      tx:query("insert into " .. t .. " values (1, $1)", x)
      local rows = tx:query("select count(*)::int as n from " .. t)
      return rows[1].n, x
    end, "me")
    assert.equal(1, a)
    assert.equal("me", b)
    assert.equal(1, count())
    assert.equal(0, pool:stats().checked_out)
  end)

  it("works through db.transaction on the default pool", function()
    db.configure { url = URL }
    local n = db.transaction(function(tx)
      tx:query("insert into " .. t .. " values (7, 'default')")
      return 7
    end)
    assert.equal(7, n)
    assert.equal(1, count())
  end)

  it("rolls back and re-raises the same error when the function fails", function()
    local boom = { code = "boom" }
    local ok, err = pcall(pool.transaction, pool, function(tx)
      tx:query("insert into " .. t .. " values (1, 'x')")
      error(boom)
    end)
    assert.is_false(ok)
    assert.equal(boom, err)
    assert.equal(0, count())
    local s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(1, s.idle)
  end)

  it("rolls back on an SQL error and raises it", function()
    local ok, err = pcall(pool.transaction, pool, function(tx)
      tx:query("insert into " .. t .. " values (1, 'x')")
      tx:query("insert into " .. t .. " values (1, 'dup')")
    end)
    assert.is_false(ok)
    assert.equal("23505", err.sqlstate)
    assert.equal(0, count())
  end)

  it("refuses to commit when a statement failed and its error was caught", function()
    local ok, err = pcall(pool.transaction, pool, function(tx)
      tx:query("insert into " .. t .. " values (1, 'x')")
      pcall(tx.query, tx, "select 1/0")
      return "done"
    end)
    assert.is_false(ok)
    assert.equal("transaction_aborted", err.code)
    assert.equal(0, count())
  end)

  it("rolls back when the task is cancelled while the function sleeps", function()
    local inserted = false
    local task = vg.spawn(function()
      pool:transaction(function(tx)
        tx:query("insert into " .. t .. " values (1, 'cancelled')")
        inserted = true
        vg.sleep(10)
      end)
    end)
    assert.is_true(wait_until(function() return inserted end))
    task:cancel()
    assert.has_error(function() task:join() end)
    assert.equal("cancelled", task:status())
    assert.equal(0, count())
    local s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(1, s.open)
    local rows = admin:query("select count(*)::int as n from pg_stat_activity "
      .. "where application_name = $1 and state like 'idle in transaction%'", app)
    assert.equal(0, rows[1].n)
  end)

  it("rolls back when the task is cancelled in the middle of a query", function()
    local task = vg.spawn(function()
      pool:transaction(function(tx)
        tx:query("insert into " .. t .. " values (1, 'mid-query')")
        tx:query("select pg_sleep(30)")
      end)
    end)
    assert.is_true(wait_until(function()
      return admin:query("select count(*)::int as n from pg_stat_activity where "
        .. "application_name = $1 and query like '%pg_sleep(30)%' and state = 'active'",
        app)[1].n == 1
    end))
    task:cancel()
    assert.has_error(function() task:join() end)
    -- The pool cancels the query on the server, rolls the connection back
    -- and reuses it: nobody is handed a connection in a transaction.
    assert.is_true(wait_until(function() return pool:stats().resetting == 0 end))
    assert.is_true(wait_until(function()
      return admin:query("select count(*)::int as n from pg_stat_activity where "
        .. "application_name = $1 and query like '%pg_sleep(30)%' and state = 'active'",
        app)[1].n == 0
    end), "the server-side query was not cancelled")
    local s = pool:stats()
    assert.equal(0, s.checked_out)
    assert.equal(1, s.idle)
    assert.equal(1, s.opened_total)
    assert.equal(0, s.closed_total)
    assert.equal(1, pool:query("select 1 as v")[1].v)
    assert.equal(0, count())
    local busy = admin:query("select count(*)::int as n from pg_stat_activity "
      .. "where application_name = $1 and query like '%pg_sleep(30)%' and state = 'active'", app)
    assert.equal(0, busy[1].n)
  end)

  it("runs concurrent transactions on separate connections", function()
    local tasks = {}
    for i = 1, 9 do
      tasks[i] = vg.spawn(function()
        return pool:transaction(function(tx)
          tx:query("insert into " .. t .. " values ($1, 'task')", i)
          vg.sleep(0.05)
          return tx:query("select count(*)::int as n from " .. t .. " where id = $1", i)[1].n
        end)
      end)
    end
    for i = 1, 9 do assert.equal(1, tasks[i]:join()) end
    assert.equal(9, count())
    local s = pool:stats()
    assert.equal(3, s.open)
    assert.equal(0, s.checked_out)
  end)

  it("makes tx unusable once the transaction is over", function()
    local saved
    pool:transaction(function(tx) saved = tx end)
    local ok, err = pcall(saved.query, saved, "select 1")
    assert.is_false(ok)
    assert.equal("transaction_finished", err.code)
  end)
end)
