-- wrk script: POST /score bodies from a pre-generated Lua table, each with a fresh event_id.
--
-- Environment: BENCH_BODIES (the table file: { {head, tail}, ... }, a body is head .. id .. tail),
-- BENCH_RUN (id prefix, unique per run), BENCH_OFFSET (first body), BENCH_THREADS (wrk -t),
-- BENCH_AUTH (API key, optional), BENCH_OUT (JSON summary written by done()).
-- Thread k sends bodies offset+k, offset+k+T, ... so threads interleave in time order.

local bodies = dofile(os.getenv("BENCH_BODIES"))
local run = os.getenv("BENCH_RUN") or "run"
local stride = tonumber(os.getenv("BENCH_THREADS") or "1")
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local key = os.getenv("BENCH_AUTH")
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
  index = tonumber(os.getenv("BENCH_OFFSET") or "0") + tid
  sent = 0
end

function request()
  local body = bodies[(index % #bodies) + 1]
  index = index + stride
  sent = sent + 1
  return wrk.format(nil, nil, nil, body[1] .. run .. "-" .. tid .. "-" .. sent .. body[2])
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, '
    .. '"max": %d, "mean": %.1f}, "bodies": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, #bodies))
  out:close()
end
