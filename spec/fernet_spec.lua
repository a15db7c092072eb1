-- require "vg.fernet": channel credentials as Fernet tokens, interoperable
-- with every other Fernet implementation (DESIGN section 7).
local fernet = require "vg.fernet"

-- The spec's vector (github.com/fernet/spec generate.json).
local SPEC_SECRET = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
local SPEC_TOKEN = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7"
                   .. "JcbmrR64jVmpU4IwqDA=="
local SPEC_TIME = 499162800
local SPEC_IV = string.char(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

-- Made by Python's cryptography 48 (key = bytes 100..131, at 2026-01-01).
local PY_KEY = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM="
local PY_TOKEN_BLOCK = "gAAAAABpVbkAAAAAAAAAAAAAAAAAAAAAAGYhNqVYJ4LwabCH0HAtVhJE3pry6dQ886pd3wuW4EzG"
                       .. "m5f0ZGPKWXfpGlyJo4b_EVO-jCzGF0ikLG_vhzwuWFw="
local PY_TIME = 1767225600

local function raises_invalid(fn, reason)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an invalid_token error")
  assert.equal("table", type(err))
  assert.equal("invalid_token", err.code)
  assert.is_false(err.retriable)
  if reason then assert.equal(reason, err.message) end
  assert.matches("^invalid_token: ", tostring(err))
  return err
end

-- Flip one character of a token's base64 (still valid base64).
local function flip(token, pos)
  local c = token:sub(pos, pos)
  local r = c == "A" and "B" or "A"
  return token:sub(1, pos - 1) .. r .. token:sub(pos + 1)
end

local function have_python_fernet()
  local p = io.popen("python3 -c 'import cryptography.fernet' 2>/dev/null && echo yes")
  if not p then return false end
  local out = p:read("a")
  p:close()
  return out:match("yes") ~= nil
end

describe("vg.fernet", function()
  it("round-trips text and binary data", function()
    local f = fernet.new(SPEC_SECRET)
    for _, msg in ipairs { "", "hello", '{"api_key":"sk-\u{e9}\u{2603}"}', "\0\255\1" .. ("x"):rep(100000) } do
      local token = f:encrypt(msg)
      assert.matches("^[A-Za-z0-9_%-]+=*$", token)
      assert.equal(msg, f:decrypt(token))
      assert.equal(msg, f:decrypt(token, 60))
    end
  end)

  it("uses a fresh IV for every token", function()
    local f = fernet.new(SPEC_SECRET)
    assert.are_not.equal(f:encrypt("same"), f:encrypt("same"))
  end)

  it("produces and decrypts the spec's vector", function()
    local f = fernet.new(SPEC_SECRET)
    assert.equal(SPEC_TOKEN, f:encrypt("hello", { time = SPEC_TIME, iv = SPEC_IV }))
    assert.equal("hello", f:decrypt(SPEC_TOKEN))
    assert.equal("hello", f:decrypt(SPEC_TOKEN, 60, { time = SPEC_TIME + 60 }))
  end)

  it("decrypts a token made by Python's cryptography (hard-coded)", function()
    local f = fernet.new(PY_KEY)
    assert.equal("0123456789abcdef", f:decrypt(PY_TOKEN_BLOCK))
    assert.equal(PY_TOKEN_BLOCK, f:encrypt("0123456789abcdef", { time = PY_TIME, iv = ("\0"):rep(16) }))
  end)

  it("interoperates with Python's cryptography both ways when it is installed", function()
    if not have_python_fernet() then
      pending("python3 with cryptography is not installed")
      return
    end
    local key = fernet.generate_key()
    local f = fernet.new(key)
    local ours = f:encrypt("from vg-host \u{2603}")
    local script = "import sys; from cryptography.fernet import Fernet; k = Fernet(sys.argv[1].encode()); "
                .. "print(k.decrypt(sys.argv[2].encode(), ttl=600).decode()); "
                .. "print(k.encrypt('from python \\u2603'.encode()).decode())"
    local p = assert(io.popen(string.format("python3 -c %q '%s' '%s'", script, key, ours)))
    local out = p:read("a")
    p:close()
    local decrypted, theirs = out:match("^(.-)\n(.-)\n$")
    assert.equal("from vg-host \u{2603}", decrypted)
    assert.equal("from python \u{2603}", f:decrypt(theirs, 600))
  end)

  it("rejects tampered tokens: every position", function()
    local f = fernet.new(SPEC_SECRET)
    local token = SPEC_TOKEN:gsub("=+$", "")
    -- The last character carries only padding bits in part; skip it.
    for pos = 1, #token - 1 do
      raises_invalid(function() f:decrypt(flip(token, pos)) end)
    end
  end)

  it("rejects truncated and malformed tokens", function()
    local f = fernet.new(SPEC_SECRET)
    raises_invalid(function() f:decrypt("") end, "malformed token")
    raises_invalid(function() f:decrypt(SPEC_TOKEN:sub(1, 40)) end, "malformed token")
    raises_invalid(function() f:decrypt(SPEC_TOKEN:sub(1, #SPEC_TOKEN - 8)) end)
    raises_invalid(function() f:decrypt("not a token at all!") end, "malformed token")
    raises_invalid(function() f:decrypt(SPEC_TOKEN .. "AAAA") end)
  end)

  it("rejects a token made with another key", function()
    local other = fernet.new(fernet.generate_key())
    raises_invalid(function() other:decrypt(SPEC_TOKEN) end, "invalid signature")
  end)

  it("rejects expired tokens and tokens from the future when a ttl is given", function()
    local f = fernet.new(SPEC_SECRET)
    raises_invalid(function() f:decrypt(SPEC_TOKEN, 60) end, "token expired")
    raises_invalid(function() f:decrypt(SPEC_TOKEN, 60, { time = SPEC_TIME + 61 }) end, "token expired")
    local future = f:encrypt("later", { time = os.time() + 3600 })
    raises_invalid(function() f:decrypt(future, 60) end, "token from the future")
    assert.equal("later", f:decrypt(future))   -- no ttl: no time checks
  end)

  it("generates distinct 32-byte url-safe keys that work", function()
    local a, b = fernet.generate_key(), fernet.generate_key()
    assert.equal(44, #a)
    assert.matches("^[A-Za-z0-9_%-]+=$", a)
    assert.are_not.equal(a, b)
    local f = fernet.new(a)
    assert.equal("x", f:decrypt(f:encrypt("x")))
  end)

  it("defaults to FERNET_KEY from the environment", function()
    local bin = os.getenv("VG_HOST_BIN") or "build/vg-host"
    local script = os.tmpname()
    local fh = assert(io.open(script, "w"))
    fh:write([[
      local fernet = require "vg.fernet"
      local ok, f = pcall(fernet.new)
      if not ok then print("error " .. tostring(f.code)); return end
      print("token " .. f:encrypt("from env"))
    ]])
    fh:close()
    local function run(key)
      local p = assert(io.popen(string.format("FERNET_KEY='%s' %s %s 2>&1", key, bin, script)))
      local out = p:read("a")
      p:close()
      return out
    end
    local good = run(SPEC_SECRET)
    local bad = run("not-a-key")
    os.remove(script)
    local token = good:match("token (%S+)")
    assert.is_not_nil(token, good)
    assert.equal("from env", fernet.new(SPEC_SECRET):decrypt(token))
    assert.matches("error invalid_key", bad)
    assert.is_nil(bad:find("not-a-key", 1, true))
  end)

  it("rejects bad keys without echoing them", function()
    for _, k in ipairs { "short", SPEC_SECRET:gsub("_", "/"), SPEC_SECRET .. "AAAA" } do
      local ok, err = pcall(fernet.new, k)
      assert.is_false(ok)
      assert.equal("invalid_key", err.code)
      assert.is_false(err.retriable)
      assert.is_nil(tostring(err):find(k, 1, true))
    end
  end)

  it("never shows the key", function()
    local f = fernet.new(SPEC_SECRET)
    local s = tostring(f)
    assert.is_nil(s:find(SPEC_SECRET, 1, true))
    assert.matches("key hidden", s)
    assert.equal("locked", getmetatable(f))
  end)

  it("refuses to work after close", function()
    local f = fernet.new(SPEC_SECRET)
    f:close()
    assert.has_error(function() f:encrypt("x") end)
    do
      local g <close> = fernet.new(SPEC_SECRET)
      assert.equal("y", g:decrypt(g:encrypt("y")))
    end
  end)
end)
