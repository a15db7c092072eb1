-- The video pipeline end to end, against the real database
-- (TEST_DATABASE_URL; skipped when unset): the offline demo steps make a
-- real MP4 (checked with ffprobe), costs and the video are recorded, review
-- gates stop the task until lua/review.lua decides, step failures are
-- classified, and a worker killed with SIGKILL between steps leaves a task
-- that another worker finishes without redoing the finished steps.
--
-- Channel ids start with "pv-". Each test starts from empty tables (the
-- specs run one file after another, never at the same time).
local vg = require "vg"
local proc = require "vg.proc"
local cjson = require "cjson"
local lfs = require "lfs"
local host = require "spec.support.host"
local dbs = require "spec.support.db"

local STEPS = { "asset_generation", "composite_creation", "video_generation",
                "narration_generation", "sound_effects_generation", "video_assembly" }
local CREDENTIALS = "pv-secret-credentials-7f3a"
-- Small videos keep the specs fast: 2 scenes of 1 s.
local PAYLOAD = { title = "Autumn Forest", topic = "a walk through an autumn forest",
                  scenes = 2, seconds_per_scene = 1 }

local function rm_rf(path)
  local mode = lfs.symlinkattributes(path, "mode")
  if mode == "directory" then
    for name in lfs.dir(path) do
      if name ~= "." and name ~= ".." then rm_rf(path .. "/" .. name) end
    end
    lfs.rmdir(path)
  elseif mode then
    os.remove(path)
  end
end

local function tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(lfs.mkdir(name))
  return name
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- A wrapper for every step: counts runs in a file (with any host secret it
-- could see), stalls in the step named by PV_STALL_STEP (writing its pid,
-- which is its process group), then runs the real demo step.
local WRAPPER = [[
count=$1
step=$2
leak=""
[ -n "${FERNET_KEY:-}" ] && leak="$leak FERNET_KEY"
[ -n "${DATABASE_URL:-}" ] && leak="$leak DATABASE_URL"
echo "$step $VG_TASK_ID${leak:+ leaked:$leak}" >>"$count"
if [ "$step" = "${PV_STALL_STEP:-}" ]; then
    echo $$ >"$count.stalled"
    sleep 60
fi
exec sh "%s/scripts/steps/$step.sh"
]]

-- runs[step] = how many times the wrapper ran it.
local function runs(count_file)
  local n = {}
  for line in read(count_file):gmatch("[^\n]+") do
    local step = line:match("^(%S+)")
    n[step] = (n[step] or 0) + 1
    assert.is_nil(line:find("leaked", 1, true), "a step saw a host secret: " .. line)
  end
  return n
end

-- Does any live (not zombie) process remain in process group pgid?
local function group_alive(pgid)
  pgid = tonumber(pgid)
  for name in lfs.dir("/proc") do
    if name:match("^%d+$") then
      local stat = read("/proc/" .. name .. "/stat")
      -- pid (comm) state ppid pgrp ...; comm may hold blanks and parens.
      local state, pgrp = stat:match("%) (%S) %d+ (%d+)")
      if state and state ~= "Z" and tonumber(pgrp) == pgid then return true end
    end
  end
  return false
end

