-- wrk script: at the end of a run, print one line "WRKJSON {...}" with the counts, the
-- error counters and latency percentiles in microseconds, for compare.sh and
-- `uringlb-bench compare-report`. The percentiles come from wrk's own latency histogram
-- (1 us resolution), the same one `wrk --latency` prints; the max is latency.max.
local points = { 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99 }

done = function(summary, latency, requests)
  local e = summary.errors
  local pct = {}
  for i, p in ipairs(points) do
    pct[i] = string.format('{"percentile":%s,"us":%.0f}', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.0f,"mean":%.2f,"stdev":%.2f,"max":%.0f},"percentiles":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max, table.concat(pct, ",")))
end
