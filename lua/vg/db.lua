-- require "vg.db": PostgreSQL for scripts, over the pool in C (vg.db.core).
--
--   db.query(sql, ...)          -> rows, affected
--       $1..$n parameters only, encoded strictly (README, db.query): nil and
--       db.null -> NULL, booleans, integers, floats, strings -> text (valid
--       UTF-8, no zero byte), db.bytea(s) -> bytea, tables -> JSON text
--       (array holes -> null); anything it cannot store exactly raises
--       before a connection is taken. rows is an array of tables keyed by column name; affected
--       is the row count of the command (INSERT/UPDATE/DELETE/SELECT...).
--       With no parameters, sql may hold several statements (migrations);
--       rows and affected are then those of the last one.
--   db.transaction(fn, ...)     -> fn's results. fn(tx, ...) runs on one
--       connection between BEGIN and COMMIT, tx:query(sql, ...) as
--       db.query. An error or cancellation in fn rolls back and re-raises;
--       the connection always goes back to the pool.
--   db.listen(channel [, opts]), db.unlisten([channel])  -> true once the
--       server confirmed it. LISTEN runs on one dedicated connection outside
--       the pool, which reconnects (back-off 0.2 s doubling to 5 s) and
--       subscribes again on its own. opts.on_connect = sql or
--       {sql, param, ...}: a statement run first on every new LISTEN
--       connection (e.g. a session setting); if it fails on the first
--       connection, db.listen raises its error; after a reconnection the
--       connection is dropped and made again (with back-off) until it
--       succeeds, so the session is never used without it.
--   db.wait_notification([timeout]) -> {channel=, payload=, pid=} or nil
--       (nil on timeout, on shutdown, and after the LISTEN connection was
--       re-made, when notifications may have been missed)
--   db.connect({wait = true, timeout = s}) / db.wait_ready([timeout])
--       -> true once the server answers, false if shutdown came first;
--       raises database_unreachable after VG_DB_CONNECT_TIMEOUT
--   db.stats()                  -> {size, max_overflow, open, connecting,
--       idle, checked_out, resetting, overflow, waiters, opened_total,
--       closed_total, failed_total, pings_total, prepared_total, closed}
--   db.close([timeout])         -> true, or false when connections still
--       checked out after timeout (default VG_SHUTDOWN_GRACE) were closed
--   db.configure(opts)          settings of the default pool (url, pool_size,
--       max_overflow, pool_timeout, pre_ping, prepare, connect_timeout,
--       application_name, generic_plans: prepared statements get generic
--       plans, for a fixed set of statements run many times, as the
--       worker's); the next use opens it with them
--   db.pool(opts)               -> a separate pool with the same methods
--       (pool:query, pool:transaction, pool:listen, ..., pool:close)
--   db.null, db.bytea(s)
--
-- Errors are error objects (see vg.err): code ("sql_error",
-- "connection_lost", "pool_timeout", "connect_failed", "pool_closed",
-- "database_unreachable", "transaction_aborted"), message, retriable, and for
-- SQL errors sqlstate, detail, hint, constraint, table, column, position.
local core = require "vg.db.core"
local vg = require "vg"
local log = require "vg.log"

local M = {
  null = core.null,
  bytea = core.bytea,
  configure = core.configure,
}

local Pool = core.Pool

-- ---- transactions -------------------------------------------------------

local Tx = {}
Tx.__index = Tx
Tx.__name = "vg.db.Transaction"

-- The connection of a transaction, only while it runs.
local tx_conn = setmetatable({}, { __mode = "k" })

function Tx:query(sql, ...)
  local conn = tx_conn[self]
  if not conn then
    error(core.error("transaction_finished", false,
      "this transaction is over; tx:query works only inside its function"), 2)
  end
  return conn:query(sql, ...)
end

local function rollback(conn)
  local st = conn:tx_status()
  if st == "intrans" or st == "inerror" then
    pcall(conn.query, conn, "ROLLBACK")
  end
end

function Pool:transaction(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument to transaction (a function expected, got " .. type(fn) .. ")", 2)
  end
  local conn = self:acquire()
  local ok, err = pcall(conn.query, conn, "BEGIN")
  if not ok then
    conn:release()
    error(err, 0)
  end
  local tx = setmetatable({}, Tx)
  tx_conn[tx] = conn
  local res = table.pack(pcall(fn, tx, ...))
  tx_conn[tx] = nil
  if not res[1] then
    rollback(conn)
    conn:release()
    error(res[2], 0)
  end
  if conn:tx_status() == "inerror" then
    -- fn caught an error from one of its statements: PostgreSQL would turn
    -- COMMIT into ROLLBACK silently; say so instead.
    rollback(conn)
    conn:release()
    error(core.error("transaction_aborted", false,
      "a statement in the transaction failed (its error was caught inside the "
        .. "transaction function), so the transaction was rolled back"), 0)
  end
  local cok, cerr = pcall(conn.query, conn, "COMMIT")
  conn:release()
  if not cok then error(cerr, 0) end
  return table.unpack(res, 2, res.n)
end

-- ---- waiting for the server at start-up -------------------------------

-- Failures that no retry mends: stop at once. A server that is starting up
-- or shutting down is not among them.
local PERMANENT = { bad_url = true, auth = true, no_database = true, no_role = true }

local function unreachable(pool, timeout, why, reason)
  local err = core.error("database_unreachable", false,
    ("could not connect to the database at %s within %.14g s: %s"):format(
      pool:describe(), timeout, why or "timed out"))
  err.host, err.reason = pool:describe(), reason
  return err
end

-- pool:wait_ready([timeout]) -> true once the server answers, false when
-- shutdown came first; raises database_unreachable at once on a permanent
-- failure, else after timeout (VG_DB_CONNECT_TIMEOUT), retrying with the
-- LISTEN connection's back-off.
function Pool:wait_ready(timeout)
  timeout = timeout or core.config_num("VG_DB_CONNECT_TIMEOUT")
  local s = self:stats()
  if s.idle > 0 or s.checked_out > 0 then return true end -- it answered moments ago
  local deadline, backoff, attempt, why, reason = vg.now() + timeout, core.backoff_first, 0
  while not vg.shutdown_requested() do
    attempt = attempt + 1
    local ok, human, kind, detail = self:probe(math.max(deadline - vg.now(), 0.001))
    if ok then
      log.info("database_connected", { host = self:describe(), attempts = attempt })
      return true
    end
    if kind ~= "timeout" or not why then why, reason = human, kind end
    local left = deadline - vg.now()
    if kind ~= "timeout" then
      log.warning("database_connect_failed", { host = self:describe(), attempt = attempt,
        reason = kind, error = human, detail = detail,
        retry_in = (left > 0 and not PERMANENT[kind]) and math.min(backoff, left) or 0 })
    end
    -- The whole timeout is waited: the last try comes at its end.
    if PERMANENT[kind] or left <= 0.001 then error(unreachable(self, timeout, why, reason), 2) end
    if not vg.sleep(math.min(backoff, left)) then return false end
    backoff = math.min(backoff * 2, core.backoff_max)
  end
  return false
end

-- ---- the default pool -----------------------------------------------------

local function default() return core.default() end

function M.query(sql, ...) return default():query(sql, ...) end
function M.transaction(fn, ...) return default():transaction(fn, ...) end
function M.listen(channel, opts) return default():listen(channel, opts) end
function M.unlisten(channel) return default():unlisten(channel) end
function M.wait_notification(timeout) return default():wait_notification(timeout) end
function M.stats() return default():stats() end
function M.close(timeout)
  local pool = core.default(false)
  if not pool then return true end
  return pool:close(timeout)
end
function M.wait_ready(timeout) return default():wait_ready(timeout) end

function M.connect(opts)
  opts = opts or {}
  local pool = default()
  if opts.wait == false then return true end
  return pool:wait_ready(opts.timeout)
end

function M.pool(opts) return core.new_pool(opts or {}) end

return M
