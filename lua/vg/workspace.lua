-- The workspace under VG_WORKSPACE (DESIGN section 7): one folder per
-- channel and task, root/<channel_id>/<task_id>, shared by the steps of a
-- task. Every path inside it is built by workspace.path, which refuses to
-- leave the folder it is given:
--
--   workspace.task_dir(root, channel_id, task_id) -> absolute folder, created
--   workspace.path(base, relative)                -> base/relative
--   workspace.valid_channel_id(id), workspace.valid_task_id(id) -> bool
--   workspace.realpath(path)                      -> path with links resolved
--   workspace.files(dir)                          -> { relative path = size }
--   workspace.missing(dir, files)                 -> the paths of files that
--                                                    dir lacks, or holds at
--                                                    another size (sorted)
--
-- Refused (an error object { code = "unsafe_path", retriable = false,
-- message = why }): channel ids outside ^[a-z0-9][a-z0-9_-]{0,63}$, task ids
-- that are not positive integers, relative parts that are absolute, contain
-- a ".." component or a NUL byte, and paths whose existing components
-- include a symbolic link that resolves outside base (checked component by
-- component with lfs.symlinkattributes, links followed as the kernel would).
--
-- The check is made when the path is built; a step command that replaces a
-- folder with a link afterwards is outside what a path check can prevent
-- (the demo steps write under hidden names and rename, never follow links
-- they did not make).
local lfs = require "lfs"

local M = {}

local MAX_LINKS = 40 -- as the kernel's MAXSYMLINKS

local ERR_MT = { __tostring = function(e) return e.code .. ": " .. e.message end }

local function errobj(code, retriable, fmt, ...)
  return setmetatable({ code = code, retriable = retriable, message = string.format(fmt, ...) }, ERR_MT)
end

local function fail(fmt, ...) error(errobj("unsafe_path", false, fmt, ...), 2) end

function M.valid_channel_id(id)
  return type(id) == "string" and #id <= 64 and id:match("^[a-z0-9][a-z0-9_%-]*$") ~= nil
end

-- A positive integer (number or decimal string); returns it as a string.
local function task_id_text(id)
  if math.type(id) == "integer" and id > 0 then return string.format("%d", id) end
  if type(id) == "string" and #id <= 18 and id:match("^[1-9]%d*$") then return id end
  return nil
end

function M.valid_task_id(id) return task_id_text(id) ~= nil end

