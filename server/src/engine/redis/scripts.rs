//! The Lua scripts that make each engine operation atomic inside Redis.
//!
//! Keys of one room share the hash tag `{<room>}`, so a script touches a single slot and
//! the layout works on Redis Cluster; the pub/sub channel carries the same tag so that
//! sharded pub/sub (`SPUBLISH`) routes it to the same shard.

/// Assigns the next offset, appends to the history stream (trimmed by count and age),
/// refreshes expiries and broadcasts — one atomic step. With an idempotency key, a key
/// held by an event still in the room's history publishes nothing and answers that
/// event's offset. The history is a contiguous run of offsets ending at the top, so the
/// oldest offset kept is `top - XLEN + 1`: keys of older events are dropped with them.
///
/// KEYS: meta hash, history stream, channel, idempotency zset (key → offset).
/// ARGV: event bytes, max events, history TTL ms, meta TTL ms, epoch for a new room,
/// `1` to use `SPUBLISH`, idempotency key (empty: none).
/// Returns `{epoch, offset, duplicate (0 or 1)}`.
pub const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2], KEYS[4])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function trim(top)
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - tonumber(ARGV[3])))
  local oldest = top - redis.call('XLEN', KEYS[2]) + 1
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', oldest - 1)
end
if ARGV[7] ~= '' then
  trim(tonumber(redis.call('HGET', KEYS[1], 'o')))
  local seen = redis.call('ZSCORE', KEYS[4], ARGV[7])
  if seen then return {epoch, string.format('%d', tonumber(seen)), 1} end
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local off = string.format('%d', offset)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'o', off, 'd', ARGV[1])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[4], offset, ARGV[7])
end
trim(offset)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
local msg = 'P' .. epoch .. ':' .. off .. ':' .. ARGV[1]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', KEYS[3], msg)
else
  redis.call('PUBLISH', KEYS[3], msg)
end
return {epoch, off, 0}
"#;

/// Reads a room's position and, when a position is given, the events after it. Reading
/// creates nothing: a room nobody has published to has no keys, and answers epoch `""`
/// offset 0 (the position "before anything", from which every later event follows).
///
/// The replay is answered one page at a time: at most `max events` events and about
/// `max bytes`, with the stream id of the last one when more follow (read them with
/// [`PAGE`]).
///
/// KEYS: meta hash, history stream.
/// ARGV: history TTL ms, meta TTL ms, `1` when a position is given (else `0`), since
/// epoch, since offset, max events, max bytes.
/// Returns `{epoch, top, status, next id, offset1, event1, offset2, event2, …}` with
/// status `fresh` (no position given), `ok` (the events after the position follow,
/// oldest first; next id empty when they are all there) or `lost` (history does not
/// cover the gap, or another epoch).
pub const READ: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if ARGV[3] == '0' then return {'', '0', 'fresh', ''} end
  if ARGV[4] == '' and tonumber(ARGV[5]) == 0 then return {'', '0', 'ok', ''} end
  return {'', '0', 'lost', ''}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local top = redis.call('HGET', KEYS[1], 'o')
local topn = tonumber(top)
if ARGV[3] == '0' then return {epoch, top, 'fresh', ''} end
local since_epoch = ARGV[4]
local since = tonumber(ARGV[5])
if since_epoch == '' and since == 0 then since_epoch = epoch end
if since_epoch ~= epoch or since > topn then return {epoch, top, 'lost', ''} end
if since == topn then return {epoch, top, 'ok', ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - tonumber(ARGV[1])))
local need = topn - since
if need > redis.call('XLEN', KEYS[2]) then return {epoch, top, 'lost', ''} end
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', need)
local out = {epoch, top, 'ok', ''}
local max_events = tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
local n, bytes = 0, 0
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'o' then out[#out + 1] = fields[j + 1] end
  end
  for j = 1, #fields, 2 do
    if fields[j] == 'd' then
      out[#out + 1] = fields[j + 1]
      bytes = bytes + #fields[j + 1]
    end
  end
  n = n + 1
  if i > 1 and (n >= max_events or bytes >= max_bytes) then
    out[4] = entries[i][1]
    break
  end
end
return out
"#;

/// The next page of a replay: events after stream id `after`, which must go on from
/// offset `next` without a gap, up to offset `until`.
///
/// KEYS: meta hash, history stream.
/// ARGV: epoch, after (stream id), next offset, until offset, max events, max bytes.
/// Returns `{'lost'}` when the epoch changed or history no longer holds the next event,
/// else `{'ok', next id, offset1, event1, …}` (next id empty when `until` is reached).
pub const PAGE: &str = r#"
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return {'lost'} end
local expect = tonumber(ARGV[3])
local last = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[6])
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', ARGV[5])
if #entries == 0 then return {'lost'} end
local out = {'ok', ''}
local bytes = 0
for i = 1, #entries do
  local fields = entries[i][2]
  local o, d = nil, nil
  for j = 1, #fields, 2 do
    if fields[j] == 'o' then o = tonumber(fields[j + 1]) elseif fields[j] == 'd' then d = fields[j + 1] end
  end
  if o ~= expect then return {'lost'} end
  out[#out + 1] = string.format('%d', o)
  out[#out + 1] = d
  bytes = bytes + #d
  expect = expect + 1
  if o >= last then return out end
  if bytes >= max_bytes then
    out[2] = entries[i][1]
    return out
  end
end
out[2] = entries[#entries][1]
return out
"#;
