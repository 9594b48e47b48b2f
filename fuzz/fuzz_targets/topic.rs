//! Topic and pattern syntax (`validate_topic`, `Pattern::parse`) and
//! matching (`Pattern::matches`, `topic::matches`, `topic::covers`), checked
//! against reference implementations written here from the rules in
//! docs/protocol.md ("Topics and patterns").
//!
//! Input layout: the first byte picks the length limit; the rest is read as
//! UTF-8 (lossily when it is not valid UTF-8) and split at the first `\n`
//! into a pattern and a topic; the whole text is also tried as both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate_proto::topic::{self, validate_topic, Pattern, MAX_LEVELS};

/// Length limits tried: tiny ones to hit the boundary, the default (256) and
/// the ceiling the config accepts (65535).
const MAX_LENS: [usize; 6] = [1, 2, 7, 64, 256, 65535];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let max_len = MAX_LENS[usize::from(sel) % MAX_LENS.len()];
    let text = String::from_utf8_lossy(rest);
    match text.split_once('\n') {
        Some((p, t)) => check(p, t, max_len),
        None => check(&text, &text, max_len),
    }
    check(&text, &text, max_len);
});

fn check(pattern: &str, topic: &str, max_len: usize) {
    let topic_ok = validate_topic(topic, max_len).is_ok();
    assert_eq!(
        topic_ok,
        reference_topic_ok(topic, max_len),
        "validate_topic({topic:?}, {max_len}) disagrees with the rules"
    );
    // The pattern string is also validated as a topic, and vice versa.
    assert_eq!(
        validate_topic(pattern, max_len).is_ok(),
        reference_topic_ok(pattern, max_len),
        "validate_topic({pattern:?}, {max_len}) disagrees with the rules"
    );
    let parsed = Pattern::parse(pattern, max_len);
    assert_eq!(
        parsed.is_ok(),
        reference_pattern_ok(pattern, max_len),
        "Pattern::parse({pattern:?}, {max_len}) disagrees with the rules: {parsed:?}"
    );
    // Every valid topic is a valid (concrete) pattern that matches itself.
    if topic_ok {
        let p = Pattern::parse(topic, max_len)
            .unwrap_or_else(|e| panic!("valid topic {topic:?} is not a valid pattern: {e}"));
        assert!(!p.is_wildcard(), "{topic:?} is concrete");
        assert!(p.matches(topic), "{topic:?} does not match itself");
    }
    let Ok(pat) = parsed else {
        return;
    };
    assert_eq!(pat.as_str(), pattern);
    assert_eq!(
        pat.is_wildcard(),
        pattern.split('/').any(|l| l == "+" || l == "#"),
        "is_wildcard of {pattern:?}"
    );
    if !topic_ok {
        return;
    }
    let expected = reference_matches(pattern, topic);
    assert_eq!(
        pat.matches(topic),
        expected,
        "Pattern({pattern:?}).matches({topic:?})"
    );
    assert_eq!(
        topic::matches(pattern, topic),
        expected,
        "topic::matches({pattern:?}, {topic:?})"
    );
    // A grant covers a concrete topic exactly when it matches it.
    assert_eq!(
        topic::covers(pattern, topic),
        expected,
        "topic::covers({pattern:?}, {topic:?})"
    );
    // A concrete topic used as a grant covers only itself.
    assert_eq!(
        topic::covers(topic, pattern),
        topic == pattern,
        "topic::covers({topic:?}, {pattern:?})"
    );
}

/// Rules shared by topics and patterns: 1..=max_len bytes, no control
/// character, 1..=MAX_LEVELS levels, none empty, `.` or `..`.
fn reference_common_ok(s: &str, max_len: usize) -> bool {
    if s.is_empty() || s.len() > max_len {
        return false;
    }
    if s.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}') {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels.len() <= MAX_LEVELS && levels.iter().all(|l| !matches!(*l, "" | "." | ".."))
}

fn reference_topic_ok(s: &str, max_len: usize) -> bool {
    reference_common_ok(s, max_len) && !s.chars().any(|c| c == '+' || c == '#')
}

/// `+` must be a whole level; `#` a whole level and the last one.
fn reference_pattern_ok(s: &str, max_len: usize) -> bool {
    if !reference_common_ok(s, max_len) {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i + 1 == levels.len(),
        other => !other.contains(['+', '#']),
    })
}

/// Reference matcher, written differently from the crate's (which walks two
/// iterators): a pattern ending in `#` at level k matches a topic with at
/// least k levels whose first k levels match; otherwise the level counts
/// must be equal and every level equal or `+`. A `+` or `#` in the first
/// level never matches a topic whose first level starts with `$`.
fn reference_matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if t[0].starts_with('$') && (p[0] == "+" || p[0] == "#") {
        return false;
    }
    let level_ok = |(pl, tl): (&&str, &&str)| *pl == "+" || pl == tl;
    match p.last() {
        Some(&"#") => {
            let k = p.len() - 1;
            t.len() >= k && p[..k].iter().zip(&t[..k]).all(level_ok)
        }
        _ => p.len() == t.len() && p.iter().zip(&t).all(level_ok),
    }
}