local function split(path)
  local parts = {}
  for c in path:gmatch("[^/]+") do parts[#parts + 1] = c end
  return parts
end

-- An absolute path without "." or empty components (".." is kept: what it
-- means depends on links, which realpath resolves).
local function absolute(path)
  if path:sub(1, 1) ~= "/" then path = assert(lfs.currentdir()) .. "/" .. path end
  local parts = {}
  for _, c in ipairs(split(path)) do
    if c ~= "." then parts[#parts + 1] = c end
  end
  return "/" .. table.concat(parts, "/")
end

-- Resolve "." and ".." and every symbolic link of the existing components,
-- like realpath(3), except that components that do not exist (yet) are
-- kept as they are.
function M.realpath(path)
  local todo = split(absolute(path))
  local done = {}
  local links = 0
  local i = 1
  while i <= #todo do
    local c = todo[i]
    i = i + 1
    if c == ".." then
      done[#done] = nil
    elseif c ~= "." then
      local candidate = "/" .. table.concat(done, "/") .. (#done > 0 and "/" or "") .. c
      local mode = lfs.symlinkattributes(candidate, "mode")
      if mode == "link" then
        links = links + 1
        if links > MAX_LINKS then fail("too many levels of symbolic links in %s", path) end
        local target = lfs.symlinkattributes(candidate, "target")
        if type(target) ~= "string" then fail("cannot read the symbolic link %s", candidate) end
        if target:sub(1, 1) == "/" then done = {} end
        -- The link's components replace it, then the rest follows.
        local rest = split(target)
        for k = i, #todo do rest[#rest + 1] = todo[k] end
        todo, i = rest, 1
      else
        done[#done + 1] = c
      end
    end
  end
  return "/" .. table.concat(done, "/")
end

local function inside(path, root)
  return path == root or root == "/" or path:sub(1, #root + 1) == root .. "/"
end

-- base/relative, refusing anything that could leave base.
function M.path(base, relative)
  if type(base) ~= "string" or base == "" then fail("the base folder must be a non-empty string") end
  if type(relative) ~= "string" then fail("a relative path must be a string, got %s", type(relative)) end
  if base:find("\0", 1, true) or relative:find("\0", 1, true) then fail("path contains a NUL byte") end
  if relative:sub(1, 1) == "/" then fail("absolute path not allowed here: %q", relative) end
  local parts = {}
  for _, c in ipairs(split(relative)) do
    if c == ".." then fail("'..' not allowed in a path: %q", relative) end
    if c ~= "." then parts[#parts + 1] = c end
  end
  local root = absolute(base)
  local full = #parts == 0 and root or (root == "/" and "" or root) .. "/" .. table.concat(parts, "/")
  local real_root = M.realpath(root)
  local real = M.realpath(full)
  if not inside(real, real_root) then
    fail("path %q leaves its folder through a symbolic link (resolves to %s)", relative, real)
  end
  return full
end

-- mkdir -p; raises when a component exists and is not a folder.
local function mkdirs(path)
  local sofar = ""
  for _, c in ipairs(split(path)) do
    sofar = sofar .. "/" .. c
    if lfs.attributes(sofar, "mode") ~= "directory" then
      local ok, err = lfs.mkdir(sofar)
      if not ok and lfs.attributes(sofar, "mode") ~= "directory" then
        -- Retriable: a full or read-only disk may be fixed, or another
        -- worker may have a writable workspace.
        error(errobj("workspace_failed", true, "cannot create folder %s: %s", sofar, tostring(err)), 0)
      end
    end
  end
end

-- The regular files under dir (links not followed), relative path -> size
-- in bytes; the host's own files (".vg-" names) are left out. At most
-- M.MAX_FILES, the first in name order (a folder's entries sorted).
M.MAX_FILES = 10000

function M.files(dir)
  local out, n = {}, 0
  local function walk(abs, rel)
    local names = {}
    local ok, iter, state = pcall(lfs.dir, abs)
    if not ok then return end
    for name in iter, state do
      if name ~= "." and name ~= ".." and name:sub(1, 4) ~= ".vg-" then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do
      if n >= M.MAX_FILES then return end
      local a, r = abs .. "/" .. name, rel and (rel .. "/" .. name) or name
      local attr = lfs.symlinkattributes(a)
      if attr and attr.mode == "directory" then
        walk(a, r)
      elseif attr and attr.mode == "file" then
        out[r] = attr.size
        n = n + 1
      end
    end
  end
  walk(dir, nil)
  return out
end

function M.missing(dir, files)
  local out = {}
  for rel, size in pairs(files) do
    local ok, full = pcall(M.path, dir, rel)
    local attr = ok and lfs.symlinkattributes(full)
    if not attr or attr.mode ~= "file" or attr.size ~= size then out[#out + 1] = rel end
  end
  table.sort(out)
  return out
end

-- The task's folder, root/<channel>/<task>, created (with root) if needed.
function M.task_dir(root, channel_id, task_id)
  if not M.valid_channel_id(channel_id) then
    fail("invalid channel id %q (must match ^[a-z0-9][a-z0-9_-]{0,63}$)", tostring(channel_id))
  end
  local tid = task_id_text(task_id)
  if not tid then fail("invalid task id %q (must be a positive integer)", tostring(task_id)) end
  if type(root) ~= "string" or root == "" then fail("VG_WORKSPACE must be a folder name") end
  root = absolute(root)
  mkdirs(M.realpath(root))
  local dir = M.path(root, channel_id .. "/" .. tid)
  mkdirs(M.realpath(dir))
  return dir
end

return M
