-- A real Prometheus (Debian's prometheus) scrapes a real worker's /metrics
-- and lua/web.lua's; the series are asserted through Prometheus' own query
-- API, and promtool checks both texts.
local proc = require "vg.proc"
local cjson = require "cjson"
local tdb = require "spec.support.db"
local e2e = require "tests.e2e.support"

local describe_db = tdb.available() and describe or pending

describe_db("Prometheus scraping a worker and the status service", function()
  local db, dir, worker, web, prom

  setup(function()
    db = tdb.setup()
    tdb.reset()
    dir = e2e.tempdir()
  end)

  teardown(function()
    e2e.stop(prom)
    e2e.stop(worker)
    e2e.stop(web)
    if dir then proc.run({ "rm", "-rf", dir }) end
  end)

  -- The value of an instant query's single result, or nil.
  local function query(prom_port, q)
    local code, body = e2e.curl("http://127.0.0.1:" .. prom_port .. "/api/v1/query?query=" .. require("vg.http").escape(q))
    if code ~= 200 then return nil end
    local r = cjson.decode(body)
    if r.status ~= "success" or #r.data.result == 0 then return nil end
    return tonumber(r.data.result[1].value[2]), r.data.result
  end

  it("finds the worker's task, step, pool and lease series and the queue's series", function()
    local worker_port = e2e.free_port()
    worker = e2e.worker("prom-1", { VG_HTTP_PORT = tostring(worker_port), VG_HTTP_HOST = "127.0.0.1" })
    local web_port
    web, web_port = e2e.web {}
    tdb.channel("p1")
    tdb.enqueue("p1", 3, { pipeline = "three" })
    tdb.enqueue("p1", 2, { pipeline = "noop", delay = 3600 })
    assert.is_true(tdb.eventually(function()
      return tdb.count("SELECT count(*) FROM tasks WHERE status = 'completed'") == 3
    end, 60))

    -- promtool on both texts
    for _, port in ipairs { worker_port, web_port } do
      local code, text = e2e.curl("http://127.0.0.1:" .. port .. "/metrics")
      assert.are.equal(200, code)
      local r = proc.run({ "promtool", "check", "metrics" }, { stdin = text })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
    end

    local prom_port = e2e.free_port()
    local cfg = assert(io.open(dir .. "/prometheus.yml", "w"))
    cfg:write(string.format([[
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: vg-worker
    static_configs:
      - targets: ["127.0.0.1:%d"]
  - job_name: vg-web
    static_configs:
      - targets: ["127.0.0.1:%d"]
]], worker_port, web_port))
    cfg:close()
    prom = proc.spawn({ "prometheus", "--config.file=" .. dir .. "/prometheus.yml",
                        "--storage.tsdb.path=" .. dir .. "/data",
                        "--web.listen-address=127.0.0.1:" .. prom_port }, {})
    assert.is_true(tdb.eventually(function()
      return (e2e.curl("http://127.0.0.1:" .. prom_port .. "/-/ready")) == 200
    end, 60, 0.2), prom:stderr())

    -- Both targets up, and the series there with the values the run made.
    assert.is_true(tdb.eventually(function()
      return query(prom_port, 'up{job="vg-worker"}') == 1 and query(prom_port, 'up{job="vg-web"}') == 1
    end, 60, 0.5), prom:stderr())
    assert.is_true(tdb.eventually(function()
      return query(prom_port, 'vg_tasks_completed_total{job="vg-worker",pipeline="three"}') == 3
    end, 60, 0.5))
    assert.are.equal(3, query(prom_port, 'vg_tasks_claimed_total{pipeline="three"}'))
    assert.are.equal(3, query(prom_port, 'vg_step_duration_seconds_count{pipeline="three",step="one"}'))
    assert.are.equal(3, query(prom_port, 'sum(vg_step_duration_seconds_bucket{pipeline="three",step="two",le="+Inf"})'))
    assert.is_not_nil(query(prom_port, "vg_db_pool_connections_in_use"))
    assert.is_not_nil(query(prom_port, "vg_db_pool_timeouts_total"))
    assert.is_not_nil(query(prom_port, "vg_lease_renewals_total"))
    assert.is_not_nil(query(prom_port, "vg_leases_lost_total"))
    assert.is_not_nil(query(prom_port, "vg_loop_lag_seconds"))
    assert.are.equal(1, query(prom_port, 'vg_worker_info{worker_id="prom-1"}'))
    -- the status service's queue series
    assert.are.equal(2, query(prom_port, 'vg_queue_channel_tasks{job="vg-web",channel="p1",status="pending"}'))
    assert.are.equal(3, query(prom_port, 'sum(vg_queue_tasks{job="vg-web",status="completed"})'))
    assert.are.equal(1, query(prom_port, 'vg_workers{job="vg-web",state="alive"}'))
  end)
end)
