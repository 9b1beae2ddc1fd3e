//! Kubernetes label selectors: `matchLabels` and `matchExpressions`.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::LabelSelector;

/// A checked label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Check a selector the way the API server does. An absent selector
    /// selects everything. The error names the field below the selector.
    pub fn parse(selector: Option<&LabelSelector>) -> Result<Self, (String, String)> {
        let Some(selector) = selector else {
            return Ok(Self::default());
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(
                key.clone(),
                BTreeSet::from([value.clone()]),
            ));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} needs at least one value", expr.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} takes no values", expr.operator),
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err((
                        format!("{field}.operator"),
                        format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key));
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, values) => get(k).is_some_and(|v| values.contains(v)),
            // As in Kubernetes: an object without the label is selected by NotIn.
            Requirement::NotIn(k, values) => get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        let s = LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        Selector::parse(Some(&s)).unwrap()
    }

    #[test]
    fn absent_and_empty_selectors_select_everything() {
        assert!(Selector::parse(None).unwrap().matches(None));
        assert!(selector(&[], vec![]).matches(Some(&labels(&[("a", "b")]))));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = selector(&[("tier", "edge"), ("env", "prod")], vec![]);
        assert!(s.matches(Some(&labels(&[
            ("tier", "edge"),
            ("env", "prod"),
            ("x", "y")
        ]))));
        assert!(!s.matches(Some(&labels(&[("tier", "edge")]))));
        assert!(!s.matches(Some(&labels(&[("tier", "edge"), ("env", "dev")]))));
        assert!(!s.matches(None));
    }

    #[test]
    fn match_expressions_follow_kubernetes_semantics() {
        let lbl = labels(&[("env", "prod"), ("team", "mail")]);
        let cases = [
            (expr("env", "In", &["prod", "staging"]), true),
            (expr("env", "In", &["dev"]), false),
            (expr("env", "NotIn", &["dev"]), true),
            (expr("env", "NotIn", &["prod"]), false),
            (expr("missing", "NotIn", &["x"]), true),
            (expr("team", "Exists", &[]), true),
            (expr("missing", "Exists", &[]), false),
            (expr("missing", "DoesNotExist", &[]), true),
            (expr("team", "DoesNotExist", &[]), false),
        ];
        for (e, want) in cases {
            let desc = format!("{e:?}");
            assert_eq!(selector(&[], vec![e]).matches(Some(&lbl)), want, "{desc}");
        }
        let both = selector(&[("team", "mail")], vec![expr("env", "In", &["prod"])]);
        assert!(both.matches(Some(&lbl)));
    }

    #[test]
    fn malformed_expressions_name_the_field() {
        let bad = |e| {
            Selector::parse(Some(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            }))
            .unwrap_err()
        };
        assert_eq!(
            bad(expr("a", "Equals", &["b"])).0,
            "matchExpressions[0].operator"
        );
        assert_eq!(bad(expr("a", "In", &[])).0, "matchExpressions[0].values");
        assert_eq!(
            bad(expr("a", "Exists", &["b"])).0,
            "matchExpressions[0].values"
        );
    }
}
