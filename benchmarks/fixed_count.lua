-- wrk script: stop after a fixed number of responses and print the figures as JSON.
-- Run with one thread (-t1); the request count comes from BENCH_REQUESTS.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
int kill(int pid, int sig);
int getpid(void);
]]

local function now()
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local limit = tonumber(os.getenv("BENCH_REQUESTS") or "1000")
local threads = {}
count = 0
bad_status = 0
started = 0
finished = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  started = now()
end

function response(status, headers, body)
  count = count + 1
  if status ~= 200 then
    bad_status = bad_status + 1
  end
  if count == limit then
    finished = now()
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), 2)  -- SIGINT ends wrk's wait at once
  end
end

function done(summary, latency, requests)
  local t = threads[1]
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "elapsed_s": %.6f, "bad_status": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    t:get("count"), t:get("finished") - t:get("started"), t:get("bad_status"),
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
