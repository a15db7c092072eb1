-- vg.db prepares parameterised statements on the server once per
-- connection and reuses them; a new session starts with none. Against
-- TEST_DATABASE_URL.
local dbs = require "spec.support.db"
if not dbs.available() then
  describe("vg.db prepared statements", function() pending("TEST_DATABASE_URL is not set") end)
  return
end
local URL = dbs.url

local vg = require "vg"
local db = require "vg.db"

local new_pool = dbs.pool_maker("vgspec-prep")

local wait_until = dbs.wait_until

-- The statements this connection has prepared, by SQL text.
local function prepared(tx)
  local out = {}
  for _, r in ipairs(tx:query("select name, statement from pg_prepared_statements")) do
    out[r.statement] = r.name
  end
  return out
end

describe("db.query with parameters", function()
  local pool, app, admin
  before_each(function()
    pool, app = new_pool { pool_size = 1 }
    admin = new_pool { pool_size = 1 }
  end)
  after_each(function()
    pool:close(0)
    admin:close(0)
  end)

  local SQL = "select $1::int + 1 as v"

  it("prepares a statement once per connection and reuses it", function()
    for i = 1, 5 do assert.equal(i + 1, pool:query(SQL, i)[1].v) end
    assert.equal(1, pool:stats().prepared_total)
    pool:transaction(function(tx)
      assert.equal(11, tx:query(SQL, 10)[1].v)
      local names = prepared(tx)
      assert.is_string(names[SQL])
      assert.truthy(names[SQL]:match("^vg_s%d+$"))
      -- The listing itself has no parameters: never prepared.
      local n = 0
      for _ in pairs(names) do n = n + 1 end
      assert.equal(1, n)
    end)
    assert.equal(1, pool:stats().prepared_total)
    assert.equal(1, pool:stats().opened_total)
  end)

  it("prepares a parameter sent once as text and once as bytea as two statements", function()
    local sql = "select $1 as v"
    assert.equal("abc", pool:query(sql, "abc")[1].v)
    local bin = "\0\1\2\255"
    local v = pool:query("select $1 as v", db.bytea(bin))[1].v
    assert.equal(bin, v)
    assert.equal("abc", pool:query(sql, "abc")[1].v)
    assert.equal(2, pool:stats().prepared_total)
  end)

  it("reports an error in the statement as before and does not cache it", function()
    for _ = 1, 2 do
      local ok, err = pcall(pool.query, pool, "selec $1", 1)
      assert.is_false(ok)
      assert.equal("42601", err.sqlstate)
      assert.equal(1, err.position)
    end
    assert.equal(0, pool:stats().prepared_total)
    assert.equal(3, pool:query(SQL, 2)[1].v)
    assert.equal(1, pool:stats().prepared_total)
    assert.equal(1, pool:stats().opened_total)
  end)

  it("starts afresh on a new session after pg_terminate_backend", function()
    assert.equal(2, pool:query(SQL, 1)[1].v)
    assert.equal(1, pool:stats().prepared_total)
    local killed = admin:query("select pg_terminate_backend(pid) from pg_stat_activity "
      .. "where application_name = $1", app)
    assert.equal(1, #killed)
    assert.is_true(wait_until(function()
      return #admin:query("select pid from pg_stat_activity where application_name = $1",
        app) == 0
    end))
    assert.equal(3, pool:query(SQL, 2)[1].v)
    assert.equal(2, pool:stats().prepared_total) -- prepared again on the new session
    assert.equal(2, pool:stats().opened_total)
    pool:transaction(function(tx) assert.is_string(prepared(tx)[SQL]) end)
  end)

  it("prepares again after DISCARD ALL drops the session's statements", function()
    assert.equal(2, pool:query(SQL, 1)[1].v)
    pool:query("discard all")
    assert.equal(3, pool:query(SQL, 2)[1].v)
    assert.equal(2, pool:stats().prepared_total)
  end)

  it("keeps its statements when a query only mentions discard or deallocate", function()
    for i = 1, 3 do
      assert.equal(i + 1, pool:query(SQL, i)[1].v)
      pool:query("select 'discard all; deallocate all' as w /* DISCARD, DEALLOCATE */")
    end
    assert.equal(1, pool:stats().prepared_total)
    pool:transaction(function(tx)
      assert.equal(1, #tx:query("select 1 from pg_prepared_statements"))
    end)
  end)

  it("prepares again after DEALLOCATE ALL, also inside a multi-statement query", function()
    assert.equal(2, pool:query(SQL, 1)[1].v)
    pool:query("select 1; deallocate all; select 2")
    assert.equal(3, pool:query(SQL, 2)[1].v)
    assert.equal(2, pool:stats().prepared_total)
  end)

  it("keeps working when a statement's result type changes under it", function()
    local t = dbs.table_name("prep")
    pool:query("create table " .. t .. " (id int)")
    pool:query("insert into " .. t .. " values (1)")
    local sql = "select * from " .. t .. " where id = $1"
    assert.same({ id = 1 }, pool:query(sql, 1)[1])
    pool:query("alter table " .. t .. " add column name text default 'x'")
    -- The server refuses the old statement once (0A000); then it is prepared again.
    local ok, err = pcall(pool.query, pool, sql, 1)
    if not ok then assert.equal("0A000", err.sqlstate) end
    assert.same({ id = 1, name = "x" }, pool:query(sql, 1)[1])
    pool:query("drop table " .. t)
  end)

  it("sends every query unnamed with prepare = false (for a transaction-mode PgBouncer)", function()
    local plain = new_pool { pool_size = 1, prepare = false }
    for i = 1, 3 do assert.equal(i + 1, plain:query(SQL, i)[1].v) end
    assert.equal(0, plain:stats().prepared_total)
    plain:transaction(function(tx) assert.is_nil(next(prepared(tx))) end)
    plain:close(0)
  end)

  it("asks for generic plans only with generic_plans = true (the worker's pool)", function()
    local function mode(opts)
      local p = new_pool(opts)
      local v = p:query("select current_setting('plan_cache_mode') as m")[1].m
      p:close(0)
      return v
    end
    assert.equal("auto", mode { pool_size = 1 })
    assert.equal("force_generic_plan", mode { pool_size = 1, generic_plans = true })
    assert.equal("auto", mode { pool_size = 1, generic_plans = true, prepare = false })
  end)
end)
