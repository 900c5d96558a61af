//! The Redis bus's publish and read scripts (see the layout in the bus's docs) and the parsing of
//! their replies, stream entries and channel messages into events.

use bytes::Bytes;
use redis::Value;

use super::{Inner, unavailable};
use crate::bus::live;
use crate::bus::{BusError, Read};
use crate::event::{Event, Position, Topic};
use crate::trace::{TRACEPARENT_LEN, TraceContext};

/// The body shared by the publish scripts: assigns the next offset, appends, trims and
/// publishes, creating the epoch when missing; leaves `epoch` and `seq` set. `ARGV[5]` is the
/// event's `traceparent`, or empty: with one, the entry has a field `t` after `p`, and the
/// channel message is `t{traceparent}:{epoch}:{offset}:{payload}` instead of
/// `{epoch}:{offset}:{payload}` (an instance of a version before trace contexts finds that
/// message malformed and reads the event from the stream instead: nothing is lost). `ARGV[6]`
/// is the channel's idle expiry in milliseconds (`0`: none): the stream and the hash are given
/// that time to live at every publish, so a channel idle that long is gone, and its next use is
/// a new epoch.
macro_rules! publish_body {
    () => {
        r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local id = string.format('0-%d', seq)
local position = epoch .. ':' .. string.format('%d', seq) .. ':'
if ARGV[5] == '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], id, 'p', ARGV[1])
  redis.call('PUBLISH', ARGV[4], position .. ARGV[1])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], id, 'p', ARGV[1], 't', ARGV[5])
  redis.call('PUBLISH', ARGV[4], 't' .. ARGV[5] .. ':' .. position .. ARGV[1])
end
if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
"
    };
}

/// Assigns the next offset, appends, trims and publishes, creating the epoch when missing.
pub(super) const PUBLISH: &str = concat!(publish_body!(), "return {epoch, seq}\n");

/// [`PUBLISH`] once per key (`KEYS[3]`, kept `ARGV[7]` milliseconds, holding `epoch:offset`):
/// a key already there answers with its position and `1` (a duplicate), publishing nothing.
pub(super) const PUBLISH_ONCE: &str = concat!(
    r"
local seen = redis.call('GET', KEYS[3])
if seen then
  local sep = string.find(seen, ':', 1, true)
  return {string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1), 1}
end
",
    publish_body!(),
    r"
redis.call('SET', KEYS[3], epoch .. ':' .. string.format('%d', seq), 'PX', ARGV[7])
return {epoch, seq, 0}
"
);

/// Epoch, head, oldest retained entry, entries after a position, and the last entry. An epoch
/// it creates expires after the channel's idle expiry (`ARGV[5]`, `0`: none), like a publish's.
pub(super) const READ: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
  if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq'))
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = false
if first[1] then oldest = first[1][1] end
local entries = {}
if tonumber(ARGV[3]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
local last = {}
if ARGV[4] == '1' then last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1) end
return {epoch, seq, oldest, entries, last}
";

impl Inner {
    /// Epoch, head, oldest retained offset, the entries after `after` (up to `max`), and the
    /// last entry when `last` is asked for.
    pub(super) async fn view(
        &self,
        topic: &Topic,
        after: u64,
        max: usize,
        last: bool,
    ) -> Result<View, BusError> {
        let mut inv = self.read.prepare_invoke();
        inv.key(self.stream_key(topic))
            .key(self.meta_key(topic))
            .arg(new_epoch().to_string())
            .arg(after)
            .arg(max)
            .arg(if last { "1" } else { "0" })
            .arg(self.expiry_ms(topic));
        let v = self.run("history read", inv).await?;
        View::parse(topic, v).ok_or_else(|| unavailable("unexpected reply to the read script"))
    }
}

/// A random epoch: 63 bits, so it survives any signed 64-bit representation.
pub(super) fn new_epoch() -> u64 {
    rand::random::<u64>() >> 1
}

/// The read script's answer.
pub(super) struct View {
    /// The topic's epoch.
    pub(super) epoch: u64,
    /// The last offset assigned.
    pub(super) head: u64,
    /// The oldest retained offset (`head + 1` when nothing is retained).
    oldest: u64,
    /// The entries asked for.
    entries: Vec<Event>,
    /// The last entry, when asked for.
    pub(super) last: Option<Event>,
}

