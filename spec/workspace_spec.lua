-- vg.workspace: per-channel, per-task folders, and paths that cannot leave
-- their folder (traversal with "..", absolute parts, symbolic links).
local lfs = require "lfs"
local workspace = require "vg.workspace"

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

local function unsafe(fn, pattern)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an unsafe_path error")
  assert.equal("table", type(err), tostring(err))
  assert.equal("unsafe_path", err.code)
  assert.is_false(err.retriable)
  if pattern then assert.matches(pattern, err.message) end
  assert.matches("^unsafe_path: ", tostring(err))
end

describe("vg.workspace", function()
  local root, outside

  before_each(function()
    root = tmpdir()
    outside = tmpdir()
  end)

  after_each(function()
    rm_rf(root)
    rm_rf(outside)
  end)

  describe("task_dir", function()
    it("creates root/<channel>/<task> and returns its absolute path", function()
      local dir = workspace.task_dir(root .. "/ws", "pv-news", 42)
      assert.equal(root .. "/ws/pv-news/42", dir)
      assert.equal("directory", lfs.attributes(dir, "mode"))
      -- Again: the folder exists already, same answer.
      assert.equal(dir, workspace.task_dir(root .. "/ws", "pv-news", "42"))
    end)

    it("makes a relative root absolute", function()
      local cwd = lfs.currentdir()
      assert(lfs.chdir(root))
      local ok, dir = pcall(workspace.task_dir, "./workspace", "c1", 7)
      lfs.chdir(cwd)
      assert.is_true(ok, tostring(dir))
      assert.equal(root .. "/workspace/c1/7", dir)
    end)

    it("rejects bad channel ids", function()
      for _, id in ipairs { "", "..", ".", "../etc", "a/b", "A", "-lead", "_x", "a b", "a\0b",
                            "x" .. ("y"):rep(64), "caf\u{e9}", 5 } do
        unsafe(function() workspace.task_dir(root, id, 1) end, "invalid channel id")
      end
    end)

    it("rejects task ids that are not positive integers", function()
      for _, id in ipairs { 0, -1, 1.5, "1.5", "01", "1/..", "..", "", "1e3", "abc" } do
        unsafe(function() workspace.task_dir(root, "c1", id) end, "invalid task id")
      end
    end)

    it("refuses a channel folder that is a link out of the root", function()
      assert(lfs.link(outside, root .. "/evil", true))
      unsafe(function() workspace.task_dir(root, "evil", 1) end, "symbolic link")
      assert.is_nil(lfs.attributes(outside .. "/1"))
    end)

    it("accepts a root that is itself reached through a link", function()
      assert(lfs.link(outside, root .. "/ws", true))
      local dir = workspace.task_dir(root .. "/ws", "c1", 3)
      assert.equal(root .. "/ws/c1/3", dir)
      assert.equal("directory", lfs.attributes(outside .. "/c1/3", "mode"))
    end)
  end)

  describe("path", function()
    it("joins relative paths inside the folder", function()
      assert.equal(root .. "/a/b.png", workspace.path(root, "a/b.png"))
      assert.equal(root .. "/a/b.png", workspace.path(root, "./a//b.png"))
      assert.equal(root .. "/final.mp4", workspace.path(root .. "/", "final.mp4"))
      assert.equal(root, workspace.path(root, "."))
      assert.equal(root .. "/x..y", workspace.path(root, "x..y"))
    end)

    it("rejects '..' components", function()
      for _, p in ipairs { "..", "../x", "a/../../x", "a/..", "a/b/../../../etc/passwd", "./../x" } do
        unsafe(function() workspace.path(root, p) end, "'..'")
      end
    end)

    it("rejects absolute paths", function()
      for _, p in ipairs { "/etc/passwd", "/", "//x" } do
        unsafe(function() workspace.path(root, p) end, "absolute")
      end
    end)

    it("rejects NUL bytes and non-strings", function()
      unsafe(function() workspace.path(root, "a\0/../../x") end, "NUL")
      unsafe(function() workspace.path(root, nil) end)
      unsafe(function() workspace.path(root, { "a" }) end)
    end)

    it("rejects a symbolic link that resolves outside the folder", function()
      assert(lfs.link(outside, root .. "/out", true))
      unsafe(function() workspace.path(root, "out") end, "symbolic link")
      unsafe(function() workspace.path(root, "out/secret.txt") end, "symbolic link")
    end)

    it("rejects relative links that climb out, and links to links", function()
      assert(lfs.mkdir(root .. "/sub"))
      assert(lfs.link("../..", root .. "/sub/up", true))
      unsafe(function() workspace.path(root, "sub/up/x") end, "symbolic link")
      assert(lfs.link("sub/up", root .. "/chain", true))
      unsafe(function() workspace.path(root, "chain") end, "symbolic link")
      assert(lfs.link("/etc/passwd", root .. "/passwd", true))
      unsafe(function() workspace.path(root, "passwd") end, "symbolic link")
    end)

    it("allows links that stay inside the folder", function()
      assert(lfs.mkdir(root .. "/real"))
      assert(lfs.link("real", root .. "/alias", true))
      assert(lfs.link(root .. "/real", root .. "/abs_alias", true))
      assert.equal(root .. "/alias/f.png", workspace.path(root, "alias/f.png"))
      assert.equal(root .. "/abs_alias/f.png", workspace.path(root, "abs_alias/f.png"))
    end)

    it("reports link loops", function()
      assert(lfs.link("loop2", root .. "/loop1", true))
      assert(lfs.link("loop1", root .. "/loop2", true))
      unsafe(function() workspace.path(root, "loop1/x") end, "too many levels")
    end)

    it("allows paths that do not exist yet", function()
      assert.equal(root .. "/new/dir/file", workspace.path(root, "new/dir/file"))
    end)
  end)

  it("realpath resolves links and dots like realpath(3)", function()
    assert(lfs.mkdir(root .. "/d"))
    assert(lfs.link("d", root .. "/l", true))
    local real_root = workspace.realpath(root)
    assert.equal(real_root .. "/d/x", workspace.realpath(root .. "/l/./x"))
    assert.equal(real_root, workspace.realpath(root .. "/d/.."))
  end)
end)
