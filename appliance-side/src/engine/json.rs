//! Readers for the loose JSON of docker request bodies: a field that is absent, null or of
//! another type reads as empty, as dockerd's decoder treats omitted fields.

use std::collections::BTreeMap;

use serde_json::Value;

/// An object of strings (`Labels`, `DriverOpts`, `Options`); a non-string value reads as "".
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// An array of strings (`Aliases`); other items are skipped.
pub fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_or_mistyped_fields_read_as_empty() {
        assert!(string_map(&Value::Null).is_empty());
        assert!(string_list(&json!("x")).is_empty());
        assert_eq!(
            string_map(&json!({"a": "1", "b": 2})),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "".into())])
        );
        assert_eq!(string_list(&json!(["a", 1, "b"])), ["a", "b"]);
    }
}
