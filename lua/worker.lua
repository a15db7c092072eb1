-- vg-host lua/worker.lua: one worker process. Start more of them against the
-- same database to add capacity.
local worker = require "vg.worker"
local vg = require "vg"

worker.run {
  -- Until the queue is wired in, an iteration just waits for work.
  body = function(state)
    vg.sleep(state.config.VG_POLL_INTERVAL)
  end,
}
