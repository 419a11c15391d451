//! Destination access rules for generic `/topic` and `/queue` traffic.
//!
//! Rules are checked in order and the first whose pattern matches decides; a
//! destination no rule matches is denied. Patterns are globs over
//! `/`-separated segments: `*` stands for exactly one segment, `**` (only as
//! the last segment) for any rest, including none.

use serde::{Deserialize, Serialize};

/// `[acl]`: the ordered rule list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acl {
    /// Rules, first match wins; no match = deny.
    pub rules: Vec<AclRule>,
}

/// One `[[acl.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Destination glob, e.g. `/topic/news/*` or `/queue/**`.
    pub pattern: String,
    /// Who may SUBSCRIBE to matching destinations.
    pub subscribe: AclPolicy,
    /// Who may SEND to matching destinations.
    pub send: AclPolicy,
}

/// Who a rule lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclPolicy {
    /// Any authenticated connection (every STOMP connection is one).
    Authenticated,
    /// Nobody.
    Deny,
}

/// The operation being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOp {
    /// SUBSCRIBE.
    Subscribe,
    /// SEND.
    Send,
}

impl Default for Acl {
    fn default() -> Self {
        use AclPolicy::{Authenticated, Deny};
        Acl {
            rules: vec![
                // Chat destinations have their own membership checks; the
                // generic broker must never serve them.
                AclRule::new("/topic/chat/**", Deny, Deny),
                AclRule::new("/app/**", Deny, Deny),
                AclRule::new("/topic/**", Authenticated, Authenticated),
                AclRule::new("/queue/**", Authenticated, Authenticated),
            ],
        }
    }
}

impl AclRule {
    /// A rule for `pattern`.
    pub fn new(pattern: impl Into<String>, subscribe: AclPolicy, send: AclPolicy) -> Self {
        AclRule {
            pattern: pattern.into(),
            subscribe,
            send,
        }
    }

    /// The policy this rule sets for `op`.
    pub fn policy(&self, op: AclOp) -> AclPolicy {
        match op {
            AclOp::Subscribe => self.subscribe,
            AclOp::Send => self.send,
        }
    }

    /// Whether `dest` matches this rule's pattern.
    pub fn matches(&self, dest: &str) -> bool {
        glob_matches(&self.pattern, dest)
    }
}

impl Acl {
    /// Whether an authenticated connection may perform `op` on `dest`.
    pub fn check(&self, dest: &str, op: AclOp) -> bool {
        self.rules
            .iter()
            .find(|rule| rule.matches(dest))
            .is_some_and(|rule| rule.policy(op) == AclPolicy::Authenticated)
    }
}

/// Why a pattern is not a usable glob, or `None` when it is.
pub(crate) fn pattern_problem(pattern: &str) -> Option<&'static str> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Some("must start with '/'");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Some("has an empty segment");
        }
        if *segment == "**" && i + 1 != segments.len() {
            return Some("'**' is only allowed as the last segment");
        }
        if segment.contains('*') && *segment != "*" && *segment != "**" {
            return Some("'*' and '**' must be whole segments");
        }
    }
    None
}

fn glob_matches(pattern: &str, dest: &str) -> bool {
    let (Some(pattern), Some(dest)) = (pattern.strip_prefix('/'), dest.strip_prefix('/')) else {
        return false;
    };
    let mut dest_segments = dest.split('/');
    for segment in pattern.split('/') {
        if segment == "**" {
            return true;
        }
        match dest_segments.next() {
            Some(d) if segment == "*" && !d.is_empty() => {}
            Some(d) if segment == d => {}
            _ => return false,
        }
    }
    dest_segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(rules: &[(&str, AclPolicy, AclPolicy)]) -> Acl {
        Acl {
            rules: rules
                .iter()
                .map(|(p, s, d)| AclRule::new(*p, *s, *d))
                .collect(),
        }
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        assert!(glob_matches("/topic/*", "/topic/news"));
        assert!(!glob_matches("/topic/*", "/topic"));
        assert!(!glob_matches("/topic/*", "/topic/news/sport"));
        assert!(!glob_matches("/topic/*", "/topic/"));
        assert!(glob_matches("/topic/*/live", "/topic/a/live"));
        assert!(!glob_matches("/topic/*/live", "/topic/a/b/live"));
    }

    #[test]
    fn double_star_matches_any_rest() {
        assert!(glob_matches("/topic/**", "/topic"));
        assert!(glob_matches("/topic/**", "/topic/a"));
        assert!(glob_matches("/topic/**", "/topic/a/b/c"));
        assert!(!glob_matches("/topic/**", "/topics/a"));
        assert!(!glob_matches("/topic/**", "/queue/a"));
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(glob_matches("/queue/jobs", "/queue/jobs"));
        assert!(!glob_matches("/queue/jobs", "/queue/jobs/x"));
        assert!(!glob_matches("/queue/jobs", "/queue/job"));
        assert!(!glob_matches("/queue/jobs", "queue/jobs"));
    }

    #[test]
    fn first_matching_rule_wins_and_no_match_denies() {
        use AclPolicy::{Authenticated, Deny};
        let acl = acl(&[
            ("/topic/secret/*", Deny, Deny),
            ("/topic/**", Authenticated, Deny),
            ("/topic/secret/*", Authenticated, Authenticated),
        ]);
        assert!(!acl.check("/topic/secret/x", AclOp::Subscribe));
        assert!(acl.check("/topic/open", AclOp::Subscribe));
        assert!(!acl.check("/topic/open", AclOp::Send));
        assert!(!acl.check("/queue/x", AclOp::Subscribe));
        assert!(!acl.check("/queue/x", AclOp::Send));
    }

    #[test]
    fn default_rules_reserve_chat_and_app_destinations() {
        let acl = Acl::default();
        for dest in [
            "/topic/chat",
            "/topic/chat/c1",
            "/topic/chat/c1/typing",
            "/topic/chat/c1/read",
            "/app/chat.send",
            "/app/presence.set",
        ] {
            assert!(!acl.check(dest, AclOp::Subscribe), "{dest}");
            assert!(!acl.check(dest, AclOp::Send), "{dest}");
        }
        for dest in ["/topic/news", "/topic/a/b", "/queue/jobs", "/topic/chatter"] {
            assert!(acl.check(dest, AclOp::Subscribe), "{dest}");
            assert!(acl.check(dest, AclOp::Send), "{dest}");
        }
        for dest in ["/user/queue/messages", "/exchange/x", "topic/news", ""] {
            assert!(!acl.check(dest, AclOp::Subscribe), "{dest}");
        }
    }

    #[test]
    fn pattern_problems_are_named() {
        assert_eq!(pattern_problem("/topic/**"), None);
        assert_eq!(pattern_problem("/topic/*/x"), None);
        assert!(pattern_problem("topic/**").is_some());
        assert!(pattern_problem("/topic//x").is_some());
        assert!(pattern_problem("/topic/**/x").is_some());
        assert!(pattern_problem("/topic/ne*").is_some());
        assert!(pattern_problem("/").is_some());
    }
}
