//! Names of everything this crate creates in Redis, and the live payload.
//!
//! Pure functions, no I/O: the key and channel layout, the translation of a
//! topic pattern into the Redis subscriptions that cover it, and the parser
//! of the payload the publish script sends over pub/sub. Kept apart so the
//! whole naming scheme reads in one place and is unit-tested without Redis.

use std::sync::Arc;

use bytes::Bytes;
use pulsegate_core::Message;
use pulsegate_proto::Pattern;

/// The key and channel names of one topic (`T` used verbatim: Redis keys and
/// channels are binary safe, so spaces, `*`, `[` or `$` in a topic need no
/// escaping here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicKeys {
    /// `{prefix}:epoch:{T}`: the epoch of the topic's current log.
    pub epoch: Vec<u8>,
    /// `{prefix}:seq:{T}`: the last seq assigned (an `INCR` counter).
    pub seq: Vec<u8>,
    /// `{prefix}:log:{T}`: the retained messages, a Stream with IDs `<seq>-1`.
    pub log: Vec<u8>,
    /// `{prefix}:live:{T}`: the pub/sub channel carrying new messages.
    pub live: Vec<u8>,
}

fn join(prefix: &str, kind: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + kind.len() + rest.len() + 2);
    k.extend_from_slice(prefix.as_bytes());
    k.push(b':');
    k.extend_from_slice(kind.as_bytes());
    k.push(b':');
    k.extend_from_slice(rest);
    k
}

impl TopicKeys {
    pub(crate) fn new(prefix: &str, topic: &str) -> TopicKeys {
        let t = topic.as_bytes();
        TopicKeys {
            epoch: join(prefix, "epoch", t),
            seq: join(prefix, "seq", t),
            log: join(prefix, "log", t),
            live: live_channel(prefix, topic),
        }
    }
}

/// `{prefix}:live:{T}`.
pub(crate) fn live_channel(prefix: &str, topic: &str) -> Vec<u8> {
    join(prefix, "live", topic.as_bytes())
}

/// The topic a live channel carries, if the channel is one of ours.
pub(crate) fn topic_of_channel<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix.as_bytes())?;
    let rest = rest.strip_prefix(b":live:")?;
    std::str::from_utf8(rest).ok()
}

/// Appends `literal` to a Redis glob, backslash-escaping the characters
/// that glob matching treats specially.
fn push_escaped(glob: &mut Vec<u8>, literal: &str) {
    for &b in literal.as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            glob.push(b'\\');
        }
        glob.push(b);
    }
}

/// A Redis glob matching at least every live channel of a topic matched by
/// `pattern_text` (each `+` and a trailing `#` become `*`, which also spans
/// `/`: a superset, narrowed by the local [`Pattern::matches`] filter).
fn glob(prefix: &str, pattern_text: &str) -> Vec<u8> {
    let mut g = Vec::with_capacity(prefix.len() + pattern_text.len() + 8);
    push_escaped(&mut g, prefix);
    g.extend_from_slice(b":live:");
    for (i, level) in pattern_text.split('/').enumerate() {
        if i > 0 {
            g.push(b'/');
        }
        match level {
            "+" | "#" => g.push(b'*'),
            _ => push_escaped(&mut g, level),
        }
    }
    g
}

/// The Redis subscriptions that together carry every topic `pattern` matches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Targets {
    /// Exact channels (`SUBSCRIBE`).
    pub channels: Vec<Vec<u8>>,
    /// Globs (`PSUBSCRIBE`).
    pub globs: Vec<Vec<u8>>,
}

/// A concrete topic needs its one channel; a wildcard pattern needs a glob.
/// `P/#` also matches `P` itself, which the glob `P/*` does not: a concrete
/// `P` adds its exact channel; for a wildcard `P` the single glob `P*`
/// covers both (as `*` spans `/`), where two overlapping globs would
/// deliver most messages twice.
pub(crate) fn targets(prefix: &str, pattern: &Pattern) -> Targets {
    let text = pattern.as_str();
    let mut t = Targets::default();
    if !pattern.is_wildcard() {
        t.channels.push(live_channel(prefix, text));
        return t;
    }
    match text.strip_suffix("/#") {
        Some(parent) if parent.split('/').any(|l| l == "+") => {
            let mut g = glob(prefix, parent);
            if g.last() != Some(&b'*') {
                g.push(b'*');
            }
            t.globs.push(g);
        }
        Some(parent) => {
            t.channels.push(live_channel(prefix, parent));
            t.globs.push(glob(prefix, text));
        }
        None => t.globs.push(glob(prefix, text)),
    }
    t
}

