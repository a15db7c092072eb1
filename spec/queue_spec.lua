-- Claiming, priorities, channel fairness, fencing, retries and release,
-- against the real PostgreSQL (TEST_DATABASE_URL).
local vg = require "vg"
local tdb = require "spec.support.db"
local queue = require "vg.queue"

local describe_db = tdb.available() and describe or pending

describe_db("the queue", function()
  local db, q

  setup(function()
    db = tdb.setup()
    q = queue.new { worker_id = "spec-worker", instance = "spec:1", lease_seconds = 30,
                    retry_base = 0.5, retry_max = 2 }
  end)

  before_each(function() tdb.reset() end)

  it("claims high before normal before low", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { priority = "low" })
    tdb.enqueue("c1", 1, { priority = "normal" })
    tdb.enqueue("c1", 1, { priority = "high" })
    local order = {}
    for _ = 1, 3 do order[#order + 1] = q:claim(1)[1].priority end
    assert.same({ "high", "normal", "low" }, order)
    assert.same({}, q:claim(1))
  end)

  it("claims oldest first within a channel and priority", function()
    tdb.channel("c1")
    local ids = tdb.enqueue("c1", 5)
    for i = 1, 5 do assert.equal(ids[i], q:claim(1)[1].id) end
  end)

  it("does not let a channel's backlog delay another channel's first task", function()
    tdb.channel("big")
    tdb.channel("small")
    tdb.enqueue("big", 1000)
    local small = tdb.enqueue("small", 1)[1]
    local seen = {}
    for i = 1, 2 do seen[i] = q:claim(1)[1] end
    assert.is_true(seen[1].id == small or seen[2].id == small)
    -- and round-robin continues: the next claims alternate between channels
    tdb.enqueue("small", 2)
    local channels = {}
    for i = 1, 4 do channels[i] = q:claim(1)[1].channel_id end
    assert.same({ "big", "small", "big", "small" }, channels)
  end)

  it("does not claim tasks whose run_at is in the future", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { delay = 3600 })
    assert.same({}, q:claim(1))
    local due = q:next_due()
    assert.is_true(due > 3500 and due <= 3600)
  end)

  it("keys due delayed tasks by a promote statement that claimed rows ask for, 100 at a time", function()
    tdb.channel("c1")
    tdb.channel("c2")
    tdb.enqueue("c1", 3)
    local delayed = tdb.enqueue("c2", 150, { delay = 0.2 })
    local first = q:claim(1)[1]
    assert.is_false(first.promote) -- nothing due without a key yet
    assert.equal(0, q:promote())
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE channel_id = 'c2' AND run_at <= now()") == 150
    end, 5, 0.01))
    local second = q:claim(1)[1]
    assert.equal("c1", second.channel_id) -- a claim gives no keys
    assert.is_true(second.promote)
    assert.equal(queue.PROMOTE_LIMIT, q:promote())
    assert.equal(50, q:promote())
    assert.equal(0, q:promote())
    -- keyed in order, from the round being served, behind c1 waiting in it
    assert.equal("c1", q:claim(1)[1].channel_id)
    local fourth = q:claim(1)[1]
    assert.equal(delayed[1], fourth.id)
    assert.is_false(fourth.promote)
    assert.equal(0, tdb.count("SELECT count(*) FROM tasks WHERE fair_key IS NULL AND status = 'pending'"))
  end)

  it("gives concurrent claimers distinct tasks (SKIP LOCKED)", function()
    tdb.channel("c1")
    tdb.channel("c2")
    tdb.enqueue("c1", 30)
    tdb.enqueue("c2", 30)
    local got, tasks = {}, {}
    for i = 1, 20 do
      tasks[i] = vg.spawn(function()
        local mine = {}
        for _ = 1, 3 do
          for _, t in ipairs(q:claim(1)) do mine[#mine + 1] = t.id end
        end
        return mine
      end)
    end
    local total = 0
    for i = 1, 20 do
      for _, id in ipairs(tasks[i]:join()) do
        assert.is_nil(got[id], "task " .. id .. " claimed twice")
        got[id] = true
        total = total + 1
      end
    end
    assert.equal(60, total)
  end)

  it("claims a batch in one statement, fairly across channels", function()
    tdb.channel("c1")
    tdb.channel("c2")
    tdb.enqueue("c1", 10)
    tdb.enqueue("c2", 10)
    local batch = q:claim(2)
    assert.equal(2, #batch)
    assert.are_not.equal(batch[1].channel_id, batch[2].channel_id)
  end)

  it("claims a batch from the highest priority only, round-robin: every channel's first task, then its second", function()
    tdb.channel("c1")
    tdb.channel("c2")
    tdb.channel("c3")
    local c1 = tdb.enqueue("c1", 4)
    local c2 = tdb.enqueue("c2", 4)
    local high = tdb.enqueue("c3", 1, { priority = "high" })[1]
    local low = tdb.enqueue("c3", 1, { priority = "low" })[1]
    -- which tasks a claim takes (the order of its rows is not promised)
    local function ids(batch)
      local got = {}
      for i, t in ipairs(batch) do got[i] = t.id end
      table.sort(got)
      return got
    end
    local function sorted(t) table.sort(t) return t end
    -- the high task alone: nothing of a lower priority in the same batch
    assert.same({ high }, ids(q:claim(6)))
    -- c1 and c2 in turn; not c1's four oldest (the oldest tasks overall)
    assert.same(sorted { c1[1], c2[1], c1[2], c2[2], c1[3] }, ids(q:claim(5)))
    -- c1 and c2 were both served by that statement (the same instant, so
    -- their id decides): c1's last, then c2's next
    assert.same(sorted { c1[4], c2[3] }, ids(q:claim(2)))
    assert.same({ c2[4] }, ids(q:claim(10)))
    assert.same({ low }, ids(q:claim(10)))
    assert.same({}, q:claim(10))
  end)

  it("gives concurrent batch claimers distinct tasks, each claimed once", function()
    for i = 1, 4 do
      tdb.channel("c" .. i)
      tdb.enqueue("c" .. i, 50)
    end
    local got, runners = {}, {}
    for i = 1, 8 do
      runners[i] = vg.spawn(function()
        local mine = {}
        while true do
          local batch = q:claim(7)
          if #batch == 0 then break end
          for _, t in ipairs(batch) do mine[#mine + 1] = t.id end
        end
        return mine
      end)
    end
    local total = 0
    for i = 1, 8 do
      for _, id in ipairs(runners[i]:join()) do
        assert.is_nil(got[id], "task " .. id .. " claimed twice")
        got[id] = true
        total = total + 1
      end
    end
    assert.equal(200, total)
    assert.equal(200, tdb.count("SELECT count(*) FROM tasks WHERE status = 'claimed' AND attempts = 1"))
  end)

  it("keeps updated_at and completed_at right whoever writes the row", function()
    tdb.channel("c1")
    local id = tdb.enqueue("c1", 1)[1]
    local function row()
      return db.query([[SELECT status, completed_at IS NOT NULL AS done,
                               updated_at > created_at AS touched FROM tasks WHERE id = $1]], id)[1]
    end
    -- an admin's plain UPDATE, in a later transaction
    db.query("SELECT pg_sleep(0.01)")
    db.query("UPDATE tasks SET status = 'failed' WHERE id = $1", id)
    assert.same({ status = "failed", done = true, touched = true }, row())
    db.query("UPDATE tasks SET status = 'pending', run_at = now() WHERE id = $1", id)
    assert.same({ status = "pending", done = false, touched = true }, row())
    -- the queue's own statements
    local t = q:claim(1)[1]
    assert.is_true(q:complete(t, { ok = true }))
    assert.same({ status = "completed", done = true, touched = true }, row())
  end)

  -- The trigger's lookups are planned once per session, often while the
  -- queue is drained and its statistics say nothing is pending: every plan
  -- looks free then. A plan that scans the claimable tasks made each row of
  -- a large INSERT read every row queued before it (sql/007): 20,000 rows
  -- took minutes. Counted in buffers, not time: the pages one INSERT reads
  -- per row stay flat as the burst grows.
  it("enqueues a burst into a drained queue reading a flat number of pages per task", function()
    for i = 1, 4 do tdb.channel("c" .. i) end
    local function burst(n)
      local plan = db.query(([[EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
        INSERT INTO tasks (channel_id, pipeline)
        SELECT 'c' || (1 + g %% 4), 'noop' FROM generate_series(1, %d) g]]):format(n))[1]
      local top = plan["QUERY PLAN"][1].Plan
      return (top["Shared Hit Blocks"] + top["Shared Read Blocks"]) / n
    end
    -- Drained: every task completed, and the statistics say so.
    burst(500)
    db.query("UPDATE tasks SET status = 'completed', completed_at = now()")
    db.query("ANALYZE tasks")
    local small = burst(300)
    local large = burst(3000)
    assert.equal(3300, tdb.count("SELECT count(*) FROM tasks WHERE status = 'pending'"))
    assert.is_true(large < 60, ("%.1f pages per task in a burst of 3,000"):format(large))
    assert.is_true(large < small * 2, ("%.1f pages per task at 3,000 against %.1f at 300"):format(large, small))
  end)

  it("notifies once when many tasks become claimable in one statement, and not for claims", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 300)
    db.listen("vg_tasks")
    while db.wait_notification(0) do end
    local batch = q:claim(300)
    assert.equal(300, #batch)
    for i = 1, 100 do assert.is_true(q:complete(batch[i])) end
    assert.is_nil(db.wait_notification(0.2))
    -- 200 back to the queue at once (as a rescue or an admin would)
    db.query("UPDATE tasks SET status = 'retry', run_at = now() WHERE status = 'claimed'")
    local n = db.wait_notification(5)
    assert.is_not_nil(n)
    assert.is_nil(db.wait_notification(0.2))
    -- a retry due later says when
    local t = q:claim(1)[1]
    local status = q:fail(t, "boom", true)
    assert.equal("retry", status)
    n = db.wait_notification(5)
    assert.is_not_nil(n)
    local at = db.query("SELECT extract(epoch FROM run_at)::float8 AS at FROM tasks WHERE id = $1", t.id)[1].at
    assert.near(at, tonumber(n.payload), 0.001)
    db.unlisten("vg_tasks")
  end)

  it("fences writes: a late result from a lost lease is rejected", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1)
    local t = q:claim(1)[1]
    assert.equal(1, t.attempts)
    -- the lease expires and the task is rescued
    db.query("UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1", t.id)
    local _, rescued = q:rescue()
    assert.equal(1, #rescued)
    assert.equal("retry", rescued[1].status)
    -- the old holder can no longer write anything
    assert.is_false(q:complete(t, { late = true }))
    assert.is_nil((q:fail(t, "late failure", true)))
    assert.is_false(q:release(t))
    -- someone else claims it and completes it
    local t2 = q:claim(1)[1]
    assert.equal(t.id, t2.id)
    assert.is_true(t2.lease_token > t.lease_token)
    assert.is_true(q:complete(t2, { ok = true }))
    local row = db.query("SELECT status, result FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("completed", row.status)
    assert.same({ ok = true }, row.result)
  end)

  it("completes a task and claims the next in fair order in one statement, fenced", function()
    tdb.channel("a")
    tdb.channel("b")
    local a = tdb.enqueue("a", 3)
    local b = tdb.enqueue("b", 1)
    local t = q:claim(1)[1]
    assert.equal(a[1], t.id)
    -- Done, and the next turn is channel b's, not a's second task.
    local done, rows = q:complete_claim(t, { n = 1 })
    assert.is_true(done)
    assert.equal(1, #rows)
    local nxt = rows[1]
    assert.equal(b[1], nxt.id)
    assert.equal("claimed", nxt.status)
    assert.equal(1, nxt.attempts)
    assert.is_false(nxt.promote)
    assert.is_nil(nxt.completed)
    local row = db.query("SELECT status, result, lease_expires_at FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("completed", row.status)
    assert.same({ n = 1 }, row.result)
    assert.equal(db.null, row.lease_expires_at)
    -- A lost lease: the result is rejected, the claim still goes ahead.
    db.query("UPDATE tasks SET lease_token = lease_token + 1 WHERE id = $1", nxt.id)
    done, rows = q:complete_claim(nxt, { late = true })
    assert.is_false(done)
    assert.same({ a[2] }, { rows[1].id })
    assert.equal("claimed", db.query("SELECT status FROM tasks WHERE id = $1", nxt.id)[1].status)
    -- Nothing left to claim: one row still says whether the task was done.
    done, rows = q:complete_claim(rows[1])
    assert.is_true(done)
    assert.same({ a[3] }, { rows[1].id })
    done, rows = q:complete_claim(rows[1])
    assert.is_true(done)
    assert.same({}, rows)
    assert.equal(3, tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'"))
  end)

  it("renews leases it holds and reports the ones it lost", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 2)
    local a, b = q:claim(1)[1], q:claim(1)[1]
    db.query("UPDATE tasks SET lease_token = lease_token + 1 WHERE id = $1", b.id)
    local still = q:renew { a, b }
    assert.is_true(still[a.id])
    assert.is_nil(still[b.id])
  end)

  it("retries retriable failures with back-off, then fails", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { max_attempts = 2 })
    local t = q:claim(1)[1]
    local status = q:fail(t, "temporary", true)
    assert.equal("retry", status)
    local wait = db.query("SELECT extract(epoch FROM run_at - now())::float8 AS s FROM tasks WHERE id = $1", t.id)[1].s
    assert.is_true(wait > 0.2 and wait <= 0.5, "back-off " .. wait)
    assert.same({}, q:claim(1)) -- not before its run_at
    db.query("UPDATE tasks SET run_at = now() WHERE id = $1", t.id)
    local t2 = q:claim(1)[1]
    assert.equal(2, t2.attempts)
    assert.equal("failed", (q:fail(t2, "still broken", true)))
    local row = db.query("SELECT status, last_error FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("failed", row.status)
    assert.equal("still broken", row.last_error)
  end)

  it("fails non-retriable errors at once", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1, { max_attempts = 5 })
    local t = q:claim(1)[1]
    assert.equal("failed", (q:fail(t, "bad payload", false)))
  end)

  it("releases a task without counting the attempt", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1)
    local t = q:claim(1)[1]
    assert.is_true(q:release(t))
    local row = db.query("SELECT status, attempts FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("retry", row.status)
    assert.equal(0, row.attempts)
    assert.equal(t.id, q:claim(1)[1].id)
  end)

  it("notifies listeners when tasks are enqueued, once per statement", function()
    tdb.channel("c1")
    db.listen("vg_tasks")
    while db.wait_notification(0) do end
    tdb.enqueue("c1", 500)
    local n = db.wait_notification(5)
    assert.is_not_nil(n)
    assert.equal("vg_tasks", n.channel)
    assert.is_nil(db.wait_notification(0.2))
    db.unlisten("vg_tasks")
  end)

  it("rescues the tasks of an instance whose liveness lapsed on the database clock", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1)
    local other = queue.new { worker_id = "gone", instance = "gone:42", lease_seconds = 300 }
    local live = db.pool { url = tdb.url, pool_size = 1, max_overflow = 0 }
    assert.is_true((other:acquire_liveness(live, 1)))
    local t = other:claim(1)[1]
    -- Held: not rescued, however young the server is.
    local rescuer = queue.new { worker_id = "w", instance = "w:1", restart_grace = 0 }
    local in_flight, rescued, _, expiry = rescuer:rescue()
    assert.equal(1, in_flight)
    assert.equal(0, #rescued)
    assert.is_true(expiry > 0 and expiry <= 1)
    -- Lapsed (no renewal for its whole second): rescued, keeping its place.
    local run_at = db.query("SELECT run_at FROM tasks WHERE id = $1", t.id)[1].run_at
    assert.is_true(tdb.eventually(function()
      return db.query("SELECT alive_until < now() AS lapsed FROM workers WHERE instance = 'gone:42'")[1].lapsed
    end, 10, 0.1))
    in_flight, rescued = rescuer:rescue()
    assert.equal(1, #rescued)
    local row = db.query("SELECT status, last_error, run_at FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("retry", row.status)
    assert.matches("stopped renewing its liveness", row.last_error)
    assert.equal(run_at, row.run_at)
    -- A renewal after the lapse is refused: the owner must acquire again,
    -- which gives back what it still held.
    assert.is_false(other:renew_liveness(live, 1))
    live:close()
  end)

  it("leaves a lapsed liveness alone during the grace after a server start", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 1)
    local other = queue.new { worker_id = "gone", instance = "gone:43", lease_seconds = 300 }
    local live = db.pool { url = tdb.url, pool_size = 1, max_overflow = 0 }
    other:acquire_liveness(live, 0.2)
    local t = other:claim(1)[1]
    assert.is_true(tdb.eventually(function()
      return db.query("SELECT alive_until < now() AS lapsed FROM workers WHERE instance = 'gone:43'")[1].lapsed
    end, 10, 0.1))
    local rescuer = queue.new { worker_id = "w", instance = "w:1", restart_grace = 86400 }
    local _, rescued = rescuer:rescue()
    assert.equal(0, #rescued)
    -- The owner, back, gives it back itself: the attempt not counted.
    local held, released = other:acquire_liveness(live, 5)
    assert.is_true(held)
    assert.equal(1, released)
    local row = db.query("SELECT status, attempts FROM tasks WHERE id = $1", t.id)[1]
    assert.equal("retry", row.status)
    assert.equal(0, row.attempts)
    live:close()
  end)

  it("gives back the claimed tasks of its instance that it does not hold, and nothing else", function()
    tdb.channel("c1")
    tdb.enqueue("c1", 5)
    local held, lost, started = q:claim(1)[1], q:claim(1)[1], q:claim(1)[1]
    assert.is_true(q:start(started, "s1"))
    local other = queue.new { worker_id = "other", instance = "other:1", lease_seconds = 30 }
    local theirs = other:claim(1)[1]
    assert.same({ lost.id }, q:release_unknown({ held.id }))
    local function row(t) return db.query("SELECT status, attempts FROM tasks WHERE id = $1", t.id)[1] end
    assert.same({ status = "retry", attempts = 0 }, row(lost))
    assert.same({ status = "claimed", attempts = 1 }, row(held))
    assert.same({ status = "processing", attempts = 1 }, row(started))
    assert.same({ status = "claimed", attempts = 1 }, row(theirs))
    -- given back in its place: it is the next task claimed
    assert.equal(lost.id, other:claim(1)[1].id)
    -- holding nothing: every task it claimed and never started goes back
    assert.same({ held.id }, q:release_unknown({}))
    assert.same({}, q:release_unknown({}))
  end)

end)
