//! Kubernetes label selectors: the string form (`app=web,tier!=db,env in (a,b),gpu,!legacy`)
//! used in list and watch requests, and matching labels against them.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector {selector:?}: {msg}")]
pub struct SelectorError {
    pub selector: String,
    pub msg: String,
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The string form `parse` reads, as kube-apiserver prints a selector (a Scale's).
impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |msg: String| SelectorError { selector: s.to_string(), msg };
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((key, rest)) = split_set_op(term, " notin ") {
                Requirement::NotIn(key, parse_set(rest).ok_or_else(|| err(format!("bad value set in {term:?}")))?)
            } else if let Some((key, rest)) = split_set_op(term, " in ") {
                Requirement::In(key, parse_set(rest).ok_or_else(|| err(format!("bad value set in {term:?}")))?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else {
                Requirement::Exists(term.to_string())
            };
            let (key, values): (&str, Vec<&String>) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().collect()),
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(err(format!("{key:?} is not a valid label key")));
            }
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return Err(err(format!("{v:?} is not a valid label value")));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Equality on every pair of a map (a Service's selector, `matchLabels`).
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        Self(m.iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect())
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_set_op<'a>(term: &'a str, op: &str) -> Option<(String, &'a str)> {
    let (k, rest) = term.split_once(op)?;
    Some((k.trim().to_string(), rest.trim()))
}

fn parse_set(s: &str) -> Option<BTreeSet<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("missing notin (x)", true),
            ("tier", true),
            ("!tier", false),
            ("!gpu", true),
            ("app=web,env in (dev,prod),!gpu", true),
            ("app=web,tier=back", false),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in ["app=we b", "env in prod", "=x", "a=b,,c in (", "-bad=1"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