impl View {
    fn parse(topic: &Topic, v: Value) -> Option<Self> {
        let Value::Array(mut parts) = v else {
            return None;
        };
        if parts.len() != 5 {
            return None;
        }
        let last = parts.pop()?;
        let entries = parts.pop()?;
        let oldest = parts.pop()?;
        let head = as_u64(&parts.pop()?)?;
        let epoch = as_u64(&parts.pop()?)?;
        let entry_list = |v: Value| -> Option<Vec<Event>> {
            let Value::Array(items) = v else {
                return None;
            };
            items
                .into_iter()
                .map(|item| entry(topic, epoch, item))
                .collect()
        };
        let oldest = match oldest {
            Value::Nil => head + 1,
            id => parse_id(&as_bytes(&id)?)?,
        };
        Some(Self {
            epoch,
            head,
            oldest,
            entries: entry_list(entries)?,
            last: entry_list(last)?.pop(),
        })
    }

    /// The answer to a read after `after`, as the trait describes it.
    pub(super) fn read(self, after: Position) -> Read {
        if let Some(resume) = live::uncovered(after, self.epoch, self.oldest, self.head) {
            return Read::Gap { resume };
        }
        let next = self.entries.last().map_or(after, Event::position);
        Read::Events {
            events: self.entries,
            next,
        }
    }
}

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&as_bytes(other)?).ok()?.parse().ok(),
    }
}

/// The offset of a stream entry id `0-n`.
fn parse_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(b"0-")?)
        .ok()?
        .parse()
        .ok()
}

/// A stream entry `[id, [field, value, ...]]` as an event.
fn entry(topic: &Topic, epoch: u64, v: Value) -> Option<Event> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let Value::Array(fields) = parts.pop()? else {
        return None;
    };
    let offset = parse_id(&as_bytes(&parts.pop()?)?)?;
    // `p` the payload; `t` the trace context, absent from entries published without one (and
    // from every entry of a version before trace contexts); other fields are skipped.
    let (mut payload, mut trace) = (None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match as_bytes(&name)?.as_slice() {
            b"p" => payload = Some(as_bytes(&value)?),
            b"t" => trace = as_bytes(&value).and_then(|t| TraceContext::parse(&t)),
            _ => {}
        }
    }
    Some(Event {
        topic: topic.clone(),
        epoch,
        offset,
        payload: Bytes::from(payload?),
        trace,
    })
}

/// A channel message `{epoch}:{offset}:{payload}`, or `t{traceparent}:{epoch}:{offset}:{payload}`
/// for an event with a trace context, as an event.
pub(super) fn channel_event(topic: &Topic, msg: &[u8]) -> Option<Event> {
    let (trace, msg) = match msg.strip_prefix(b"t") {
        Some(rest) => {
            let (traceparent, rest) = rest.split_at_checked(TRACEPARENT_LEN)?;
            (TraceContext::parse(traceparent), rest.strip_prefix(b":")?)
        }
        None => (None, msg),
    };
    let mut parts = msg.splitn(3, |b| *b == b':');
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let payload = parts.next()?;
    Some(Event {
        topic: topic.clone(),
        epoch,
        offset,
        payload: Bytes::copy_from_slice(payload),
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_with_and_without_a_trace() {
        let topic = Topic::new("t").unwrap();
        let plain = channel_event(&topic, b"7:3:a:b").unwrap();
        assert_eq!(
            (plain.epoch, plain.offset, &plain.payload[..]),
            (7, 3, &b"a:b"[..])
        );
        assert_eq!(plain.trace, None);
        let trace = TraceContext::new_root(true);
        let msg = [b"t", &trace.to_bytes()[..], b":7:3:a:b"].concat();
        let traced = channel_event(&topic, &msg).unwrap();
        assert_eq!(
            (traced.epoch, traced.offset, &traced.payload[..]),
            (7, 3, &b"a:b"[..])
        );
        assert_eq!(traced.trace, Some(trace));
        assert!(channel_event(&topic, b"t00-short:7:3:x").is_none());
    }
}
