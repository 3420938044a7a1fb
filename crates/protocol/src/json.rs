//! Reading and writing JSON object fields without `Value`'s index operators, whose
//! writes panic on anything but an object or null.

use serde_json::Value;

static NULL: Value = Value::Null;

pub trait Fields {
    /// The field `key`; null when it is absent or this is not an object.
    fn field(&self, key: &str) -> &Value;

    /// Sets `key` on an object (a null becomes one); anything else is left as it is.
    fn set(&mut self, key: &str, value: Value);
}

impl Fields for Value {
    fn field(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }

    fn set(&mut self, key: &str, value: Value) {
        if self.is_null() {
            *self = Value::Object(serde_json::Map::new());
        }
        if let Some(o) = self.as_object_mut() {
            o.insert(key.to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_read_and_write_as_the_index_operators_do_without_panicking() {
        let mut v = json!({"a": {"b": 1}});
        assert_eq!(v.field("a").field("b"), &json!(1));
        assert_eq!(v.field("x").field("y"), &Value::Null);
        v.set("c", json!(2));
        assert_eq!(v, json!({"a": {"b": 1}, "c": 2}));
        let mut null = Value::Null;
        null.set("k", json!(true));
        assert_eq!(null, json!({"k": true}));
        let mut list = json!([1]);
        list.set("k", json!(true));
        assert_eq!(list, json!([1]));
        assert_eq!(list.field("k"), &Value::Null);
    }
}
