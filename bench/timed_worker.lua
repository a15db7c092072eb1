-- bench/timed_worker.lua: lua/worker.lua with every claim timed, for the
-- scale matrix's claim latency (bench/scale.lua). It wraps vg.queue's
-- Queue:claim and Queue:complete_claim (an unbatched slot's next claim,
-- sent with its complete), the calls every claim of the consumer goes
-- through, and writes one line per claim to BENCH_CLAIM_LOG: milliseconds
-- from the call to its answer, as the worker saw it (waiting for a pool connection,
-- sending, the server's work, the answer's rows decoded), then the number
-- of tasks it returned. Nothing else changes: then it runs the worker
-- script (BENCH_WORKER_SCRIPT) as vg-host would.
--
-- The lines go through a buffered file that the process's exit flushes
-- (vg-host leaves through exit() on every path), so timing adds one
-- formatted write to memory per claim.
local dir = assert(os.getenv("BENCH_LUA_DIR"), "BENCH_LUA_DIR is not set")
package.path = dir .. "/?.lua;" .. package.path

local vg = require "vg"
local queue = require "vg.queue"

local out = assert(io.open(assert(os.getenv("BENCH_CLAIM_LOG"), "BENCH_CLAIM_LOG is not set"), "w"))
out:setvbuf("full", 1 << 16)

local Queue = getmetatable(queue.new { worker_id = "timed", instance = "timed" })
local claim, complete_claim = Queue.claim, Queue.complete_claim
local function record(t0, rows)
  out:write(string.format("%.4f %d\n", (vg.now() - t0) * 1000, #rows))
end
function Queue.claim(self, n)
  local t0 = vg.now()
  local rows = claim(self, n)
  record(t0, rows)
  return rows
end
-- An unbatched slot's claim that goes with its complete: timed the same
-- way (its round trip then carries the complete too).
function Queue.complete_claim(self, task, result, n)
  local t0 = vg.now()
  local done, rows = complete_claim(self, task, result, n)
  record(t0, rows)
  return done, rows
end

dofile(os.getenv("BENCH_WORKER_SCRIPT") or (dir .. "/worker.lua"))
out:close()
