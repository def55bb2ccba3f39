//! The Lua scripts: each runs atomically on the server, which is what makes
//! fetch, requeue and restore crash-safe without WATCH (a multiplexed
//! connection cannot WATCH).

use redis::Script;

/// Pop up to `ARGV[2]` messages of the queues' lists (in order, each
/// from the right as kombu's BRPOP, until it is empty or the batch is
/// full; one `RPOP key count` per list where the server has it) and, in the
/// same step, record each as unacked the way kombu does:
/// `ZADD unacked_index <now> <tag>` and
/// `HSET unacked <tag> '[<envelope>, "", "<queue>"]'` (exchange `""` and
/// the queue as routing key: a restore puts it back in that queue only).
/// First it moves the queues' delayed messages that are due to the back of
/// their lists.
///
/// `KEYS[1]` unacked, `KEYS[2]` unacked_index, then the lists, step by
/// step (`KEYS[2 + s * nq + q]`: step `s` from 0, queue `q` from 1), then
/// each queue's delayed sorted set (`KEYS[2 + lists + q]`). `ARGV[1]` now
/// (seconds), `ARGV[2]` the most to take, `ARGV[3]` the number of queues
/// `nq`, `ARGV[4]` now (Unix ms), `ARGV[4 + i]` the queue name of list `i`
/// as a JSON string, then one tag per message that may be taken. A delayed
/// member is `<uuid>|<step index>|<message>`, scored by its due time.
/// Returns the flat list `{i1, message1, i2, message2, ...}` (`i` the list's
/// index from 1; empty when every list is empty).
const FETCH_MANY: &str = r#"
local max = tonumber(ARGV[2])
local nq = tonumber(ARGV[3])
local lists = #KEYS - 2 - nq
for q = 1, nq do
    local delayed = KEYS[2 + lists + q]
    local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', ARGV[4], 'LIMIT', 0, 100)
    for _, member in ipairs(due) do
        local a = string.find(member, '|', 1, true)
        local b = string.find(member, '|', a + 1, true)
        local step = tonumber(string.sub(member, a + 1, b - 1))
        redis.call('LPUSH', KEYS[2 + step * nq + q], string.sub(member, b + 1))
        redis.call('ZREM', delayed, member)
    end
end
local taken = {}
local scores = {}
local entries = {}
local n = 0
local function take(i, item)
    n = n + 1
    local tag = ARGV[4 + lists + n]
    taken[#taken + 1] = i - 2
    taken[#taken + 1] = item
    scores[#scores + 1] = ARGV[1]
    scores[#scores + 1] = tag
    entries[#entries + 1] = tag
    entries[#entries + 1] = '[' .. item .. ', "", ' .. ARGV[i + 2] .. ']'
end
for i = 3, 2 + lists do
    -- RPOP with a count (Redis 6.2+) takes the run in one call; an older
    -- server refuses the count, and we pop one by one.
    local many = redis.pcall('RPOP', KEYS[i], max - n)
    if type(many) == 'table' and many.err == nil then
        for _, item in ipairs(many) do
            take(i, item)
        end
    elseif type(many) == 'table' then
        while n < max do
            local item = redis.call('RPOP', KEYS[i])
            if not item then
                break
            end
            take(i, item)
        end
    end
    if n >= max then
        break
    end
end
if n > 0 then
    redis.call('ZADD', KEYS[2], unpack(scores))
    redis.call('HSET', KEYS[1], unpack(entries))
end
return taken
"#;

/// Requeue a fetched message if it is still ours: `KEYS[1]` unacked,
/// `KEYS[2]` unacked_index, `KEYS[3]` the list; `ARGV[1]` tag, `ARGV[2]`
/// the message. RPUSH: served next. Returns 1, or 0 when a restore already
/// put it back (so it is not duplicated).
const REQUEUE: &str = r#"
local mine = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if mine == 1 then
    redis.call('RPUSH', KEYS[3], ARGV[2])
end
return mine
"#;

/// Restore one unacked entry if it is unchanged since it was read (the
/// WATCH/MULTI of kombu's restore_by_tag): `KEYS[1]` unacked, `KEYS[2]`
/// unacked_index, `KEYS[3..]` the lists to RPUSH into; `ARGV[1]` tag,
/// `ARGV[2]` the entry as read, `ARGV[3]` the message to push.
const RESTORE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 0
end
if current ~= ARGV[2] then
    return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do
    redis.call('RPUSH', KEYS[i], ARGV[3])
end
return 1
"#;

/// Move `KEYS[1]`'s delayed messages due at `ARGV[1]` (Unix ms) to the
/// back of their lists `KEYS[2..]` (by step index); returns how many.
const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
    local a = string.find(member, '|', 1, true)
    local b = string.find(member, '|', a + 1, true)
    local step = tonumber(string.sub(member, a + 1, b - 1))
    redis.call('LPUSH', KEYS[2 + step], string.sub(member, b + 1))
    redis.call('ZREM', KEYS[1], member)
end
return #due
"#;

/// Extend a fetched message's lease: move its score in the unacked index
/// `KEYS[1]` to `ARGV[2]` if it is still there (`ARGV[1]` its tag).
/// Returns 1, or 0 when it is gone (acked, or restored to its queue).
const EXTEND: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
    return 1
end
return 0
"#;

/// Release kombu's `unacked_mutex` if we still hold it.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Renew kombu's `unacked_mutex` for `ARGV[2]` ms if we still hold it
/// (`ARGV[1]` our token). Returns 1, or 0 when it is no longer ours.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// kombu 5.7's REFRESH_BINDING, verbatim.
const REFRESH_BINDING: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"#;

/// kombu 5.7's SWEEP_BINDINGS, verbatim.
const SWEEP_BINDINGS: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local overdue = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, exchange in ipairs(overdue) do
    if redis.call('EXISTS', ARGV[2] .. exchange) == 0 then
        redis.call('DEL', ARGV[1] .. exchange)
    end
    redis.call('ZREM', KEYS[1], exchange)
end
return #overdue
"#;

/// The loaded scripts (EVALSHA, falling back to EVAL once per server).
pub(crate) struct Scripts {
    pub fetch_many: Script,
    pub requeue: Script,
    pub restore: Script,
    pub unlock: Script,
    pub renew: Script,
    pub move_due: Script,
    pub extend: Script,
    pub refresh_binding: Script,
    pub sweep_bindings: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            fetch_many: Script::new(FETCH_MANY),
            requeue: Script::new(REQUEUE),
            restore: Script::new(RESTORE),
            unlock: Script::new(UNLOCK),
            renew: Script::new(RENEW),
            move_due: Script::new(MOVE_DUE),
            extend: Script::new(EXTEND),
            refresh_binding: Script::new(REFRESH_BINDING),
            sweep_bindings: Script::new(SWEEP_BINDINGS),
        }
    }
}
