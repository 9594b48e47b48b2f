//! Topic and pattern syntax, and matching.
//!
//! A topic is a `/`-separated list of levels such as `site/a/power`. Rules
//! (documented in docs/protocol.md):
//! - 1 to `max_len` bytes of UTF-8, at most [`MAX_LEVELS`] levels;
//! - no empty level (no leading, trailing or double `/`), no level `.` or `..`;
//! - no control characters (U+0000–U+001F, U+007F);
//! - `+` and `#` are wildcards: in a concrete topic they are not allowed at all;
//!   in a pattern `+` must be a whole level and `#` a whole, last level.

use std::fmt;

/// Most levels a topic or pattern may have; bounds matching cost.
pub const MAX_LEVELS: usize = 32;

/// Why a topic or pattern was refused. The message is sent to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than the configured limit.
    #[error("topic is {len} bytes, longer than the limit of {max} (limits.max_topic_length)")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_LEVELS`] levels.
    #[error("topic has more than {MAX_LEVELS} levels")]
    TooManyLevels,
    /// `a//b`, `/a`, `a/`.
    #[error("topic has an empty level (leading, trailing or double '/')")]
    EmptyLevel,
    /// A `.` or `..` level.
    #[error("topic level '.' or '..' is not allowed")]
    DotLevel,
    /// Control character.
    #[error("topic contains a control character")]
    ControlChar,
    /// A wildcard in a topic that must be concrete (publish, last value, history).
    #[error("wildcards '+' and '#' are not allowed here: publish to a concrete topic")]
    WildcardInTopic,
    /// `+` or `#` mixed with other characters in a level, or `#` not last.
    #[error("'+' must be a whole level and '#' a whole, last level")]
    BadWildcard,
}

fn check_common(s: &str, max_len: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max_len {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: max_len,
        });
    }
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(TopicError::ControlChar);
    }
    let mut levels = 0;
    for level in s.split('/') {
        levels += 1;
        if levels > MAX_LEVELS {
            return Err(TopicError::TooManyLevels);
        }
        if level.is_empty() {
            return Err(TopicError::EmptyLevel);
        }
        if level == "." || level == ".." {
            return Err(TopicError::DotLevel);
        }
    }
    Ok(())
}

/// Checks that `s` is a valid concrete topic (publishable, no wildcards).
pub fn validate_topic(s: &str, max_len: usize) -> Result<(), TopicError> {
    check_common(s, max_len)?;
    if s.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic);
    }
    Ok(())
}

