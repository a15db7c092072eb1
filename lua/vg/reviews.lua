-- Decisions at review gates, shared by lua/review.lua (the terminal) and
-- lua/web.lua (the review screen).
--
-- reviews.decide(command, task_id, actor, reason) -> step | nil, message
--   command "approve" or "reject". Only a task in awaiting_review can be
--   decided. approve sets it to approved: claimable again at once, it
--   resumes at the step after the gate. reject sets it to rejected, a final
--   state. Either way an audit_logs row (actor, action task_approved /
--   task_rejected, task_id, details {step, reason}) is written in the same
--   transaction.
local db = require "vg.db"
local cjson = require "cjson"

local M = {}

local DECIDE = {
  approve = { status = "approved", action = "task_approved" },
  reject = { status = "rejected", action = "task_rejected" },
}

function M.decide(command, task_id, actor, reason)
  local d = assert(DECIDE[command], "command must be approve or reject")
  local res = db.transaction(function(tx)
    local row = tx:query("SELECT id, status, current_step FROM tasks WHERE id = $1 FOR UPDATE",
                         task_id)[1]
    if not row then return { err = string.format("task %d not found", task_id) } end
    if row.status ~= "awaiting_review" then
      return { err = string.format("task %d is %s, not awaiting_review", task_id, row.status) }
    end
    local step = row.current_step ~= db.null and row.current_step or nil
    -- approved is claimable; run_at now so it is due at once (the
    -- status change wakes the workers through the vg_tasks trigger).
    tx:query([[UPDATE tasks SET status = $2, run_at = CASE WHEN $2 = 'approved' THEN now() ELSE run_at END,
                                last_error = NULL
                WHERE id = $1]], task_id, d.status)
    local details = { step = step, reason = reason }
    tx:query("INSERT INTO audit_logs (actor, action, task_id, details) VALUES ($1, $2, $3, $4::jsonb)",
             actor, d.action, task_id, cjson.encode(details))
    return { step = step or "?" }
  end)
  return res.step, res.err
end

return M
