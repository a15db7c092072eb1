-- vg-host lua/web.lua: the status service (a Railway service of its own).
--
--   /          live status: queue depth, workers, running tasks, failures, costs
--   /review    tasks at a review gate, with approve / reject (with a reason)
--   /metrics   Prometheus text for the whole queue, read from the database
--   /healthz   200 while the database answers, else 503 with the reason
--
-- Listens on VG_HTTP_HOST:PORT (0.0.0.0:8080 by default). Users come from
-- VG_WEB_USERS (README: The status service); without users the pages are
-- read-only.
--
--   vg-host lua/web.lua --hash-password NAME   reads a password on stdin and
--                                              prints a VG_WEB_USERS entry
local args = { ... }

require("vg.admin").only_help("web", args, "usage: vg-host lua/web.lua [--hash-password NAME]\n"
  .. "Serves the status page, review screen and queue metrics until SIGTERM;\n"
  .. "configuration comes from the environment (README: The status service).\n",
  { ["--hash-password"] = true })

local vg = require "vg"
local log = require "vg.log"
local config = require "vg.config"
local web = require "vg.web"

if args[1] == "--hash-password" then
  local name = args[2]
  if not name or not name:match("^[%w._@-]+$") then
    io.stderr:write("web: --hash-password needs a NAME of letters, digits, . _ @ -\n")
    os.exit(2)
  end
  local password = io.read("l")
  if not password or password == "" then
    io.stderr:write("web: give the password on stdin\n")
    os.exit(2)
  end
  io.write(web.hash_password(name, password), "\n")
  os.exit(0)
end

local cfg = config.load { "DATABASE_URL" }
local users, n_or_problem = web.parse_users(cfg.VG_WEB_USERS)
if not users then config.fail { n_or_problem } end

local service = web.new {
  users = users, workspace = cfg.VG_WORKSPACE, top_channels = cfg.VG_METRICS_TOP_CHANNELS,
  heartbeat = cfg.VG_HEARTBEAT_INTERVAL,
}
require("vg.db").configure { pool_size = 4, max_overflow = 2, pool_timeout = 5, application_name = "vg-host web" }
local server = require("vg.http").serve {
  host = cfg.VG_HTTP_HOST, port = cfg.PORT, routes = service:routes(),
  max_body_bytes = 16384, max_connections = 128,
}
log.info("web_started", { port = server.port(), users = n_or_problem,
                          read_only = n_or_problem == 0, workspace = cfg.VG_WORKSPACE })
server.task:join()
require("vg.db").close()
