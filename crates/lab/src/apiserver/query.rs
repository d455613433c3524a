//! What a list or watch asks for beyond the resource: its label and field selectors, and
//! whether it wants kubectl's Table form.

use super::Request;
use super::status::ApiError;
use axum::http::header;
use flatnet_model::selector::LabelSelector;
use serde_json::Value;

/// `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma-separated, on any
/// dotted field path (`metadata.name`, `spec.nodeName`, `involvedObject.uid`, …).
pub(crate) struct FieldSelector(Vec<(Vec<String>, String, bool)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, eq) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector {term:?}: expected field=value")));
            };
            reqs.push((path.trim().split('.').map(str::to_string).collect(), value.trim().to_string(), eq));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.0.iter().all(|(path, want, eq)| {
            let mut cur = v;
            for p in path {
                cur = &cur[p.as_str()];
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

/// The label and field selectors of a list or watch.
pub(crate) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn from(req: &Request) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or(""))?;
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.labels.matches(&crate::store::labels(v)) && self.fields.matches(v)
    }
}

pub(crate) fn wants_table(req: &Request) -> bool {
    req.headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("as=Table"))
}