/// A validated subscription pattern: a concrete topic or one with wildcards.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
    wildcard: bool,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str, max_len: usize) -> Result<Pattern, TopicError> {
        check_common(s, max_len)?;
        let mut wildcard = false;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "+" => wildcard = true,
                "#" if levels.peek().is_none() => wildcard = true,
                _ if level.contains(['+', '#']) => return Err(TopicError::BadWildcard),
                _ => {}
            }
        }
        Ok(Pattern {
            text: s.into(),
            wildcard,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if the pattern contains `+` or `#`; false for a concrete topic.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether the concrete `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        if !self.wildcard {
            return &*self.text == topic;
        }
        matches(&self.text, topic)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Matches a (valid) pattern against a (valid) concrete topic, level by level.
/// `#` matches the rest, including zero levels (`a/#` matches `a`), as in MQTT.
/// As in MQTT, a wildcard in the first level never matches a topic whose
/// first level starts with `$` (`$sys/…` is reserved for the server): `#`
/// does not leak server internals to every subscriber.
pub fn matches(pattern: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (pattern.starts_with('#') || pattern.starts_with('+')) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(pl), Some(tl)) if pl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by the (valid) pattern `pattern` is also
/// matched by the (valid) pattern `grant`: the check behind topic ACLs, so
/// that a grant of `site/+/power` allows subscribing to `site/a/power` and
/// `site/+/power` but not `site/#` or `#`.
pub fn covers(grant: &str, pattern: &str) -> bool {
    let grant_dollar_wild = grant.starts_with('#') || grant.starts_with('+');
    if grant_dollar_wild && pattern.starts_with('$') {
        return false;
    }
    let mut g = grant.split('/');
    let mut p = pattern.split('/');
    loop {
        match (g.next(), p.next()) {
            // `#` in the grant covers whatever is left, including nothing.
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(gl), Some(pl)) if gl == pl && pl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_topics() {
        for t in ["a", "site/a/power", "x-y_z/ünï/42", "$sys/x"] {
            assert_eq!(validate_topic(t, 256), Ok(()), "{t}");
        }
    }

    #[test]
    fn invalid_topics() {
        assert_eq!(validate_topic("", 256), Err(TopicError::Empty));
        assert_eq!(validate_topic("/a", 256), Err(TopicError::EmptyLevel));
        assert_eq!(validate_topic("a/", 256), Err(TopicError::EmptyLevel));
        assert_eq!(validate_topic("a//b", 256), Err(TopicError::EmptyLevel));
        assert_eq!(validate_topic("a/../b", 256), Err(TopicError::DotLevel));
        assert_eq!(validate_topic("a/\nb", 256), Err(TopicError::ControlChar));
        assert_eq!(validate_topic("a/+", 256), Err(TopicError::WildcardInTopic));
        assert_eq!(validate_topic("a/#", 256), Err(TopicError::WildcardInTopic));
        assert_eq!(
            validate_topic("abcd", 3),
            Err(TopicError::TooLong { len: 4, max: 3 })
        );
        let deep = vec!["x"; MAX_LEVELS + 1].join("/");
        assert_eq!(validate_topic(&deep, 1000), Err(TopicError::TooManyLevels));
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("site/+/power", 256).unwrap().is_wildcard());
        assert!(Pattern::parse("#", 256).unwrap().is_wildcard());
        assert!(!Pattern::parse("a/b", 256).unwrap().is_wildcard());
        assert_eq!(Pattern::parse("a/#/b", 256), Err(TopicError::BadWildcard));
        assert_eq!(Pattern::parse("a/b+", 256), Err(TopicError::BadWildcard));
        assert_eq!(Pattern::parse("a/#x", 256), Err(TopicError::BadWildcard));
    }

    #[test]
    fn matching() {
        let m = |p: &str, t: &str| Pattern::parse(p, 256).unwrap().matches(t);
        assert!(m("site/+/power", "site/a/power"));
        assert!(!m("site/+/power", "site/a/b/power"));
        assert!(!m("site/+/power", "site/power"));
        assert!(m("site/#", "site/a/b"));
        assert!(m("site/#", "site"));
        assert!(m("#", "anything/at/all"));
        assert!(!m("site/#", "other/a"));
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("+", "a/b"));
        assert!(m("+/+", "a/b"));
        // `$` topics are reserved: only a pattern naming `$…` literally matches them.
        assert!(!m("#", "$sys/stats"));
        assert!(!m("+/stats", "$sys/stats"));
        assert!(m("$sys/#", "$sys/stats"));
        assert!(m("$sys/+", "$sys/stats"));
        assert!(m("a/#", "a/$b"));
    }

    #[test]
    fn grants_cover_narrower_patterns_only() {
        assert!(covers("site/+/power", "site/a/power"));
        assert!(covers("site/+/power", "site/+/power"));
        assert!(!covers("site/+/power", "site/#"));
        assert!(!covers("site/a/power", "site/+/power"));
        assert!(covers("site/#", "site"));
        assert!(covers("site/#", "site/+/x/#"));
        assert!(!covers("site/#", "#"));
        assert!(covers("#", "a/b"));
        assert!(!covers("#", "$sys/stats"));
        assert!(covers("users/alice/#", "users/alice/inbox"));
        assert!(!covers("users/alice/#", "users/bob/inbox"));
        assert!(!covers("a/+", "a/+/b"));
    }

    /// The obvious definition: expand both into level vectors and compare.
    fn naive(pattern: &str, topic: &str) -> bool {
        let p: Vec<&str> = pattern.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if t[0].starts_with('$') && (p[0] == "#" || p[0] == "+") {
            return false;
        }
        for (i, pl) in p.iter().enumerate() {
            if *pl == "#" {
                return true;
            }
            match t.get(i) {
                None => return false,
                Some(tl) if *pl == "+" || pl == tl => {}
                Some(_) => return false,
            }
        }
        p.len() == t.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("cc".to_string()),
            Just("$s".to_string())
        ]
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..6).prop_map(|v| v.join("/"))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..6),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut v, hash)| {
                if hash {
                    v.push("#".to_string());
                }
                (!v.is_empty()).then(|| v.join("/"))
            })
    }

    proptest! {
        /// A grant that covers a pattern matches every topic the pattern matches.
        #[test]
        fn covering_grants_match_whatever_the_pattern_matches(
            g in pattern_strategy(), p in pattern_strategy(), t in topic_strategy()
        ) {
            let (gp, pp) = (Pattern::parse(&g, 256).unwrap(), Pattern::parse(&p, 256).unwrap());
            if covers(&g, &p) && pp.matches(&t) {
                prop_assert!(gp.matches(&t), "{g} covers {p} but not {t}");
            }
        }

        #[test]
        fn matcher_agrees_with_naive(p in pattern_strategy(), t in topic_strategy()) {
            let pat = Pattern::parse(&p, 256).unwrap();
            prop_assert_eq!(pat.matches(&t), naive(&p, &t));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Pattern::parse(&s, 256);
            let _ = validate_topic(&s, 256);
        }
    }
}