/// The live payload: `seq\nepoch\nts\nnode\n` then the raw data bytes. The
/// publish script builds it (see `scripts.rs`); this is the only parser.
/// Data is JSON and may hold newlines, so only the first four split.
pub(crate) fn parse_live(topic: &str, payload: Vec<u8>) -> Option<Message> {
    let mut fields = [0usize; 4];
    let mut start = 0;
    for end in fields.iter_mut() {
        let nl = payload[start..].iter().position(|&b| b == b'\n')?;
        *end = start + nl;
        start = start + nl + 1;
    }
    let text = |from: usize, to: usize| std::str::from_utf8(&payload[from..to]).ok();
    let seq = text(0, fields[0])?.parse().ok()?;
    let epoch: Arc<str> = text(fields[0] + 1, fields[1])?.into();
    let ts = text(fields[1] + 1, fields[2])?.parse().ok()?;
    // fields[2]+1 .. fields[3] is the publishing node, informational only.
    let data = Bytes::from(payload).slice(start..);
    Some(Message::new(topic.into(), seq, epoch, ts, data))
}

/// The node name as it travels in the payload: one line.
pub(crate) fn one_line(node: &str) -> String {
    node.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    #[test]
    fn keys_use_the_topic_verbatim() {
        let k = TopicKeys::new("pg", "a b/*[x]/ü/$s");
        assert_eq!(k.epoch, b"pg:epoch:a b/*[x]/\xc3\xbc/$s");
        assert_eq!(k.seq, "pg:seq:a b/*[x]/ü/$s".as_bytes());
        assert_eq!(k.log, "pg:log:a b/*[x]/ü/$s".as_bytes());
        assert_eq!(k.live, "pg:live:a b/*[x]/ü/$s".as_bytes());
        assert_eq!(topic_of_channel("pg", &k.live), Some("a b/*[x]/ü/$s"));
        assert_eq!(topic_of_channel("pg", b"other:live:x"), None);
        assert_eq!(topic_of_channel("pg", b"pg:log:x"), None);
    }

    #[test]
    fn concrete_topics_subscribe_one_channel() {
        let t = targets("pg", &p("a/b*"));
        assert_eq!(t.channels, vec![b"pg:live:a/b*".to_vec()]);
        assert!(t.globs.is_empty());
    }

    #[test]
    fn wildcards_become_escaped_globs() {
        let t = targets("pg", &p("a/+/c"));
        assert!(t.channels.is_empty());
        assert_eq!(t.globs, vec![b"pg:live:a/*/c".to_vec()]);

        let t = targets("p*g", &p("x?[y]\\/+"));
        assert_eq!(t.globs, vec![b"p\\*g:live:x\\?\\[y\\]\\\\/*".to_vec()]);

        // `a/#` also matches `a`: the parent's exact channel comes along.
        let t = targets("pg", &p("a/#"));
        assert_eq!(t.channels, vec![b"pg:live:a".to_vec()]);
        assert_eq!(t.globs, vec![b"pg:live:a/*".to_vec()]);

        // ... and a wildcard parent's glob covers both.
        let t = targets("pg", &p("+/#"));
        assert!(t.channels.is_empty());
        assert_eq!(t.globs, vec![b"pg:live:*".to_vec()]);
        let t = targets("pg", &p("a/+/b/#"));
        assert_eq!(t.globs, vec![b"pg:live:a/*/b*".to_vec()]);

        let t = targets("pg", &p("#"));
        assert!(t.channels.is_empty());
        assert_eq!(t.globs, vec![b"pg:live:*".to_vec()]);
    }

    #[test]
    fn parses_live_payloads() {
        let m = parse_live("a/b", b"42\nr00ff\n1700\nnode-1\n{\"x\":\n1}".to_vec()).unwrap();
        assert_eq!(&*m.topic, "a/b");
        assert_eq!(m.seq, 42);
        assert_eq!(&*m.epoch, "r00ff");
        assert_eq!(m.ts, 1700);
        assert_eq!(&m.data[..], b"{\"x\":\n1}");

        let empty = parse_live("t", b"1\ne\n2\nn\n".to_vec()).unwrap();
        assert!(empty.data.is_empty());

        assert!(parse_live("t", b"1\ne\n2\nn".to_vec()).is_none());
        assert!(parse_live("t", b"x\ne\n2\nn\n{}".to_vec()).is_none());
        assert!(parse_live("t", b"1\ne\n-2\nn\n{}".to_vec()).is_none());
        assert!(parse_live("t", Vec::new()).is_none());
    }

    #[test]
    fn node_names_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r"), "a b ");
    }
}
