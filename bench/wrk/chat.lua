-- bench/wrk/chat.lua -- wrk script of bench/run: POSTs one small non-streaming chat completion
-- per request and, when done, prints one machine-readable line:
--   WRK_JSON {"requests":..,"rps":..,"p50_us":..,"p90_us":..,"p99_us":..,...}
-- Environment: BENCH_MODEL (default "bench"), BENCH_KEY (sent as "Authorization: Bearer"),
-- BENCH_HEADERS (extra headers, "Name: value|Name: value"), BENCH_ADDRS ("host:port,host:port,...":
-- wrk's threads are spread over these servers round robin, thread i -> server i mod n, each
-- thread's connections to its server; the URL's host is still the Host header).
local model = os.getenv("BENCH_MODEL") or "bench"
local key = os.getenv("BENCH_KEY") or ""
local extra = os.getenv("BENCH_HEADERS") or ""
local addrs = {}
for hp in string.gmatch(os.getenv("BENCH_ADDRS") or "", "[^,%s]+") do
  local h, p = hp:match("^(.+):(%d+)$")
  if h then
    addrs[#addrs + 1] = { h, p }
  end
end
local threads_set = 0

-- Runs once per thread, in the main script's state, before the threads start.
function setup(thread)
  if #addrs > 0 then
    local a = addrs[threads_set % #addrs + 1]
    threads_set = threads_set + 1
    thread.addr = wrk.lookup(a[1], a[2])[1]
  end
end

wrk.method = "POST"
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
for h in string.gmatch(extra, "[^|]+") do
  local k, v = h:match("^%s*([^:]+):%s*(.-)%s*$")
  if k then
    wrk.headers[k] = v
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.2f,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"stdev_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, latency.stdev,
    e.connect, e.read, e.write, e.status, e.timeout))
end
