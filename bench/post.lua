-- wrk script for bench/run.py: POSTs chat completions with the target's bearer key.
--
-- Everything comes from environment variables that run.py sets, so one script serves every
-- target:
--   BENCH_AUTHORIZATION  the Authorization header value ("Bearer <key>")
--   BENCH_PLAIN_BODY     JSON body of a non-streaming request
--   BENCH_STREAM_BODY    JSON body of a streaming request (sent with `x-bench-stream: 1`)
--   BENCH_MODE           "plain" (default), or "mix": every BENCH_STREAM_EVERY-th request streams
--   BENCH_STOP_AFTER     if > 0, each wrk thread stops after that many responses (soak bound)
-- At the end one line `BENCH_RESULT {...}` carries exact numbers (latencies in microseconds);
-- run.py parses it, and falls back to wrk's own `--latency` text if it is missing.

local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
local plain_body = os.getenv("BENCH_PLAIN_BODY") or "{}"
local stream_body = os.getenv("BENCH_STREAM_BODY") or "{}"
local mode = os.getenv("BENCH_MODE") or "plain"
local stream_every = tonumber(os.getenv("BENCH_STREAM_EVERY") or "4")
local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "0")

local plain_request = nil
local stream_request = nil
local sent = 0
local received = 0

function init(args)
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = authorization
  plain_request = wrk.format("POST", nil, headers, plain_body)
  headers["x-bench-stream"] = "1"
  stream_request = wrk.format("POST", nil, headers, stream_body)
end

function request()
  sent = sent + 1
  if mode == "mix" and sent % stream_every == 0 then
    return stream_request
  end
  return plain_request
end

if stop_after > 0 then
  -- Only defined when needed: a response() callback makes wrk parse every response body.
  function response(status, headers, body)
    received = received + 1
    if received >= stop_after then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
