-- wrk reporter for benches/load.sh: one machine-readable line per run.
-- RESULT <requests/s> <p50 µs> <p99 µs> <errors: non-2xx/3xx, connect, read, write, timeout>
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.0f %.1f %.1f %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
