-- The `video` pipeline (DESIGN section 7): six steps, each an external
-- command run through ctx.command (lua/vg/steps.lua; by default the offline
-- demo commands in scripts/steps/, see scripts/README.md), whose outputs
-- are checked before the step counts as done:
--
--   asset_generation          one image per scene        files exist, non-empty
--   composite_creation        title drawn on each image  files exist, non-empty  [review]
--   video_generation          one clip per scene         files; ffprobe: video, length
--   narration_generation      narration.wav              file; ffprobe: audio
--   sound_effects_generation  sfx.wav                    file; ffprobe: audio, length  [review]
--   video_assembly            final.mp4                  file; ffprobe: video + audio,
--                                                        length; recorded in videos
--
-- Review gates (unless switched off globally with VG_REVIEW_GATES=off or
-- per channel with channels.review_gates = false):
--   * after composite_creation: a person looks at the stills (cheap) before
--     the task pays for video generation (the expensive step);
--   * after sound_effects_generation, i.e. before video_assembly: every
--     piece of media is ready and paid for, and a person approves it before
--     the final render is published. A gate after the last step would stop
--     the task short of completion (and the runner skips it), so the final
--     check sits just before it.
-- Approval resumes at the next step (lua/review.lua); rejection ends the task.
--
-- A failed check is retriable (the step runs again on the next attempt):
-- the command said it succeeded, so a missing file is most likely a
-- transient fault. A path that leaves the workspace is not (unsafe_path).
local db = require "vg.db"
local proc = require "vg.proc"
local cjson = require "cjson"
local lfs = require "lfs"
local pipeline = require "vg.pipeline"
local workspace = require "vg.workspace"

local M = {}

M.DURATION_TOLERANCE = 0.5 -- seconds a media file may differ from its plan
M.LIMITS = {
  title = 200, topic = 500, narration = 1000,
  scenes = { 1, 8 }, seconds_per_scene = { 1, 10 },
}
M.DEFAULT_SCENES = 3
M.DEFAULT_SECONDS_PER_SCENE = 2

local function whole(v) return type(v) == "number" and v == math.floor(v) end

-- Raises a plain message; pipeline.execute turns it into a non-retriable
-- "invalid payload: ..." failure.
function M.validate(p)
  local function bad(fmt, ...) error(string.format(fmt, ...), 0) end
  if type(p.title) ~= "string" or not p.title:match("%S") then
    bad("title is required (a non-empty string)")
  end
  if utf8.len(p.title) == nil then bad("title must be valid UTF-8") end
  if #p.title > M.LIMITS.title then bad("title must be at most %d characters", M.LIMITS.title) end
  for _, k in ipairs { "topic", "narration" } do
    local v = p[k]
    if v ~= nil and v ~= cjson.null then
      if type(v) ~= "string" then bad("%s must be a string", k) end
      if utf8.len(v) == nil then bad("%s must be valid UTF-8", k) end
      if #v > M.LIMITS[k] then bad("%s must be at most %d characters", k, M.LIMITS[k]) end
    end
  end
  for _, k in ipairs { "scenes", "seconds_per_scene" } do
    local v, lim = p[k], M.LIMITS[k]
    if v ~= nil and v ~= cjson.null and not (whole(v) and v >= lim[1] and v <= lim[2]) then
      bad("%s must be a whole number from %d to %d, got %s", k, lim[1], lim[2], cjson.encode(v))
    end
  end
end

-- How many scenes and seconds the payload asks for.
function M.plan(p)
  local function num(v, d) return (type(v) == "number") and math.floor(v) or d end
  local scenes = num(p.scenes, M.DEFAULT_SCENES)
  local sps = num(p.seconds_per_scene, M.DEFAULT_SECONDS_PER_SCENE)
  return { scenes = scenes, seconds_per_scene = sps, total_seconds = scenes * sps }
end

local function check_failed(step, fmt, ...)
  error(pipeline.transient(step .. ": output check failed: " .. string.format(fmt, ...)), 0)
end

-- A file a step reported: inside the workspace, a regular file, not empty.
-- Returns its absolute path and size.
local function output_file(ctx, step, rel, what)
  if type(rel) ~= "string" or rel == "" then check_failed(step, "%s not reported", what) end
  local full = workspace.path(ctx.workspace, rel)
  local attr = lfs.attributes(full)
  if not attr or attr.mode ~= "file" then check_failed(step, "%s %s does not exist", what, rel) end
  if attr.size == 0 then check_failed(step, "%s %s is empty", what, rel) end
  return full, attr.size
end

