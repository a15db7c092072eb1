-- Split a Railway start (or pre-deploy) command into the argv Railway runs.
--
--   lua5.4 tests/start_command.lua 'COMMAND'    one word per line on stdout
--
-- Railway runs a Dockerfile service's start command in exec form, without a
-- shell, and its documentation wraps a command that needs variables as
--   /bin/sh -c "exec python main.py --port $PORT"
-- (https://docs.railway.com/deployments/start-command): the double quotes
-- make one word of the shell's script, and $PORT is not expanded before the
-- shell sees it. So the command is split into words as a POSIX shell splits
-- them, with no expansion of any kind:
--   - blanks (space, tab, newline) separate words;
--   - '...' keeps everything inside as it is;
--   - "..." keeps everything inside, a backslash escaping only \ " $ `;
--   - outside quotes a backslash keeps the next character as it is;
--   - $, `, *, ;, |, &, <, > are plain characters: nothing expands them.
-- Keep to blanks and quotes: Railway documents no more than that.
--
-- Exits 1, with the reason on stderr, for an unterminated quote, a word that
-- holds a newline, or something only a shell would understand (a $ or ` that
-- is not inside single quotes, or ; | & < > outside quotes) in a word that
-- is not the script of `sh -c`: Railway would pass it on as it is.
local cmd = arg[1]
if not cmd then
  io.stderr:write("usage: lua5.4 tests/start_command.lua 'COMMAND'\n")
  os.exit(2)
end

local words, shellish = {}, {}
local word, in_word, shell_syntax = {}, false, nil
local i, n = 1, #cmd

local function finish()
  if in_word then
    words[#words + 1] = table.concat(word)
    shellish[#words] = shell_syntax
  end
  word, in_word, shell_syntax = {}, false, nil
end

local function fail(msg)
  io.stderr:write("start command: ", msg, "\n  in: ", cmd, "\n")
  os.exit(1)
end

while i <= n do
  local c = cmd:sub(i, i)
  if c == " " or c == "\t" or c == "\n" then
    finish()
  elseif c == "'" then
    in_word = true
    local j = cmd:find("'", i + 1, true)
    if not j then fail("unterminated single quote") end
    word[#word + 1] = cmd:sub(i + 1, j - 1)
    i = j
  elseif c == '"' then
    in_word = true
    i = i + 1
    while true do
      if i > n then fail("unterminated double quote") end
      local d = cmd:sub(i, i)
      if d == '"' then break end
      if d == "\\" and i < n and cmd:sub(i + 1, i + 1):match('[\\"$`]') then
        i = i + 1
        d = cmd:sub(i, i)
      elseif d == "$" or d == "`" then
        shell_syntax = shell_syntax or d
      end
      word[#word + 1] = d
      i = i + 1
    end
  elseif c == "\\" then
    in_word = true
    if i == n then fail("a backslash at the end") end
    i = i + 1
    word[#word + 1] = cmd:sub(i, i)
  else
    in_word = true
    if c:match("[$`;|&<>]") then shell_syntax = shell_syntax or c end
    word[#word + 1] = c
  end
  i = i + 1
end
finish()

if #words == 0 then fail("no words") end
local shells = { ["sh"] = true, ["/bin/sh"] = true, ["bash"] = true, ["/bin/bash"] = true,
                 ["/usr/bin/sh"] = true, ["/usr/bin/bash"] = true, ["dash"] = true }
for k, w in ipairs(words) do
  if w:find("\n", 1, true) then fail("word " .. k .. " holds a newline") end
  local script_of_sh = k >= 3 and words[k - 1] == "-c" and shells[words[k - 2]]
  if shellish[k] and not script_of_sh then
    fail(string.format("word %d (%s) holds %s, which Railway passes on as it is "
      .. "(no shell): wrap the command in /bin/sh -c \"exec ...\"", k, w, shellish[k]))
  end
end
io.write(table.concat(words, "\n"), "\n")
