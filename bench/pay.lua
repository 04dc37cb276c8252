-- wrk script: every request is a new payment of 1 minor unit with a unique
-- idempotency key, into the enrollment named by the BURSAR_PATH variable.
-- Each thread's keys start with its own number: `thread:set` makes
-- `thread_id` a global of that thread (a `local thread_id` here would hide
-- it, and every thread would send the same keys).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = string.format("wrk-%d-%d-", os.time(), thread_id)
end

function request()
  counter = counter + 1
  local headers = {}
  headers["Authorization"] = "Bearer " .. os.getenv("BURSAR_TOKEN")
  headers["Idempotency-Key"] = prefix .. counter
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", os.getenv("BURSAR_PATH"), headers, '{"amount":1}')
end
