-- What a pipeline step gets besides the task (DESIGN section 7): its
-- channel, its workspace folder, the channel's credentials, and helpers to
-- run step commands and record costs. lua/worker.lua passes
-- steps.options(cfg) to consumer.new:
--
--   ctx.channel            the channels row (id, name, credentials_encrypted,
--                          is_active, review_gates), loaded once per task
--   ctx.workspace          the task's folder, VG_WORKSPACE/<channel>/<task>
--   ctx.credentials()      the channel's decrypted credentials (a string),
--                          or nil when it has none
--   ctx.run(argv, opts)    proc.run in the workspace with the step
--                          environment (below); opts as proc.run's, opts.env
--                          added to the step environment
--   ctx.command(step)      run the configured command of a step and return
--                          its outputs table (see "Step commands")
--   ctx.cost(component, usd [, details])  record a video_costs row (raises
--                                         pipeline.LEASE_LOST once the
--                                         task's lease is lost)
--
-- Step environment: VG_TASK_ID, VG_CHANNEL_ID, VG_CHANNEL_NAME, VG_STEP,
-- VG_PAYLOAD_FILE (a file holding the payload as JSON, any size),
-- VG_PAYLOAD (the same JSON, only when it is at most 64 KiB: the
-- environment shares argv's limit) and, when the channel has credentials,
-- VG_CHANNEL_CREDENTIALS. The host's own secrets (FERNET_KEY, DATABASE_URL)
-- are removed: a step command has no business with them. Credentials are
-- never logged; a command's stderr is quoted in errors, so commands must
-- not print them (scripts/README.md).
--
-- Step commands (scripts/README.md has the contract):
--   VG_STEP_<STEP>          the command for a step, e.g.
--                           VG_STEP_VIDEO_GENERATION="/opt/prod/bin/gen-video --fast";
--                           split on blanks into argv, with no quoting and no
--                           shell: for arguments with blanks, point it at a
--                           wrapper script. A relative program path with a
--                           "/" is taken relative to the worker's folder.
--   default                 sh <scripts>/steps/<step>.sh, where <scripts> is
--                           VG_SCRIPTS_DIR, else the scripts/ folder next to
--                           the lua/ folder this module was loaded from (by
--                           name, then through links), else ./scripts
--   VG_STEP_TIMEOUT_<STEP>  a duration: seconds, or 500ms, 30s, 10m, 1h (default: video_generation 600,
--                           asset_generation and video_assembly 300,
--                           narration_generation 180, others 120)
-- <STEP> is the step name in upper case (video_generation -> VIDEO_GENERATION).
--
-- A command's result: exit 0 and a last stdout line
-- {"outputs": {...}, "costs": [{"component": ..., "cost_usd": ...}]};
-- the costs go to video_costs and the outputs are returned (and
-- checkpointed by the pipeline). Exit 65, or a command that cannot start,
-- fails the task (pipeline.fatal); a timeout, exit 75, a signal or any
-- other exit code is retried (pipeline.transient), with the tail of
-- stderr in the error.
local db = require "vg.db"
local log = require "vg.log"
local proc = require "vg.proc"
local cjson = require "cjson"
local lfs = require "lfs"
local pipeline = require "vg.pipeline"
local config = require "vg.config"
local workspace = require "vg.workspace"

local M = {}

M.DEFAULT_TIMEOUTS = {
  asset_generation = 300,
  composite_creation = 120,
  video_generation = 600,
  narration_generation = 180,
  sound_effects_generation = 120,
  video_assembly = 300,
}
M.DEFAULT_TIMEOUT = 300       -- steps not listed above
M.STDERR_TAIL = 800           -- bytes of stderr quoted in an error
M.MAX_OUTPUT = 1024 * 1024    -- bytes of stdout/stderr kept per command
M.PAYLOAD_ENV_MAX = 64 * 1024 -- VG_PAYLOAD is set only for payloads up to this size
M.PAYLOAD_FILE = ".vg-payload.json" -- in the task's workspace: VG_PAYLOAD_FILE

local EX_DATAERR, EX_TEMPFAIL = 65, 75

-- "video_generation" -> "VIDEO_GENERATION"
local function env_suffix(step) return (step:upper():gsub("[^%w]", "_")) end

-- A variable from env (a table standing in for the environment, as in
-- config.check; for tests and embedding) or else the process environment.
local function getenv(name, env)
  local v
  if env and env[name] ~= nil then v = env[name] else v = os.getenv(name) end
  if v == nil or v == false then return nil end
  v = tostring(v)
  if v:match("^%s*$") then return nil end
  return v
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return assert(lfs.currentdir()) .. "/" .. path:gsub("^%./", "")
end

-- The scripts/ folder of the tree this module was loaded from. The lua/
-- folder's parent is taken by name, not through links, so a deployment
-- that links lua/ to an installed tree (the Docker image: /app/lua ->
-- /opt/vg-host/share/vg-host/lua, /app/scripts) still finds its scripts.
function M.scripts_dir(env)
  local dir = getenv("VG_SCRIPTS_DIR", env)
  if dir then return absolute(dir) end
  local here = package.searchpath("vg.steps", package.path)
  local luadir = here and here:match("^(.*)/vg/steps%.lua$") or "lua"
  local tree = luadir:match("^(.*)/[^/]+$") or (luadir:sub(1, 1) == "/" and "/" or ".")
  local candidates = { tree .. "/scripts" }
  -- The installed layout when the lexical parent has none: follow links.
  local ok, real = pcall(workspace.realpath, luadir .. "/..")
  if ok then candidates[#candidates + 1] = real .. "/scripts" end
  -- Last: the worker's own folder (the Docker image's WORKDIR /app).
  candidates[#candidates + 1] = "./scripts"
  for _, c in ipairs(candidates) do
    if lfs.attributes(c .. "/steps", "mode") == "directory" then return absolute(c) end
  end
  return absolute(candidates[1])
end

-- The argv of a step's command (a new table each call).
function M.command_for(step, env)
  local override = getenv("VG_STEP_" .. env_suffix(step), env)
  if override then
    local argv = {}
    for word in override:gmatch("%S+") do argv[#argv + 1] = word end
    if argv[1]:find("/", 1, true) then argv[1] = absolute(argv[1]) end
    return argv
  end
  return { "sh", M.scripts_dir(env) .. "/steps/" .. step .. ".sh" }
end

-- A step's timeout in seconds: VG_STEP_TIMEOUT_<STEP> (a duration with
-- or without a unit: 90, 500ms, 30s, 10m, 1h), else its default.
function M.timeout_for(step, env)
  local name = "VG_STEP_TIMEOUT_" .. env_suffix(step)
  local v = getenv(name, env)
  if v then
    local n = config.duration(v)
    if not n or n <= 0 then
      error(pipeline.fatal(string.format("%s must be a positive duration (500ms, 30s, 10m, 1h); got %q", name, v)), 0)
    end
    return n
  end
  return M.DEFAULT_TIMEOUTS[step] or M.DEFAULT_TIMEOUT
end

-- Is path a regular file we may execute?
local function executable(path)
  if lfs.attributes(path, "mode") ~= "file" then return false end
  local perms = lfs.attributes(path, "permissions") or ""
  return perms:find("x", 1, true) ~= nil
end

-- The program of a command, looked up as execvp does (PATH for a bare
-- name); nil when not found.
local function find_program(prog, env)
  if prog:find("/", 1, true) then return lfs.attributes(prog) and prog or nil end
  local path = getenv("PATH", env) or "/usr/local/bin:/usr/bin:/bin"
  for dir in (path .. ":"):gmatch("([^:]*):") do
    local full = (dir == "" and "." or dir) .. "/" .. prog
    if lfs.attributes(full) then return full end
  end
  return nil
end

-- steps.check(pipes [, env]) -> problems (a list, empty when all is well).
-- For every step of every pipeline that runs a command (a step table with
-- `command`, as the video pipeline's have): its command's program exists
-- and is executable, a default step script exists, its timeout is a
-- positive duration; and every VG_STEP_<NAME> set names such a step (a
-- typo would otherwise be ignored). Nothing is run.
function M.check(pipes, env)
  local problems, known = {}, {}
  local function add(fmt, ...) problems[#problems + 1] = string.format(fmt, ...) end
  local names = {}
  for pname in pairs(pipes or {}) do names[#names + 1] = pname end
  table.sort(names)
  for _, pname in ipairs(names) do
    for _, st in ipairs(pipes[pname].steps or {}) do
      local step = type(st.command) == "string" and st.command or (st.command and st.name)
      if step and not known[env_suffix(step)] then
        known[env_suffix(step)] = true
        local var = "VG_STEP_" .. env_suffix(step)
        local argv = M.command_for(step, env)
        if getenv(var, env) then
          local full = find_program(argv[1], env)
          if not full then
            add("%s: %s does not exist%s", var, argv[1],
                argv[1]:find("/", 1, true) and "" or " in PATH")
          elseif not executable(full) then
            add("%s: %s is not an executable file", var, full)
          end
        elseif lfs.attributes(argv[2], "mode") ~= "file" then
          add("the default command of step %s, %s, does not exist (set VG_SCRIPTS_DIR to the folder holding steps/, or %s)",
              step, argv[2], var)
        end
        local ok, err = pcall(M.timeout_for, step, env)
        if not ok then add("%s", type(err) == "table" and err.message or tostring(err)) end
      end
    end
  end
  -- VG_STEP_<NAME> for no known step (from env, then the process environment).
  local seen = {}
  local function unknown(name)
    local suffix = name:match("^VG_STEP_TIMEOUT_(.+)$") or name:match("^VG_STEP_(.+)$")
    if suffix and not known[suffix] and not seen[name] then
      seen[name] = true
      add("%s names no step of the pipelines (known: %s)", name, (function()
        local k = {}
        for n in pairs(known) do k[#k + 1] = n end
        table.sort(k)
        return #k > 0 and table.concat(k, ", ") or "none"
      end)())
    end
  end
  for k, v in pairs(env or {}) do
    if type(k) == "string" and v and v ~= "" then unknown(k) end
  end
  if not env then
    for name, v in pairs(config.environ("VG_STEP_")) do
      if v ~= "" then unknown(name) end
    end
  end
  return problems
end

-- steps.config_check(values) -> problems: for config.load's
-- required.check, so the step problems join the one configuration_invalid
-- line of the worker's start-up: loads the pipelines module
-- (values.VG_PIPELINES) and runs steps.check on it.
function M.config_check(values)
  values = values or {}
  local ok, pipes = pcall(pipeline.load, values.VG_PIPELINES or "pipelines")
  if not ok then return { tostring(pipes) } end
  return M.check(pipes)
end

-- steps.require_ready(cfg): the start-up check of a worker: loads the
-- pipelines module (cfg.VG_PIPELINES) and checks its steps' commands;
-- any problem is reported in one configuration_invalid line and raised
-- (the worker exits 1 before it claims anything).
function M.require_ready(cfg, env)
  cfg = cfg or {}
  local ok, pipes = pcall(pipeline.load, cfg.VG_PIPELINES or "pipelines")
  local problems
  if not ok then problems = { tostring(pipes) } else problems = M.check(pipes, env) end
  if #problems > 0 then config.fail(problems) end
end

-- The last len bytes of s, starting at a line break when there is one.
local function tail(s, len)
  s = (s or ""):gsub("%s+$", "")
  if #s <= len then return s end
  s = s:sub(-len)
  return "..." .. (s:match("^[^\n]*\n(.*)$") or s)
end

-- The last non-blank line of a command's stdout, decoded.
local function result_line(stdout)
  local last
  for line in (stdout or ""):gmatch("[^\n]+") do
    if line:match("%S") then last = line end
  end
  if not last then return nil, "printed nothing on stdout" end
  local ok, obj = pcall(cjson.decode, last)
  if not ok or type(obj) ~= "table" then
    return nil, "its last stdout line is not a JSON object: " .. last:sub(1, 200)
  end
  return obj
end

-- A short name of a command for log lines: the program, or the script
-- run by sh (never its arguments).
local function command_name(argv)
  local prog = argv[1]
  if (prog == "sh" or prog:match("/sh$")) and argv[2] then prog = argv[2] end
  return prog:match("[^/]*$")
end

local CHANNEL_SQL = [[
SELECT id, name, credentials_encrypted, is_active, review_gates
  FROM channels WHERE id = $1]]

-- Written only while this run's lease holds ($7: the task's lease token):
-- a run that lost its task records no money.
M.COST_SQL = [[
INSERT INTO video_costs (task_id, channel_id, step, component, cost_usd, details)
SELECT $1, $2, $3, $4, $5::numeric, $6::jsonb
  FROM tasks
 WHERE id = $1 AND lease_token = $7 AND status IN ('claimed', 'processing')]]

-- The channel row of a task, loaded once and kept on the task table (the
-- same table for every step of one run).
local function channel_of(task)
  if task._vg_channel == nil then
    local row = db.query(CHANNEL_SQL, task.channel_id)[1]
    if not row then
      error(pipeline.fatal(string.format("channel %q does not exist", tostring(task.channel_id))), 0)
    end
    task._vg_channel = row
  end
  return task._vg_channel
end

local function payload_json(payload)
  local ok, text = pcall(cjson.encode, payload)
  if not ok then error(pipeline.fatal("payload cannot be encoded as JSON: " .. tostring(text)), 0) end
  return text
end

-- The payload as JSON in a file of the task's workspace (written once per
-- run of the task): any size the database holds reaches the step.
local function payload_file(task, dir)
  if task._vg_payload_file == nil then
    local text = payload_json(task.payload)
    local path = dir .. "/" .. M.PAYLOAD_FILE
    local f, err = io.open(path, "wb")
    if not f then error(pipeline.transient("cannot write the payload file: " .. tostring(err)), 0) end
    local ok, werr = f:write(text)
    local cok, cerr = f:close()
    if not ok or not cok then
      error(pipeline.transient("cannot write the payload file: " .. tostring(werr or cerr)), 0)
    end
    task._vg_payload_text, task._vg_payload_file = text, path
  end
  return task._vg_payload_text, task._vg_payload_file
end

-- steps.options(cfg [, opts]) -> the opts table for consumer.new. cfg: the
-- values of config.load (VG_WORKSPACE, VG_REVIEW_GATES, FERNET_KEY);
-- opts.env: a table consulted before the process environment for VG_STEP_*,
-- VG_STEP_TIMEOUT_* and VG_SCRIPTS_DIR (tests, embedding).
--
-- Called without opts, as lua/worker.lua calls it before the worker claims
-- anything, it first checks every step command (steps.require_ready): a
-- missing or non-executable program, a missing default script or a bad
-- timeout stops the worker with one configuration_invalid line instead of
-- failing tasks after their paid steps. opts.check = true / false forces
-- or skips that check.
function M.options(cfg, opts)
  cfg = cfg or {}
  local check = opts == nil
  if opts and opts.check ~= nil then check = opts.check end
  if check then M.require_ready(cfg, opts and opts.env) end
  local env_over = opts and opts.env
  local root = cfg.VG_WORKSPACE or "./workspace"
  local global_gates = cfg.VG_REVIEW_GATES ~= false
  local fernet_obj -- made on first use, with FERNET_KEY

  local function decrypt(channel)
    local token = channel.credentials_encrypted
    if token == nil or token == db.null or token == "" then return nil end
    if not fernet_obj then fernet_obj = require("vg.fernet").new(cfg.FERNET_KEY) end
    local ok, plain = pcall(fernet_obj.decrypt, fernet_obj, token)
    if not ok then
      -- Never the token or the key in the message: only the reason.
      local why = type(plain) == "table" and plain.message or tostring(plain)
      error(pipeline.fatal(string.format(
        "the credentials of channel %s cannot be decrypted (%s); is FERNET_KEY the key they were encrypted with?",
        channel.id, why)), 0)
    end
    return plain
  end

  -- The task's folder, made on first use.
  local function task_dir(task)
    if task._vg_workspace == nil then
      task._vg_workspace = workspace.task_dir(root, task.channel_id, task.id)
    end
    return task._vg_workspace
  end

  local function context(ctx, task, step)
    local step_name = type(step) == "table" and step.name or tostring(step)
    local channel = channel_of(task)
    ctx.channel = channel
    ctx.workspace = task_dir(task)

    function ctx.credentials() return decrypt(channel) end

    function ctx.cost(component, usd, details)
      if type(component) ~= "string" or component == "" then
        error(pipeline.fatal("a cost needs a component name"), 0)
      end
      usd = tonumber(usd)
      if not usd or usd ~= usd or usd < 0 or usd == math.huge then
        error(pipeline.fatal(string.format("cost of %s must be a non-negative number", component)), 0)
      end
      local _, n = db.query(M.COST_SQL, task.id, task.channel_id, step_name, component,
                            string.format("%.6f", usd), cjson.encode(details or {}),
                            task.lease_token)
      if n == 0 then error(pipeline.LEASE_LOST, 0) end
    end

    function ctx.run(argv, opts)
      local o = {}
      for k, v in pairs(opts or {}) do o[k] = v end
      local text, file = payload_file(task, ctx.workspace)
      local env = {
        VG_TASK_ID = tostring(task.id),
        VG_CHANNEL_ID = task.channel_id,
        VG_CHANNEL_NAME = channel.name ~= db.null and channel.name or "",
        VG_STEP = step_name,
        VG_PAYLOAD_FILE = file,
        -- The environment shares argv's limit (about 128 KiB per string):
        -- larger payloads come only through the file.
        VG_PAYLOAD = #text <= M.PAYLOAD_ENV_MAX and text or false,
        VG_CHANNEL_CREDENTIALS = decrypt(channel) or false,
        FERNET_KEY = false,
        DATABASE_URL = false,
      }
      for k, v in pairs(o.env or {}) do env[k] = v end
      o.env = env
      o.cwd = o.cwd or ctx.workspace
      o.max_output = o.max_output or M.MAX_OUTPUT
      return proc.run(argv, o)
    end

    function ctx.command(name)
      name = name or step_name
      local argv = M.command_for(name, env_over)
      local timeout = M.timeout_for(name, env_over)
      local ok, r = pcall(ctx.run, argv, { timeout = timeout })
      if not ok then
        if type(r) == "table" and r.code == "spawn_failed" then
          error(pipeline.fatal(string.format("the command of step %s cannot start: %s",
                                             name, r.message), { command = argv[1] }), 0)
        end
        error(r, 0)
      end
      log.info("step_command_finished", {
        step = name, command = command_name(argv), exit_code = r.code,
        signal = r.signal_name or r.signal, timed_out = r.timed_out,
        duration_ms = math.floor((r.duration or 0) * 1000),
      })
      local err_tail = tail(r.stderr, M.STDERR_TAIL)
      local fields = { exit_code = r.code, stderr = err_tail }
      if r.timed_out then
        error(pipeline.transient(string.format("step %s timed out after %g s: %s",
                                               name, timeout, err_tail), fields), 0)
      end
      if r.code == nil then
        error(pipeline.transient(string.format("step %s was killed by %s: %s", name,
                                               tostring(r.signal_name or r.signal), err_tail), fields), 0)
      end
      if r.code == EX_DATAERR then
        error(pipeline.fatal(string.format("step %s rejected its input (exit 65): %s",
                                           name, err_tail), fields), 0)
      end
      if r.code ~= 0 then
        local kind = r.code == EX_TEMPFAIL and "failed temporarily" or "failed"
        error(pipeline.transient(string.format("step %s %s (exit %d): %s", name, kind,
                                               r.code, err_tail), fields), 0)
      end
      local res, why = result_line(r.stdout)
      if not res then
        -- It says it succeeded but its result is unreadable: a broken
        -- command, and running it again would pay for the work again.
        error(pipeline.fatal(string.format("step %s exited 0 but %s", name, why)), 0)
      end
      local costs = res.costs
      if costs ~= nil and costs ~= cjson.null then
        if type(costs) ~= "table" then
          error(pipeline.fatal(string.format("step %s: costs must be a list", name)), 0)
        end
        for _, c in ipairs(costs) do
          if type(c) ~= "table" then
            error(pipeline.fatal(string.format("step %s: each cost must be an object", name)), 0)
          end
          local details = {}
          for k, v in pairs(c) do
            if k ~= "component" and k ~= "cost_usd" then details[k] = v end
          end
          ctx.cost(c.component, c.cost_usd, details)
        end
      end
      local outputs = res.outputs
      if outputs == nil or outputs == cjson.null then outputs = {} end
      if type(outputs) ~= "table" then
        error(pipeline.fatal(string.format("step %s: outputs must be an object", name)), 0)
      end
      return outputs
    end
  end

  local function gates(task)
    if not global_gates then return false end
    return channel_of(task).review_gates ~= false
  end

  -- The task's workspace files after a step (checkpointed with it), and
  -- the check of a resumed task (vg.pipeline): the first recorded file
  -- this worker's workspace lacks.
  local files = {
    snapshot = function(task) return workspace.files(task_dir(task)) end,
    missing = function(task, recorded) return workspace.missing(task_dir(task), recorded) end,
  }

  return { context = context, gates = gates, files = files }
end

return M
