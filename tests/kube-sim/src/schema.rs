//! Admission of custom resources against their CRD's OpenAPI v3 schema, as
//! the API server does it: unknown fields pruned (unless the schema keeps
//! them), then types, required fields, enums, bounds, lengths, patterns,
//! list sizes, and the `x-kubernetes-validations` CEL rules (through
//! kube's CEL evaluator).

use serde_json::Value;

/// One refused field, as in a `Status` cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

/// Drop fields the schema does not declare (what the API server does with
/// `x-kubernetes-preserve-unknown-fields` unset).
pub fn prune(value: &mut Value, schema: &Value) {
    if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                map.retain(|k, _| {
                    props.contains_key(k)
                        || matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                });
                for (k, v) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(v, s);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    prune(v, ap);
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                prune(i, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// Check `value` against `schema`; every violation, with its field path.
pub fn check(value: &Value, schema: &Value, path: &str, out: &mut Vec<Cause>) {
    let mut fail = |m: String| {
        out.push(Cause {
            field: path.trim_start_matches('.').to_string(),
            message: m,
        })
    };
    if value.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    let t = schema["type"].as_str().unwrap_or_default();
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    let type_ok = match t {
        _ if int_or_string => value.is_i64() || value.is_u64() || value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        fail(format!(
            "Invalid value: {}: must be of type {t}",
            short(value)
        ));
        return;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        let allowed: Vec<String> = values.iter().map(short).collect();
        fail(format!(
            "Unsupported value: {}: supported values: {}",
            short(value),
            allowed.join(", ")
        ));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            fail(format!(
                "Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            fail(format!(
                "Invalid value: {}: should be at least {} chars long",
                short(value),
                schema["minLength"]
            ));
        }
        if let Some(p) = schema["pattern"].as_str() {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(s) => fail(format!(
                    "Invalid value: {}: should match '{p}'",
                    short(value)
                )),
                _ => {}
            }
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            fail(format!(
                "Invalid value: {n}: should be less than or equal to {}",
                schema["maximum"]
            ));
        }
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            fail(format!(
                "Invalid value: {n}: should be greater than or equal to {}",
                schema["minimum"]
            ));
        }
    }
    if let Some(items) = value.as_array() {
        if schema["maxItems"]
            .as_u64()
            .is_some_and(|m| items.len() as u64 > m)
        {
            fail(format!(
                "Too many: {}: must have at most {} items",
                items.len(),
                schema["maxItems"]
            ));
        }
        if schema["minItems"]
            .as_u64()
            .is_some_and(|m| (items.len() as u64) < m)
        {
            fail(format!(
                "Invalid value: {} items: should have at least {} items",
                items.len(),
                schema["minItems"]
            ));
        }
        for (i, item) in items.iter().enumerate() {
            check(item, &schema["items"], &format!("{path}[{i}]"), out);
        }
    }
    if let Some(map) = value.as_object() {
        for r in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(r) {
                out.push(Cause {
                    field: format!("{path}.{r}").trim_start_matches('.').to_string(),
                    message: "Required value".into(),
                });
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, v) in map {
                if let Some(s) = props.get(k) {
                    check(v, s, &format!("{path}.{k}"), out);
                }
            }
        } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            for (k, v) in map {
                check(v, ap, &format!("{path}[{k}]"), out);
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Admit a custom resource: prune, check, evaluate CEL (with `old` for
/// transition rules on update). The pruned object, or every cause.
pub fn admit(mut obj: Value, old: Option<&Value>, schema: &Value) -> Result<Value, Vec<Cause>> {
    prune(&mut obj, schema);
    let mut causes = Vec::new();
    // metadata is validated by the server itself, not by the CRD schema.
    let mut body = obj.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("metadata");
    }
    let mut schema_body = schema.clone();
    if let Some(props) = schema_body["properties"].as_object_mut() {
        props.remove("metadata");
    }
    check(&body, &schema_body, "", &mut causes);
    if causes.is_empty()
        && let Err(errors) = kube::core::cel::Validator::new().validate(schema, &obj, old)
    {
        for e in errors.into_vec() {
            causes.push(Cause {
                field: e.field_path.clone(),
                message: format!("Invalid value: \"object\": {}", e.message),
            });
        }
    }
    if causes.is_empty() {
        Ok(obj)
    } else {
        Err(causes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_pruned_and_bad_values_named() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 1}, "s": {"type": "string", "pattern": "^[a-z]+$"}}}}});
        let ok = admit(json!({"spec": {"n": 2, "extra": true}}), None, &schema).unwrap();
        assert_eq!(ok, json!({"spec": {"n": 2}}));
        let bad = admit(json!({"spec": {"n": 0, "s": "X"}}), None, &schema).unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].field, "spec.n");
        assert_eq!(
            admit(json!({"spec": {}}), None, &schema).unwrap_err()[0].field,
            "spec.n"
        );
    }
}