local function ffprobe(path)
  local r = proc.run({ "ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                       "-show_streams", path }, { timeout = 30 })
  assert.equal(0, r.code, r.stderr)
  local info = cjson.decode(r.stdout)
  local kinds = {}
  for _, s in ipairs(info.streams) do kinds[s.codec_type] = true end
  return tonumber(info.format.duration), kinds
end

local function review(args)
  return host.run(args, { env = host.env { DATABASE_URL = dbs.url, LOG_LEVEL = "warning" } })
end

local function task_row(db, id)
  return db.query("SELECT * FROM tasks WHERE id = $1", id)[1]
end

local function step_rows(db, id)
  local by = {}
  for _, r in ipairs(db.query("SELECT step, status, attempt FROM task_steps WHERE task_id = $1", id)) do
    by[r.step] = r
  end
  return by
end

local function costs_by_step(db, id)
  local by = {}
  for _, r in ipairs(db.query("SELECT step, count(*)::int AS n FROM video_costs WHERE task_id = $1 GROUP BY step", id)) do
    by[r.step] = r.n
  end
  return by
end

-- ---------------------------------------------------------------- pure parts

describe("video pipeline: payload validation", function()
  local video = require "vg.video"

  it("accepts a title with optional fields", function()
    video.validate { title = "x" }
    video.validate { title = ("t"):rep(200), topic = "t", narration = "n", scenes = 8, seconds_per_scene = 10 }
    video.validate { title = "x", scenes = 1.0 }
  end)

  it("rejects what the steps cannot make, with a clear message", function()
    local bad = {
      [{}] = "title is required",
      [{ title = "" }] = "title is required",
      [{ title = 5 }] = "title is required",
      [{ title = ("t"):rep(201) }] = "at most 200",
      [{ title = "x", scenes = 0 }] = "scenes must be a whole number from 1 to 8",
      [{ title = "x", scenes = 9 }] = "scenes must be",
      [{ title = "x", scenes = 2.5 }] = "scenes must be",
      [{ title = "x", scenes = "3" }] = "scenes must be",
      [{ title = "x", seconds_per_scene = 11 }] = "seconds_per_scene must be",
      [{ title = "x", topic = {} }] = "topic must be a string",
      [{ title = "x", narration = ("n"):rep(1001) }] = "narration must be at most",
    }
    for p, msg in pairs(bad) do
      local ok, err = pcall(video.validate, p)
      assert.is_false(ok)
      assert.matches(msg, err, 1, true)
    end
  end)

  it("plans the length from the payload", function()
    assert.same({ scenes = 3, seconds_per_scene = 2, total_seconds = 6 }, video.plan { title = "x" })
    assert.same({ scenes = 4, seconds_per_scene = 3, total_seconds = 12 },
                video.plan { title = "x", scenes = 4, seconds_per_scene = 3 })
  end)
end)

describe("step commands: configuration", function()
  local steps = require "vg.steps"

  it("default to the demo scripts, overridable per step, split on blanks", function()
    local argv = steps.command_for("video_generation", {})
    assert.equal("sh", argv[1])
    assert.matches("/scripts/steps/video_generation%.sh$", argv[2])
    assert.equal("file", lfs.attributes(argv[2], "mode"))
    assert.same({ "/opt/prod/bin/gen-video", "--fast", "-q" },
                steps.command_for("video_generation", { VG_STEP_VIDEO_GENERATION = "/opt/prod/bin/gen-video  --fast -q" }))
    assert.same({ "sh", "/x/steps/narration_generation.sh" },
                steps.command_for("narration_generation", { VG_SCRIPTS_DIR = "/x" }))
  end)

  it("have per-step timeouts", function()
    assert.equal(600, steps.timeout_for("video_generation", {}))
    assert.equal(7.5, steps.timeout_for("video_generation", { VG_STEP_TIMEOUT_VIDEO_GENERATION = "7.5" }))
    for _, s in ipairs(STEPS) do
      local t = steps.timeout_for(s, {})
      assert.is_true(t >= 120 and t <= 600)
    end
    assert.has_error(function() steps.timeout_for("video_generation", { VG_STEP_TIMEOUT_VIDEO_GENERATION = "-1" }) end)
  end)
end)

-- ---------------------------------------------------------------- with the database

describe("a resumed task's workspace files (pipeline.redo_missing)", function()
  local pipeline = require "vg.pipeline"
  local STEPS3 = { { name = "a" }, { name = "b" }, { name = "c" } }

  -- Which steps stay done when the workspace lacks the given paths.
  local function kept(recorded, lacking)
    local done = { a = {}, b = {} }
    local files = { missing = function(_, want)
      local out = {}
      for _, p in ipairs(lacking) do if want[p] then out[#out + 1] = p end end
      return out
    end }
    pipeline.redo_missing(files, {}, STEPS3, done, recorded)
    local names = {}
    for _, st in ipairs(STEPS3) do if done[st.name] then names[#names + 1] = st.name end end
    return table.concat(names, ",")
  end

  it("runs again from the step that wrote a missing file as it is now", function()
    local rec = { a = { x = 1 }, b = { x = 1, y = 2 } }
    assert.equal("a,b", kept(rec, {}))
    assert.equal("a", kept(rec, { "y" }))        -- b wrote y
    assert.equal("", kept(rec, { "x" }))         -- a wrote x, b kept it
    assert.equal("", kept(rec, { "x", "y" }))
    -- b rewrote x (another size): b is the step to run again
    assert.equal("a", kept({ a = { x = 1 }, b = { x = 5 } }, { "x" }))
    -- nothing recorded for the last finished step (older checkpoints): no check
    assert.equal("a,b", kept({ a = { x = 1 } }, { "x" }))
  end)
end)

local describe_db = dbs.available() and describe or pending

describe_db("video pipeline", function()
  local db, queue, pipeline, steps, video, fernet
  local root, count_file, step_env, key

  setup(function()
    db = dbs.setup()
    queue = require "vg.queue"
    pipeline = require "vg.pipeline"
    steps = require "vg.steps"
    video = require "vg.video"
    fernet = require "vg.fernet"
    key = host.key
  end)

  before_each(function()
    dbs.reset()
    root = tmpdir()
    count_file = root .. "/runs.txt"
    write(root .. "/wrap.sh", WRAPPER:format(host.root))
    step_env = {}
    for _, s in ipairs(STEPS) do
      step_env["VG_STEP_" .. s:upper()] = string.format("sh %s/wrap.sh %s %s", root, count_file, s)
    end
  end)

  after_each(function()
    rm_rf(root)
    host.cleanup()
  end)

  local function channel(id, gates, creds)
    db.query("INSERT INTO channels (id, name, review_gates, credentials_encrypted) VALUES ($1, $2, $3, $4)",
             id, "Channel " .. id, gates, creds and fernet.new(key):encrypt(creds) or db.null)
  end

  local function enqueue(ch, payload)
    return db.query("INSERT INTO tasks (channel_id, pipeline, payload) VALUES ($1, 'video', $2::jsonb) RETURNING id",
                    ch, cjson.encode(payload or PAYLOAD))[1].id
  end

  local function cfg(extra)
    local c = { VG_WORKSPACE = root .. "/workspace", VG_REVIEW_GATES = true, FERNET_KEY = key }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  -- Claim the next task and run it through the video pipeline in this
  -- process, as a worker would. Returns the outcome and the task.
  local function run_once(config)
    local q = queue.new { worker_id = "pv-spec", instance = vg.instance(), lease_seconds = 60 }
    local task = q:claim(1)[1]
    assert.is_not_nil(task, "nothing to claim")
    local opts = steps.options(config or cfg(), { env = step_env })
    local env = { queue = q, gates = opts.gates, context = opts.context, files = opts.files }
    return pipeline.execute(env, video.pipeline(), task), task
  end

  it("makes a real video through the six demo steps, records costs and the video", function()
    channel("pv-news", false, CREDENTIALS)
    local id = enqueue("pv-news")
    local outcome, task = run_once()
    assert.equal("completed", outcome)
    assert.equal(1, task.attempts)

    local row = task_row(db, id)
    assert.equal("completed", row.status)
    local res = row.result
    local expected_dir = root .. "/workspace/pv-news/" .. id
    assert.equal(expected_dir .. "/final.mp4", res.video)
    local duration, kinds = ffprobe(res.video)
    assert.is_true(kinds.video, "no video stream")
    assert.is_true(kinds.audio, "no audio stream")
    assert.is_true(math.abs(duration - 2) < 0.3, "duration " .. duration)
    assert.equal(lfs.attributes(res.video, "size"), res.size_bytes)

    -- Every step ran once, checkpointed with its outputs.
    assert.same({ asset_generation = 1, composite_creation = 1, video_generation = 1,
                  narration_generation = 1, sound_effects_generation = 1, video_assembly = 1 },
                runs(count_file))
    local done = step_rows(db, id)
    for _, s in ipairs(STEPS) do assert.equal("completed", done[s].status) end
    local assets = db.query("SELECT output FROM task_steps WHERE task_id = $1 AND step = 'asset_generation'", id)[1]
    assert.is_true(assets.output.credentials_supplied, "the step did not get the channel's credentials")

    -- Costs: one item per step, summed into the result.
    local costs = db.query([[SELECT step, component, cost_usd::float8 AS usd, channel_id
                               FROM video_costs WHERE task_id = $1 ORDER BY id]], id)
    assert.equal(6, #costs)
    local total = 0
    for i, c in ipairs(costs) do
      assert.equal(STEPS[i], c.step)
      assert.equal("pv-news", c.channel_id)
      assert.is_true(c.usd > 0)
      total = total + c.usd
    end
    assert.is_true(math.abs(total - res.cost_usd) < 1e-6)

    -- The video row.
    local v = db.query("SELECT * FROM videos WHERE task_id = $1", id)
    assert.equal(1, #v)
    assert.equal(res.video, v[1].path)
    assert.equal("pv-news", v[1].channel_id)
    assert.equal(res.size_bytes, v[1].size_bytes)
    assert.is_true(math.abs(v[1].duration_seconds - 2) < 0.3)
    assert.equal("Autumn Forest", v[1].metadata.title)
  end)

  it("stops at the review gates; review.lua approve resumes at the next step", function()
    channel("pv-gated", true)
    local id = enqueue("pv-gated")

    assert.equal("awaiting_review", (run_once()))
    local row = task_row(db, id)
    assert.equal("awaiting_review", row.status)
    assert.equal("composite_creation", row.current_step)
    local listed = review { "lua/review.lua", "list" }
    assert.equal(0, listed.code)
    assert.matches("composite_creation", listed.stdout)

    local r = review { "lua/review.lua", "approve", tostring(id), "--actor", "pv-reviewer", "--reason", "stills ok" }
    assert.equal(0, r.code, r.stderr)
    assert.matches("approved", r.stdout)
    assert.equal("approved", task_row(db, id).status)
    local audit = db.query("SELECT * FROM audit_logs WHERE task_id = $1", id)
    assert.equal(1, #audit)
    assert.equal("pv-reviewer", audit[1].actor)
    assert.equal("task_approved", audit[1].action)
    assert.same({ step = "composite_creation", reason = "stills ok" }, audit[1].details)

    -- Resumes after the gate (the claim starts the attempts afresh) and
    -- stops at the second gate, before the final assembly.
    local outcome, task = run_once()
    assert.equal("awaiting_review", outcome)
    assert.equal(1, task.attempts)
    assert.equal("sound_effects_generation", task_row(db, id).current_step)
    assert.equal(0, review({ "lua/review.lua", "approve", tostring(id), "--actor", "pv-reviewer" }).code)

    assert.equal("completed", (run_once()))
    assert.equal("completed", task_row(db, id).status)
    -- Nothing before a gate ran twice or was paid twice.
    for _, s in ipairs(STEPS) do
      assert.equal(1, runs(count_file)[s], s)
      assert.equal(1, costs_by_step(db, id)[s], s)
    end
    assert.equal(2, #db.query("SELECT 1 FROM audit_logs WHERE task_id = $1 AND action = 'task_approved'", id))
  end)

  it("resumed where a finished step's files are missing, runs that step again instead of failing", function()
    channel("pv-moved", true)
    local id = enqueue("pv-moved")
    local approve = function()
      assert.equal(0, review({ "lua/review.lua", "approve", tostring(id), "--actor", "pv-reviewer" }).code)
    end
    assert.equal("awaiting_review", (run_once())) -- asset_generation, composite_creation
    local files = db.query("SELECT step, files FROM task_steps WHERE task_id = $1", id)
    for _, r in ipairs(files) do assert.is_table(r.files, r.step .. " recorded no files") end
    -- One file of the second step is gone (a disk cleaned, a partial copy):
    -- only that step runs again.
    local dir = root .. "/workspace/pv-moved/" .. id
    local gone
    for path in pairs(db.query("SELECT files FROM task_steps WHERE task_id = $1 AND step = 'composite_creation'",
                               id)[1].files) do
      if path:match("^composites/") then gone = path end
    end
    assert.is_not_nil(gone, "composite_creation recorded no composites/ file")
    assert.is_true(os.remove(dir .. "/" .. gone))
    approve()
    -- What was approved is gone: the step's new output is reviewed anew.
    assert.equal("awaiting_review", (run_once()))
    assert.equal("composite_creation", task_row(db, id).current_step)
    assert.same({ asset_generation = 1, composite_creation = 2 }, runs(count_file))
    approve()
    assert.equal("awaiting_review", (run_once())) -- after sound_effects_generation
    assert.same({ asset_generation = 1, composite_creation = 2, video_generation = 1,
                  narration_generation = 1, sound_effects_generation = 1 }, runs(count_file))
    -- Another container: an empty workspace. Every finished step runs
    -- again (its files are the next steps' inputs), then the last one.
    db.query("UPDATE channels SET review_gates = false WHERE id = 'pv-moved'")
    approve()
    local outcome, task = run_once(cfg { VG_WORKSPACE = root .. "/elsewhere" })
    assert.equal("completed", outcome, task_row(db, id).last_error)
    assert.same({ asset_generation = 2, composite_creation = 3, video_generation = 2,
                  narration_generation = 2, sound_effects_generation = 2, video_assembly = 1 },
                runs(count_file))
    -- what was run was paid, once a run
    local costs = costs_by_step(db, id)
    for step, n in pairs(runs(count_file)) do assert.equal(n, costs[step], step) end
  end)

  it("has gates only when both VG_REVIEW_GATES and the channel allow them", function()
    channel("pv-on", true)
    channel("pv-off", false)
    local on = { id = enqueue("pv-on"), channel_id = "pv-on" }
    local off = { id = enqueue("pv-off"), channel_id = "pv-off" }
    assert.is_true(steps.options(cfg()).gates(on))
    assert.is_false(steps.options(cfg()).gates(off))
    assert.is_false(steps.options(cfg { VG_REVIEW_GATES = false }).gates(on))
    assert.is_true(steps.options({ FERNET_KEY = key }).gates(on))   -- default on
  end)

  it("review.lua reject ends the task; a rejected task is never claimed again", function()
    channel("pv-reject", true)
    local id = enqueue("pv-reject")
    assert.equal("awaiting_review", (run_once()))

    local r = review { "lua/review.lua", "reject", tostring(id), "--actor", "pv-reviewer", "--reason", "off-brand" }
    assert.equal(0, r.code, r.stderr)
    local row = task_row(db, id)
    assert.equal("rejected", row.status)
    assert.is_not.equal(db.null, row.completed_at)
    local audit = db.query("SELECT * FROM audit_logs WHERE task_id = $1", id)[1]
    assert.equal("task_rejected", audit.action)
    assert.same({ step = "composite_creation", reason = "off-brand" }, audit.details)

    local q = queue.new { worker_id = "pv-spec", instance = vg.instance() }
    assert.equal(0, #q:claim(1))

    -- Only from awaiting_review; clear errors and exit codes.
    r = review { "lua/review.lua", "approve", tostring(id), "--actor", "pv-reviewer" }
    assert.equal(1, r.code)
    assert.matches("is rejected, not awaiting_review", r.stderr)
    r = review { "lua/review.lua", "approve", "999999", "--actor", "x" }
    assert.equal(1, r.code)
    assert.matches("not found", r.stderr)
    assert.equal(2, review({ "lua/review.lua", "approve", tostring(id) }).code)          -- no --actor
    assert.equal(2, review({ "lua/review.lua", "promote", tostring(id), "--actor", "x" }).code)
    assert.equal(2, review({ "lua/review.lua", "approve", "abc", "--actor", "x" }).code)
    assert.equal(1, #db.query("SELECT 1 FROM audit_logs WHERE task_id = $1", id))
  end)

  describe("the videos row", function()
    local id, token
    before_each(function()
      channel("pv-vid", false)
      id = enqueue("pv-vid")
      token = db.query([[UPDATE tasks SET status = 'processing', lease_token = lease_token + 1
                          WHERE id = $1 RETURNING lease_token]], id)[1].lease_token
    end)

    local function videos() return db.query("SELECT id FROM videos WHERE task_id = $1", id) end

    it("is one per task and file when two runs record it at once", function()
      local args = { id, "pv-vid", "/tmp/pv-vid.mp4", 2.5, 100, "{}", token }
      local inserted, commit = vg.event(), vg.event()
      local first = vg.spawn(function()
        return db.transaction(function(tx)
          tx:query(video.VIDEO_SQL, table.unpack(args))
          inserted:set()
          commit:wait(60, { interruptible = false })
        end)
      end)
      assert.is_true(inserted:wait(30))
      local second = vg.spawn(function() return db.query(video.VIDEO_SQL, table.unpack(args)) end)
      -- The second either waits on the first's uncommitted row or (with no
      -- unique index to wait on) has already written its own.
      assert.is_true(dbs.eventually(function()
        return second:done() or db.query([[SELECT count(*)::int AS n FROM pg_stat_activity
                                            WHERE wait_event_type = 'Lock'
                                              AND query LIKE 'INSERT INTO videos%']])[1].n > 0
      end, 30))
      commit:set()
      first:join()
      local rows = second:join()
      assert.equal(1, #videos())
      assert.equal(videos()[1].id, rows[1].id)
    end)

    it("is not written by a run whose lease was lost", function()
      local rows = db.query(video.VIDEO_SQL, id, "pv-vid", "/tmp/pv-vid.mp4", 2.5, 100, "{}",
                            token + 1)
      assert.equal(0, #rows)
      assert.equal(0, #videos())
    end)
  end)

  describe("ctx.command", function()
    local task, ctx

    -- A context for one step of a real task, with the step's command
    -- pointed at a little script.
    local function context_for(script, extra_env)
      local path = root .. "/cmd.sh"
      write(path, script)
      local env = { VG_STEP_ASSET_GENERATION = "sh " .. path }
      for k, v in pairs(extra_env or {}) do env[k] = v end
      local opts = steps.options(cfg(), { env = env })
      ctx = { task = task, payload = task.payload }
      opts.context(ctx, task, { name = "asset_generation" })
      return ctx
    end

    before_each(function()
      channel("pv-cmd", true, CREDENTIALS)
      local id = enqueue("pv-cmd")
      -- Running, as a claim leaves it: costs are written under its lease.
      local token = db.query([[UPDATE tasks SET status = 'processing', lease_token = lease_token + 1
                                WHERE id = $1 RETURNING lease_token]], id)[1].lease_token
      task = { id = id, channel_id = "pv-cmd", payload = PAYLOAD, attempts = 1, lease_token = token }
    end)

    local function fails(fn, retriable, pattern)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.equal("table", type(err), tostring(err))
      assert.equal(retriable, err.retriable, tostring(err))
      if pattern then assert.matches(pattern, err.message) end
      return err
    end

    it("returns the outputs, records the costs, passes the step environment", function()
      context_for([[
        printf 'progress\n'
        printf '{"outputs":{"creds":"%s","step":"%s","task":"%s","channel":"%s","title":%s,"cwd":"%s"},"costs":[{"component":"pv_api","cost_usd":0.25},{"component":"pv_storage","cost_usd":0.0001}]}\n' \
          "$VG_CHANNEL_CREDENTIALS" "$VG_STEP" "$VG_TASK_ID" "$VG_CHANNEL_NAME" "$(printf '%s' "$VG_PAYLOAD" | jq .title)" "$(pwd -P)"
      ]])
      assert.equal(root .. "/workspace/pv-cmd/" .. task.id, ctx.workspace)
      assert.equal("pv-cmd", ctx.channel.id)
      assert.equal(CREDENTIALS, ctx.credentials())
      local out = ctx.command("asset_generation")
      assert.equal(CREDENTIALS, out.creds)
      assert.equal("asset_generation", out.step)
      assert.equal(tostring(task.id), out.task)
      assert.equal("Channel pv-cmd", out.channel)
      assert.equal("Autumn Forest", out.title)
      assert.equal(require("vg.workspace").realpath(ctx.workspace), out.cwd)
      local costs = db.query([[SELECT step, component, cost_usd FROM video_costs
                                WHERE task_id = $1 ORDER BY id]], task.id)
      assert.equal(2, #costs)
      assert.same({ step = "asset_generation", component = "pv_api", cost_usd = "0.250000" }, costs[1])
      assert.equal("0.000100", costs[2].cost_usd)
    end)

    it("records no cost, and raises lease_lost, once the task's lease is lost", function()
      context_for([[printf '{"outputs":{},"costs":[{"component":"pv_api","cost_usd":0.25}]}\n']])
      db.query("UPDATE tasks SET lease_token = lease_token + 1 WHERE id = $1", task.id)
      local ok, err = pcall(ctx.command, "asset_generation")
      assert.is_false(ok)
      assert.equal("lease_lost", err.code)
      assert.equal(0, db.query("SELECT count(*)::int AS n FROM video_costs WHERE task_id = $1",
                               task.id)[1].n)
    end)

    it("gives no credentials when the channel has none", function()
      db.query("UPDATE channels SET credentials_encrypted = NULL WHERE id = 'pv-cmd'")
      context_for([[printf '{"outputs":{"set":"%s"}}\n' "${VG_CHANNEL_CREDENTIALS+yes}"]])
      assert.is_nil(ctx.credentials())
      assert.equal("", ctx.command("asset_generation").set)
    end)

    it("fails for good on exit 65, with the stderr tail", function()
      context_for("echo 'pv: the title is unusable' >&2; exit 65")
      fails(function() ctx.command("asset_generation") end, false, "the title is unusable")
    end)

    it("retries on exit 75 and other exit codes", function()
      context_for("echo 'pv: service busy' >&2; exit 75")
      fails(function() ctx.command("asset_generation") end, true, "service busy")
      context_for("exit 3")
      fails(function() ctx.command("asset_generation") end, true, "exit 3")
    end)

    it("retries after a timeout, and the command's process group is gone", function()
      context_for("echo $$ > pid; sleep 30 & wait", { VG_STEP_TIMEOUT_ASSET_GENERATION = "0.3" })
      fails(function() ctx.command("asset_generation") end, true, "timed out")
      local pgid = read(ctx.workspace .. "/pid"):match("%d+")
      assert.is_true(dbs.eventually(function() return not group_alive(pgid) end, 5),
                     "the step's process group still runs")
    end)

    it("fails for good when the command cannot start", function()
      local opts = steps.options(cfg(), { env = { VG_STEP_ASSET_GENERATION = "/nonexistent/pv-generator --x" } })
      ctx = { task = task, payload = task.payload }
      opts.context(ctx, task, { name = "asset_generation" })
      fails(function() ctx.command("asset_generation") end, false, "cannot start")
    end)

    it("fails for good when a successful command prints no JSON result", function()
      context_for("echo 'all done'")
      fails(function() ctx.command("asset_generation") end, false, "not a JSON object")
    end)

    it("fails for good when the credentials cannot be decrypted", function()
      db.query("UPDATE channels SET credentials_encrypted = $1 WHERE id = 'pv-cmd'",
               fernet.new(fernet.generate_key()):encrypt("x"))
      context_for("exit 0")
      local err = fails(function() ctx.credentials() end, false, "cannot be decrypted")
      assert.is_nil(err.message:find(key, 1, true))
    end)
  end)

  it("resumes after the worker is killed between steps without redoing finished ones", function()
    -- This runs the real lua/worker.lua: it must wire the video pipeline in.
    local ok, shipped = pcall(require, "pipelines")
    assert(ok and type(shipped) == "table" and shipped.video, "lua/pipelines.lua has no video pipeline")
    assert(read(host.root .. "/lua/worker.lua"):find("vg.steps", 1, true),
           "lua/worker.lua does not pass require('vg.steps').options(cfg) to consumer.new")
    channel("pv-kill", false, CREDENTIALS)
    local id = enqueue("pv-kill")
    local function worker_env(name, extra)
      local env = host.env {
        DATABASE_URL = dbs.url, WORKER_ID = name, VG_WORKSPACE = root .. "/workspace",
        VG_POLL_INTERVAL = "0.5", VG_HEARTBEAT_INTERVAL = "1", VG_LEASE_SECONDS = "3",
        VG_SHUTDOWN_GRACE = "5",
      }
      for k, v in pairs(step_env) do env[k] = v end
      for k, v in pairs(extra or {}) do env[k] = v end
      return env
    end
    local w1, w2, stalled
    finally(function()
      if w1 then pcall(w1.kill, w1, "KILL") end
      if w2 then pcall(w2.kill, w2, "KILL") end
      if stalled then proc.run({ "kill", "-KILL", "--", "-" .. stalled }) end
    end)

    -- Worker 1 finishes two steps and stalls in the third.
    w1 = host.spawn({ "lua/worker.lua" }, { env = worker_env("pv-w1", { PV_STALL_STEP = "video_generation" }) })
    assert.is_true(dbs.eventually(function()
      return read(count_file .. ".stalled"):match("%d+") ~= nil
    end, 30), "worker 1 did not reach video_generation: " .. w1:stdout())
    stalled = read(count_file .. ".stalled"):match("%d+")
    local done = step_rows(db, id)
    assert.equal("completed", done.asset_generation.status)
    assert.equal("completed", done.composite_creation.status)
    assert.is_nil(done.video_generation)

    -- SIGKILL: no cleanup at all. The stalled step's process group is
    -- orphaned; end it too, as a container runtime would.
    w1:kill("KILL")
    assert.is_not_nil(w1:wait(10))
    proc.run({ "kill", "-KILL", "--", "-" .. stalled })
    stalled = nil

    w2 = host.spawn({ "lua/worker.lua" }, { env = worker_env("pv-w2") })
    assert.is_true(dbs.eventually(function() return task_row(db, id).status == "completed" end, 45),
                   "task not completed by worker 2: " .. tostring(task_row(db, id).status)
                   .. " " .. tostring(task_row(db, id).last_error))
    w2:kill("TERM")
    local r = w2:wait(15)
    assert.is_not_nil(r, "worker 2 did not exit after SIGTERM")
    assert.equal(0, r.code, "worker 2 exit code; stderr: " .. r.stderr:sub(-3000))

    -- Steps 1-2 ran once (worker 1), step 3 twice (killed, then redone),
    -- steps 4-6 once (worker 2); costs of steps 1-2 recorded once.
    assert.same({ asset_generation = 1, composite_creation = 1, video_generation = 2,
                  narration_generation = 1, sound_effects_generation = 1, video_assembly = 1 },
                runs(count_file))
    local rows = step_rows(db, id)
    assert.equal(1, rows.asset_generation.attempt)
    assert.equal(1, rows.composite_creation.attempt)
    assert.equal(2, rows.video_generation.attempt)
    assert.equal(2, rows.video_assembly.attempt)
    local costs = costs_by_step(db, id)
    for _, s in ipairs(STEPS) do assert.equal(1, costs[s], s) end
    local row = task_row(db, id)
    assert.equal(2, row.attempts)
    local duration, kinds = ffprobe(row.result.video)
    assert.is_true(kinds.video and kinds.audio)
    assert.is_true(math.abs(duration - 2) < 0.3)

    -- The workers' logs are JSON lines that never carry the credentials.
    local lines = host.lines(r.stdout)
    assert.is_not_nil(host.find(lines, "task_completed"))
    assert.is_nil(r.stdout:find(CREDENTIALS, 1, true))
    assert.is_nil(r.stdout:find(key, 1, true))
  end)
end)
