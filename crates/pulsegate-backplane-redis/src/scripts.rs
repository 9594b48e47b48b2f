//! The two Lua scripts that touch a topic's log, and the parsing of their
//! replies.
//!
//! Redis runs a script atomically, so each script sees and leaves a topic's
//! keys consistent: `publish` is the single place a seq is assigned (which
//! is why seqs are contiguous across the cluster and why `PUBLISH` order
//! equals seq order), and `read` returns epoch, last seq and messages from
//! one instant. Both are sent with `EVALSHA` (the `redis` crate falls back
//! to loading the script when the server does not know it yet).

use std::sync::Arc;

use bytes::Bytes;
use pulsegate_core::{Log, Message};
use redis::{Script, Value};

/// KEYS: epoch, seq, log.
/// ARGV: fresh epoch, data, ts, node, max_history, ttl in ms (0 = keep
/// forever), live channel.
///
/// A missing epoch (first publish, or all keys expired after `history_ttl`
/// of inactivity) starts a new log: new epoch, seq and stream cleared. A
/// missing seq counter under an existing epoch (a key deleted by hand)
/// does the same rather than reuse seqs. The stream ID is `<seq>-1` so a
/// read "after seq s" is a direct `XRANGE` from `<s+1>-0`. `%d` formats seq
/// as an integer: Lua's default number formatting switches to exponent
/// notation above 1e14.
const PUBLISH: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local seq = redis.call('INCR', KEYS[2])
local s = string.format('%d', seq)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], s .. '-1',
  'd', ARGV[2], 't', ARGV[3], 'n', ARGV[4])
for i = 1, 3 do
  if ARGV[6] == '0' then
    redis.call('PERSIST', KEYS[i])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[6])
  end
end
redis.call('PUBLISH', ARGV[7],
  s .. '\n' .. epoch .. '\n' .. ARGV[3] .. '\n' .. ARGV[4] .. '\n' .. ARGV[2])
return {seq, epoch}
"#;

/// KEYS: epoch, seq, log.
/// ARGV: first stream ID to return (`<after+1>-0`), or empty for "the last
/// message only"; most messages to return.
///
/// Replies nil when the topic has no log, else `{epoch, seq, entries}`.
/// `XRANGE … COUNT 0` would mean "no limit" to Redis, hence the explicit
/// zero case.
const READ: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  return false
end
local seq = redis.call('GET', KEYS[2]) or '0'
local entries
if ARGV[1] == '' then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
elseif ARGV[2] == '0' then
  entries = {}
else
  entries = redis.call('XRANGE', KEYS[3], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {epoch, seq, entries}
"#;

/// The compiled scripts (their SHA1s are computed once).
pub(crate) struct Scripts {
    pub publish: Script,
    pub read: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH),
            read: Script::new(READ),
        }
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(v)?).ok()
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// `{seq, epoch}` from the publish script.
pub(crate) fn parse_stamp(v: &Value) -> Option<(u64, Arc<str>)> {
    let Value::Array(items) = v else { return None };
    match items.as_slice() {
        [seq, epoch] => Some((int(seq)?, text(epoch)?.into())),
        _ => None,
    }
}

/// The seq of a stream ID `<seq>-1`.
fn seq_of_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// One stream entry `[id, [field, value, …]]` as a message of `topic`.
fn parse_entry(topic: &Arc<str>, epoch: &Arc<str>, v: &Value) -> Option<Arc<Message>> {
    let Value::Array(entry) = v else { return None };
    let [id, Value::Array(fields)] = entry.as_slice() else {
        return None;
    };
    let seq = seq_of_id(text(id)?)?;
    let (mut data, mut ts) = (None, None);
    for pair in fields.chunks_exact(2) {
        match bytes(&pair[0])? {
            b"d" => data = Some(Bytes::copy_from_slice(bytes(&pair[1])?)),
            b"t" => ts = Some(int(&pair[1])?),
            _ => {}
        }
    }
    Some(Arc::new(Message::new(
        topic.clone(),
        seq,
        epoch.clone(),
        ts?,
        data?,
    )))
}

/// The reply of the read script: `Ok(None)` for "no log", `Err` for a reply
/// of an unexpected shape.
pub(crate) fn parse_log(topic: &str, v: &Value) -> Result<Option<Log>, String> {
    let bad = || format!("unexpected reply from the read script for topic `{topic}`");
    let items = match v {
        Value::Nil => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(bad()),
    };
    let [epoch, seq, Value::Array(entries)] = items.as_slice() else {
        return Err(bad());
    };
    let epoch: Arc<str> = text(epoch).ok_or_else(bad)?.into();
    let last_seq = int(seq).ok_or_else(bad)?;
    let topic: Arc<str> = topic.into();
    let messages = entries
        .iter()
        .map(|e| parse_entry(&topic, &epoch, e))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    Ok(Some(Log {
        epoch,
        last_seq,
        messages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_replies() {
        let stamp = Value::Array(vec![Value::Int(7), bulk("rab")]);
        assert_eq!(parse_stamp(&stamp), Some((7, "rab".into())));
        assert_eq!(parse_stamp(&Value::Nil), None);

        assert!(parse_log("t", &Value::Nil).unwrap().is_none());
        let entry = |id: &str, d: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![
                    bulk("d"),
                    bulk(d),
                    bulk("t"),
                    bulk("99"),
                    bulk("n"),
                    bulk("x"),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            bulk("rab"),
            bulk("12"),
            Value::Array(vec![entry("11-1", "1"), entry("12-1", "[2]")]),
        ]);
        let log = parse_log("a/b", &reply).unwrap().unwrap();
        assert_eq!(&*log.epoch, "rab");
        assert_eq!(log.last_seq, 12);
        let seqs: Vec<u64> = log.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [11, 12]);
        assert_eq!(&log.messages[1].data[..], b"[2]");
        assert_eq!(log.messages[1].ts, 99);
        assert_eq!(&*log.messages[1].topic, "a/b");

        assert!(parse_log("t", &Value::Int(1)).is_err());
    }
}
