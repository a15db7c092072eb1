-- Configuration from the environment (checked with stand-in environments).
local config = require "vg.config"

local KEY = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="

local function check(env, required)
  return config.check(required or { "DATABASE_URL", "FERNET_KEY" }, env)
end

local function has_problem(problems, pattern)
  for _, p in ipairs(problems) do
    if p:find(pattern) then return true end
  end
  return false
end

describe("config.check", function()
  it("accepts a complete environment and applies the defaults", function()
    local v, problems = check { DATABASE_URL = "postgresql://u:p@db/app", FERNET_KEY = KEY }
    assert.same({}, problems)
    assert.equal(10, v.VG_DB_POOL_SIZE)
    assert.equal(5, v.VG_DB_MAX_OVERFLOW)
    assert.equal(30, v.VG_DB_POOL_TIMEOUT)
    assert.is_true(v.VG_DB_PRE_PING)
    assert.equal(1, v.VG_CONCURRENCY)
    assert.equal(30, v.VG_SHUTDOWN_GRACE)
    assert.equal(60, v.VG_HEARTBEAT_INTERVAL)
    assert.equal(5, v.VG_POLL_INTERVAL)
    assert.equal("info", v.LOG_LEVEL)
    assert.equal("json", v.LOG_FORMAT)
    assert.equal("worker-local", v.worker_id)
  end)

  it("reports every problem at once", function()
    local _, problems = check {
      DATABASE_URL = "mysql://x", FERNET_KEY = "short", VG_CONCURRENCY = "abc",
      VG_SHUTDOWN_GRACE = "-3", LOG_LEVEL = "loud",
    }
    assert.equal(5, #problems)
    assert.is_true(has_problem(problems, "DATABASE_URL"))
    assert.is_true(has_problem(problems, "FERNET_KEY"))
    assert.is_true(has_problem(problems, "VG_CONCURRENCY must be a whole number"))
    assert.is_true(has_problem(problems, "VG_SHUTDOWN_GRACE"))
    assert.is_true(has_problem(problems, "LOG_LEVEL"))
  end)

  it("names missing required variables", function()
    local _, problems = check({}, { "DATABASE_URL", "FERNET_KEY" })
    assert.equal(2, #problems)
    assert.is_true(has_problem(problems, "DATABASE_URL is required"))
    assert.is_true(has_problem(problems, "FERNET_KEY is required"))
  end)

  it("normalises asyncpg and postgres URLs", function()
    local v = check { DATABASE_URL = "postgresql+asyncpg://u:p@db:5432/app", FERNET_KEY = KEY }
    assert.equal("postgresql://u:p@db:5432/app", v.DATABASE_URL)
    v = check { DATABASE_URL = "postgres://u@db/app", FERNET_KEY = KEY }
    assert.equal("postgresql://u@db/app", v.DATABASE_URL)
  end)

  it("never echoes a bad FERNET_KEY", function()
    local secret = "not-a-real-key-but-secret-material-000000000"
    local _, problems = check { DATABASE_URL = "postgresql://db/app", FERNET_KEY = secret }
    assert.equal(1, #problems)
    assert.is_nil(problems[1]:find(secret, 1, true))
  end)

  it("never echoes a password from a bad DATABASE_URL", function()
    local _, problems = check { DATABASE_URL = "mysql://u:hunter2@db/app", FERNET_KEY = KEY }
    assert.equal(1, #problems)
    assert.is_nil(problems[1]:find("hunter2", 1, true))
  end)

  it("validates numbers instead of truncating them", function()
    for _, bad in ipairs { "10abc", "1.5", "0", "", " " } do
      local _, problems = check { DATABASE_URL = "postgresql://db/a", FERNET_KEY = KEY,
                                  VG_CONCURRENCY = bad }
      if bad:match("%S") then
        assert.equal(1, #problems, "VG_CONCURRENCY=" .. bad)
      end
    end
  end)

  it("accepts durations with units", function()
    local v = check { DATABASE_URL = "postgresql://db/a", FERNET_KEY = KEY,
                      VG_POLL_INTERVAL = "500ms", VG_SHUTDOWN_GRACE = "2m", VG_DB_PRE_PING = "off" }
    assert.equal(0.5, v.VG_POLL_INTERVAL)
    assert.equal(120, v.VG_SHUTDOWN_GRACE)
    assert.is_false(v.VG_DB_PRE_PING)
  end)
end)

describe("worker_id", function()
  local function wid(env)
    env.DATABASE_URL = "postgresql://db/a"
    env.FERNET_KEY = KEY
    return (check(env)).worker_id
  end

  it("prefers WORKER_ID", function()
    assert.equal("worker-7", wid { WORKER_ID = "worker-7", RAILWAY_SERVICE_NAME = "svc" })
  end)

  it("uses the Railway service name with a short replica suffix", function()
    assert.equal("worker", wid { RAILWAY_SERVICE_NAME = "worker" })
    assert.equal("worker-3f9a2c", wid { RAILWAY_SERVICE_NAME = "worker",
                                        RAILWAY_REPLICA_ID = "3f9a2c71-aaaa-bbbb" })
  end)

  it("falls back to worker-local", function()
    assert.equal("worker-local", wid {})
  end)
end)

describe("config.redacted", function()
  it("hides the password and the key", function()
    local v = check { DATABASE_URL = "postgresql://u:s3cret@db/app", FERNET_KEY = KEY }
    local r = config.redacted(v)
    assert.equal("postgresql://u:***@db/app", r.DATABASE_URL)
    assert.equal("***", r.FERNET_KEY)
    assert.equal(v.VG_CONCURRENCY, r.VG_CONCURRENCY)
  end)
end)