local function output_files(ctx, step, list, what, want)
  if type(list) ~= "table" or #list ~= want then
    check_failed(step, "expected %d %s, got %s", want, what, type(list) == "table" and #list or "none")
  end
  local out = {}
  for i, rel in ipairs(list) do out[i] = output_file(ctx, step, rel, what) end
  return out
end

-- ffprobe a media file: { duration = seconds, video = bool, audio = bool,
-- width, height, video_codec, audio_codec }. ffprobe runs without the
-- channel's credentials or the host's secrets.
function M.probe(path, cwd)
  local r = proc.run({ "ffprobe", "-v", "error", "-print_format", "json",
                       "-show_format", "-show_streams", path }, {
    cwd = cwd, timeout = 60,
    env = { VG_CHANNEL_CREDENTIALS = false, FERNET_KEY = false, DATABASE_URL = false },
  })
  if r.code ~= 0 then
    return nil, string.format("ffprobe cannot read %s: %s", path, (r.stderr or ""):sub(1, 300))
  end
  local ok, info = pcall(cjson.decode, r.stdout)
  if not ok or type(info) ~= "table" then return nil, "ffprobe printed no JSON for " .. path end
  local fmt = type(info.format) == "table" and info.format or {}
  local res = { duration = tonumber(fmt.duration), video = false, audio = false }
  for _, s in ipairs(type(info.streams) == "table" and info.streams or {}) do
    if s.codec_type == "video" and not res.video then
      res.video, res.video_codec = true, s.codec_name
      res.width, res.height = s.width, s.height
    elseif s.codec_type == "audio" and not res.audio then
      res.audio, res.audio_codec = true, s.codec_name
    end
  end
  return res
end

-- Probe and check the kinds of streams and the duration (want: seconds,
-- or nil for "any positive length").
local function media(ctx, step, full, streams, want)
  local ok, info, why = pcall(M.probe, full, ctx.workspace)
  if not ok then
    if type(info) == "table" and info.code == "spawn_failed" then
      -- No ffprobe on this machine; another worker may have it.
      check_failed(step, "cannot run ffprobe: %s", info.message)
    end
    error(info, 0)
  end
  if not info then check_failed(step, "%s", why) end
  for _, kind in ipairs(streams) do
    if not info[kind] then check_failed(step, "%s has no %s stream", full, kind) end
  end
  if not info.duration or info.duration <= 0 then check_failed(step, "%s has no duration", full) end
  if want and math.abs(info.duration - want) > M.DURATION_TOLERANCE then
    check_failed(step, "%s lasts %.2f s, expected %g s", full, info.duration, want)
  end
  return info
end

-- One row per task and file (unique index, sql/004_videos_unique.sql),
-- also when a crash after this point makes the step run again; written
-- only while this run's lease holds ($7: the task's lease token), so a run
-- that lost its task writes nothing.
M.VIDEO_SQL = [[
INSERT INTO videos (task_id, channel_id, path, duration_seconds, size_bytes, metadata)
SELECT $1, $2, $3, $4, $5, $6::jsonb
  FROM tasks
 WHERE id = $1 AND lease_token = $7 AND status IN ('claimed', 'processing')
ON CONFLICT (task_id, path) DO UPDATE
   SET duration_seconds = EXCLUDED.duration_seconds, size_bytes = EXCLUDED.size_bytes,
       metadata = EXCLUDED.metadata, created_at = now()
RETURNING id]]

local COST_SQL = [[
SELECT coalesce(sum(cost_usd), 0)::text AS usd FROM video_costs WHERE task_id = $1]]

local function step(name, check, review)
  return {
    name = name,
    command = name, -- runs VG_STEP_<NAME> (checked at start-up by vg.steps)
    review = review or nil,
    run = function(ctx)
      local out = ctx.command(name)
      check(ctx, out, M.plan(ctx.payload))
      return out
    end,
  }
end

local steps = {
  step("asset_generation", function(ctx, out, plan)
    output_files(ctx, "asset_generation", out.images, "images", plan.scenes)
  end),

  step("composite_creation", function(ctx, out, plan)
    output_files(ctx, "composite_creation", out.composites, "composites", plan.scenes)
  end, true),

  step("video_generation", function(ctx, out, plan)
    for _, full in ipairs(output_files(ctx, "video_generation", out.clips, "clips", plan.scenes)) do
      media(ctx, "video_generation", full, { "video" }, plan.seconds_per_scene)
    end
  end),

  step("narration_generation", function(ctx, out)
    local full = output_file(ctx, "narration_generation", out.path, "narration")
    media(ctx, "narration_generation", full, { "audio" })
  end),

  step("sound_effects_generation", function(ctx, out, plan)
    local full = output_file(ctx, "sound_effects_generation", out.path, "sound bed")
    media(ctx, "sound_effects_generation", full, { "audio" }, plan.total_seconds)
  end, true),

  step("video_assembly", function(ctx, out, plan)
    local full, size = output_file(ctx, "video_assembly", out.path, "video")
    local info = media(ctx, "video_assembly", full, { "video", "audio" }, plan.total_seconds)
    local meta = {
      title = ctx.payload.title, scenes = plan.scenes, width = info.width, height = info.height,
      video_codec = info.video_codec, audio_codec = info.audio_codec,
    }
    -- One row per task and file, also when a crash after this point makes
    -- the step run again.
    local rows = db.query(M.VIDEO_SQL, ctx.task.id, ctx.task.channel_id, full, info.duration,
                          size, cjson.encode(meta), ctx.task.lease_token)
    if not rows[1] then error(pipeline.LEASE_LOST, 0) end
    local id = rows[1].id
    out.absolute_path = full
    out.duration_seconds = info.duration
    out.size_bytes = size
    out.video_id = id
  end),
}

local function result(outputs, task)
  local a = outputs.video_assembly or {}
  local usd = db.query(COST_SQL, task.id)[1].usd
  return {
    video = a.absolute_path,
    video_id = a.video_id,
    duration_seconds = a.duration_seconds,
    size_bytes = a.size_bytes,
    cost_usd = tonumber(usd),
  }
end

-- The pipeline table for lua/pipelines.lua.
function M.pipeline()
  return { validate = M.validate, steps = steps, result = result }
end

return M
