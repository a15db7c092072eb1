-- What the admin scripts (migrate, enqueue, status, review) share: one way
-- to end with a message that says what went wrong, on stderr, and the
-- check that the database has been migrated.
--
--   admin.run(name, main, ...)   runs main(...); on an error prints
--                                "<name>: <what went wrong>" on stderr and
--                                exits 1 (never silently)
--   admin.explain(err) -> text   that message, for any error object
--   admin.schema_problem() -> nil or text   the database lacks the tables
--                                (or has migrations pending): "run
--                                lua/migrate.lua"
--   admin.usage(name, text)      a function that reports a usage error
--   admin.only_help(name, args, help [, known])   for the service scripts
--                                (worker, web): --help, and no stray
--                                arguments
local M = {}

M.MIGRATE_HINT = "run `vg-host lua/migrate.lua` first (the pre-deploy command)"

-- SQLSTATEs a missing or older schema produces: undefined table, column,
-- function, object.
local SCHEMA_STATES = { ["42P01"] = true, ["42703"] = true, ["42883"] = true, ["42704"] = true }

function M.explain(err)
  if type(err) ~= "table" then return tostring(err) end
  if err.code == "configuration_invalid" and type(err.problems) == "table" then
    local list = {}
    for i, p in ipairs(err.problems) do list[i] = tostring(p) end
    return "invalid configuration: " .. table.concat(list, "; ")
  end
  if err.sqlstate and SCHEMA_STATES[err.sqlstate] then
    return string.format("the database is not migrated (%s): %s",
                         tostring(err.message), M.MIGRATE_HINT)
  end
  if err.code == "database_unreachable" or err.code == "connect_failed" then
    return "cannot reach the database: " .. tostring(err.message)
  end
  return tostring(err)
end

function M.fail(name, err)
  io.stderr:write(name, ": ", M.explain(err), "\n")
  io.stderr:flush()
  os.exit(1)
end

function M.run(name, main, ...)
  local res = table.pack(pcall(main, ...))
  if not res[1] then M.fail(name, res[2]) end
  return table.unpack(res, 2, res.n)
end

-- The numbered migrations shipped with this tree (sql/NNN_name.sql), or nil
-- when the folder is not found.
local function shipped_versions()
  local ok, lfs = pcall(require, "lfs")
  if not ok then return nil end
  local dir = os.getenv("VG_SQL_DIR")
  if not dir or dir == "" then
    local here = package.searchpath("vg.admin", package.path)
    local luadir = here and here:match("^(.*)/vg/admin%.lua$")
    if not luadir then return nil end
    dir = luadir .. "/../sql"
  end
  if lfs.attributes(dir, "mode") ~= "directory" then return nil end
  local versions = {}
  for name in lfs.dir(dir) do
    local v = name:match("^(%d+_[%w_%-]+)%.sql$")
    if v then versions[#versions + 1] = v end
  end
  return versions
end

-- nil when the schema is there and up to date, else what is wrong.
-- admin.usage(name, text) -> usage(msg): prints "name: msg" (when given)
-- and the usage text on stderr, and exits 2 (a usage error).
function M.usage(name, text)
  return function(msg)
    if msg then io.stderr:write(name, ": ", msg, "\n") end
    io.stderr:write(text, "\n")
    os.exit(2)
  end
end

-- admin.only_help(name, args, help [, known]): for the scripts that take no
-- arguments but --help (lua/<name>.lua): -h or --help prints help on stdout
-- and exits 0; any other first argument, unless known[arg], is a usage
-- error (exit 2). Run before the script starts anything.
function M.only_help(name, args, help, known)
  local a = args[1]
  if a == "--help" or a == "-h" then
    io.write(help)
    os.exit(0)
  end
  if a ~= nil and not (known and known[a]) then
    io.stderr:write(name, ": unexpected argument '", a, "' (vg-host lua/", name, ".lua --help)\n")
    os.exit(2)
  end
end

function M.schema_problem()
  local db = require "vg.db"
  local row = db.query([[SELECT to_regclass('schema_migrations') IS NOT NULL AS migrations,
                                to_regclass('tasks') IS NOT NULL AS tasks]])[1]
  if not row.migrations or not row.tasks then
    return "the database has no vg-host tables yet: " .. M.MIGRATE_HINT
  end
  local versions = shipped_versions()
  if not versions then return nil end
  local applied = {}
  for _, r in ipairs(db.query("SELECT version FROM schema_migrations")) do applied[r.version] = true end
  local pending = {}
  for _, v in ipairs(versions) do
    if not applied[v] then pending[#pending + 1] = v end
  end
  table.sort(pending)
  if #pending > 0 then
    return string.format("the database schema is out of date (%s not applied): %s",
                         table.concat(pending, ", "), M.MIGRATE_HINT)
  end
  return nil
end

return M
