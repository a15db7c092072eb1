-- The step commands' own record of their runs (the "ticker" test pipeline):
-- lines "task pid nanoseconds [worker]", appended every 50 ms by the step
-- and by a child of its while they live. Used by the fencing specs and by
-- make chaos to judge overlap from the side effects themselves.
local M = {}

-- task -> list of runs {pid, worker, first, last, n} (nanoseconds of the
-- wall clock), in the order they started.
function M.runs(path)
  local runs = {}
  local f = io.open(path, "r")
  if not f then return runs end
  local by_key = {}
  for line in f:lines() do
    local task, pid, ns, worker = line:match("^(%d+) (%d+) (%d+) ?(%S*)")
    if task then
      task, ns = tonumber(task), tonumber(ns)
      local key = task .. ":" .. pid
      local r = by_key[key]
      if not r then
        r = { pid = pid, worker = worker, first = ns, last = ns, n = 0 }
        by_key[key] = r
        runs[task] = runs[task] or {}
        table.insert(runs[task], r)
      end
      r.first, r.last, r.n = math.min(r.first, ns), math.max(r.last, ns), r.n + 1
    end
  end
  f:close()
  for _, list in pairs(runs) do table.sort(list, function(a, b) return a.first < b.first end) end
  return runs
end

-- The overlaps: a list of {task, seconds, pids} where a run started while
-- the one before it still ran.
function M.overlaps(runs)
  local out = {}
  for task, list in pairs(runs) do
    for i = 2, #list do
      local gap = (list[i].first - list[i - 1].last) / 1e9
      if gap <= 0 then
        out[#out + 1] = { task = task, seconds = -gap, pids = { list[i - 1].pid, list[i].pid } }
      end
    end
  end
  return out
end

return M
