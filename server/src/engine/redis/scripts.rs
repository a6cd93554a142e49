//! The Lua scripts that make each engine operation atomic inside Redis.
//!
//! Keys of one room share the hash tag `{<room>}`, so a script touches a single slot and
//! the layout works on Redis Cluster; the pub/sub channel carries the same tag so that
//! sharded pub/sub (`SPUBLISH`) routes it to the same shard.

/// Assigns the next offset, appends to the history stream (trimmed by count and age),
/// refreshes expiries and broadcasts — one atomic step.
///
/// KEYS: meta hash, history stream, channel.
/// ARGV: event bytes, max events, history TTL ms, meta TTL ms, epoch for a new room,
/// `1` to use `SPUBLISH`.
/// Returns `{epoch, offset}`.
pub const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local off = string.format('%d', offset)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'o', off, 'd', ARGV[1])
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local msg = 'P' .. epoch .. ':' .. off .. ':' .. ARGV[1]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', KEYS[3], msg)
else
  redis.call('PUBLISH', KEYS[3], msg)
end
return {epoch, off}
"#;

/// Reads a room's position and, when a position is given, the events after it.
///
/// KEYS: meta hash, history stream.
/// ARGV: epoch for a new room, history TTL ms, meta TTL ms, since epoch (empty: none),
/// since offset.
/// Returns `{epoch, top, status, offset1, event1, offset2, event2, …}` with status
/// `fresh` (no position given), `ok` (the events after the position follow, oldest
/// first) or `lost` (history does not cover the gap, or another epoch).
pub const READ: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local top = redis.call('HGET', KEYS[1], 'o')
local topn = tonumber(top)
if ARGV[4] == '' then return {epoch, top, 'fresh'} end
local since = tonumber(ARGV[5])
if ARGV[4] ~= epoch or since > topn then return {epoch, top, 'lost'} end
if since == topn then return {epoch, top, 'ok'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - tonumber(ARGV[2])))
local need = topn - since
if need > redis.call('XLEN', KEYS[2]) then return {epoch, top, 'lost'} end
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', need)
local out = {epoch, top, 'ok'}
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'o' then out[#out + 1] = fields[j + 1] end
  end
  for j = 1, #fields, 2 do
    if fields[j] == 'd' then out[#out + 1] = fields[j + 1] end
  end
end
return out
"#;
