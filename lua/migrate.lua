-- vg-host lua/migrate.lua: apply the numbered migrations in sql/ in order,
-- each once, recorded in schema_migrations. Runs under a transaction-level
-- advisory lock, so two copies started at once (two deploys) apply each
-- migration exactly once: the second waits, then finds nothing to do.
--
--   vg-host lua/migrate.lua [--dir SQL_DIR] [--status]
local db = require "vg.db"
local log = require "vg.log"
local config = require "vg.config"
local lfs = require "lfs"
local admin = require "vg.admin"

-- Two-int4 advisory lock key ("vg", 1): never collides with one-bigint keys
-- that other software on the same database may use.
local LOCK_A, LOCK_B = 0x7667, 1

local function default_dir()
  local env = os.getenv("VG_SQL_DIR")
  if env and env ~= "" then return env end
  local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
  return here .. "/../sql"
end

local function parse_args(argv)
  local opts = { dir = default_dir() }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--dir" then
      opts.dir = argv[i + 1]; i = i + 1
    elseif a == "--status" then
      opts.status = true
    else
      io.stderr:write("usage: vg-host lua/migrate.lua [--dir SQL_DIR] [--status]\n")
      os.exit(2)
    end
    i = i + 1
  end
  return opts
end

-- The migration files, sorted by their number: NNN_name.sql.
local function list_migrations(dir)
  local found = {}
  local ok, iter, state = pcall(lfs.dir, dir)
  if not ok then error("cannot read the migrations folder " .. dir .. ": " .. tostring(iter), 0) end
  for name in iter, state do
    local num = name:match("^(%d+)_[%w_%-]+%.sql$")
    if num then found[#found + 1] = { version = name:gsub("%.sql$", ""), num = tonumber(num), file = dir .. "/" .. name } end
  end
  table.sort(found, function(a, b) return a.num < b.num end)
  return found
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then error("cannot read migration " .. path .. ": " .. tostring(err), 0) end
  local text = f:read("a")
  f:close()
  return text
end

local function main(...)
  local opts = parse_args({ ... })
  config.load { "DATABASE_URL" }
  db.wait_ready()
  local migrations = list_migrations(opts.dir)
  local applied_now = {}
  db.transaction(function(tx)
    tx:query("SELECT pg_advisory_xact_lock($1, $2)", LOCK_A, LOCK_B)
    tx:query([[CREATE TABLE IF NOT EXISTS schema_migrations (
                version    text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())]])
    local done = {}
    for _, row in ipairs(tx:query("SELECT version FROM schema_migrations")) do
      done[row.version] = true
    end
    if opts.status then
      for _, m in ipairs(migrations) do
        print(string.format("%-40s %s", m.version, done[m.version] and "applied" or "pending"))
      end
      return
    end
    for _, m in ipairs(migrations) do
      if not done[m.version] then
        local t0 = require("vg").now()
        tx:query(read_file(m.file))
        tx:query("INSERT INTO schema_migrations (version) VALUES ($1)", m.version)
        applied_now[#applied_now + 1] = m.version
        log.info("migration_applied", { version = m.version,
          duration_ms = math.floor((require("vg").now() - t0) * 1000) })
      end
    end
  end)
  log.info("migrations_done", { applied = #applied_now, total = #migrations })
  db.close()
end

-- Every failure says what went wrong: a critical log line (the deploy
-- log reads stdout) and a line on stderr, then exit 1.
local ok, err = pcall(main, ...)
if not ok then
  local why = admin.explain(err)
  if not (type(err) == "table" and err.code == "configuration_invalid") then
    log.critical("migrate_failed", { error = why })
  end
  admin.fail("migrate", err)
end
