//! How pulsegate topics and patterns become NATS subjects, and back.
//!
//! A topic's levels become subject tokens. NATS gives `.`, `*`, `>` and
//! whitespace a meaning (and `$` starts its own API subjects), while a
//! pulsegate level may hold any UTF-8 except control characters, so every
//! level is escaped: `A-Z a-z 0-9 _ -` are kept, every other byte (of the
//! UTF-8 encoding) is written `~XX` in upper-case hex, `~` itself included.
//! The mapping is reversible, so a received subject gives back its topic
//! without any lookup.
//!
//! | topic        | tokens               |
//! |--------------|----------------------|
//! | `site/a b`   | `site.a~20b`         |
//! | `$sys/x.y`   | `~24sys.x~2Ey`       |
//! | `ü`          | `~C3~BC`             |
//!
//! Patterns map level by level: `+` becomes `*`; a trailing `#` becomes `>`
//! plus the parent's exact subject, because `#` also matches zero levels
//! (`a/#` matches `a`) and NATS `>` needs at least one token. A lone `#`
//! becomes `>` alone. The `$` rule (a first-level wildcard never matches a
//! topic starting with `$`) has no NATS equivalent, so receivers filter with
//! [`Pattern::matches`] as well.

use pulsegate_proto::Pattern;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn escape_level(level: &str, out: &mut String) {
    for &b in level.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('~');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// The subject tokens of `topic`: its levels escaped and joined by `.`.
///
/// `topic_to_tokens("site/a b") == "site.a~20b"`. The result never contains
/// `*`, `>`, whitespace or a `.` other than the separators.
pub fn topic_to_tokens(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        escape_level(level, &mut out);
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The topic whose tokens are `tokens` (the inverse of [`topic_to_tokens`]);
/// `None` when `tokens` is not something `topic_to_tokens` can produce.
pub fn tokens_to_topic(tokens: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if token.is_empty() {
            return None;
        }
        if i > 0 {
            bytes.push(b'/');
        }
        let mut rest = token.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'~' {
                let [h, l, tail @ ..] = tail else {
                    return None;
                };
                bytes.push(hex_value(*h)? << 4 | hex_value(*l)?);
                rest = tail;
            } else if is_plain(b) {
                bytes.push(b);
                rest = tail;
            } else {
                return None;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// The subjects (under `prefix`, e.g. `pg.l`) that together carry every
/// topic `pattern` matches: one, or two for a trailing `#` below the root.
pub fn pattern_subjects(prefix: &str, pattern: &Pattern) -> Vec<String> {
    let levels: Vec<&str> = pattern.as_str().split('/').collect();
    let mut subject = String::from(prefix);
    let mut parent = None;
    for level in &levels {
        if *level == "#" {
            // Everything below, plus the parent itself (zero levels).
            if subject.len() > prefix.len() {
                parent = Some(subject.clone());
            }
            subject.push_str(".>");
            break;
        }
        subject.push('.');
        if *level == "+" {
            subject.push('*');
        } else {
            escape_level(level, &mut subject);
        }
    }
    let mut subjects = vec![subject];
    subjects.extend(parent);
    subjects
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s, 1024).unwrap()
    }

    #[test]
    fn escapes_reserved_characters() {
        assert_eq!(topic_to_tokens("site/a/power"), "site.a.power");
        assert_eq!(topic_to_tokens("a b/c.d"), "a~20b.c~2Ed");
        assert_eq!(topic_to_tokens("*/>/~"), "~2A.~3E.~7E");
        assert_eq!(topic_to_tokens("$sys/x"), "~24sys.x");
        assert_eq!(topic_to_tokens("ü"), "~C3~BC");
        assert_eq!(topic_to_tokens("x-y_Z9"), "x-y_Z9");
    }

    #[test]
    fn decodes_what_it_encodes_and_nothing_else() {
        assert_eq!(tokens_to_topic("a~20b.c~2Ed").as_deref(), Some("a b/c.d"));
        assert_eq!(tokens_to_topic("~C3~BC").as_deref(), Some("ü"));
        assert_eq!(tokens_to_topic("a..b"), None);
        assert_eq!(tokens_to_topic("a~2"), None);
        assert_eq!(
            tokens_to_topic("a~2e"),
            None,
            "lower-case hex is never produced"
        );
        assert_eq!(tokens_to_topic("a b"), None);
        assert_eq!(tokens_to_topic("~FF"), None, "not UTF-8");
    }

    #[test]
    fn patterns_map_to_subjects() {
        let s = |p: &str| pattern_subjects("pg.l", &pattern(p));
        assert_eq!(s("a/b"), ["pg.l.a.b"]);
        assert_eq!(s("a/+"), ["pg.l.a.*"]);
        assert_eq!(s("+/x y"), ["pg.l.*.x~20y"]);
        assert_eq!(s("a/#"), ["pg.l.a.>", "pg.l.a"]);
        assert_eq!(s("a/+/#"), ["pg.l.a.*.>", "pg.l.a.*"]);
        assert_eq!(s("#"), ["pg.l.>"]);
    }

    /// Any valid topic: 1 to 6 levels of arbitrary non-control characters.
    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec("[^\\p{Cc}/]{1,12}", 1..6)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid topic", |t| {
                pulsegate_proto::topic::validate_topic(t, 4096).is_ok()
            })
    }

    proptest! {
        #[test]
        fn round_trips(t in topic()) {
            let tokens = topic_to_tokens(&t);
            prop_assert_eq!(tokens_to_topic(&tokens), Some(t.clone()));
            prop_assert_eq!(tokens.split('.').count(), t.split('/').count());
            for token in tokens.split('.') {
                prop_assert!(!token.is_empty());
                prop_assert!(!token.contains(['*', '>', '.']), "{token}");
                prop_assert!(!token.chars().any(char::is_whitespace), "{token}");
                prop_assert!(token.is_ascii());
            }
        }

        #[test]
        fn exact_pattern_subject_is_the_topic_subject(t in topic()) {
            let subjects = pattern_subjects("pg.l", &pattern(&t));
            prop_assert_eq!(subjects, vec![format!("pg.l.{}", topic_to_tokens(&t))]);
        }
    }
}
