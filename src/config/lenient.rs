//! Reading what a newer hakube may have written. During an upgrade, or
//! while one master already runs the next hakube, the cluster-wide record
//! can carry fields this hakube does not know. A file a person wrote is
//! still read strictly (a misspelt key is an error), but a record another
//! hakube wrote is read with the unknown fields set aside and named, so
//! that an older agent keeps converging on what it understands, and a
//! writer that would drop them refuses instead
//! ([`crate::cluster::settings::write`]).

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The names of `T`'s fields as its serialized form spells them (after
/// `rename_all`): what serde's derive hands to `deserialize_struct`.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that only notes the fields a struct asks for.
struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields noted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Removes from the JSON object `value` the keys `T` has no field for, and
/// returns them, sorted.
pub fn strip_unknown<'de, T: Deserialize<'de>>(value: &mut serde_json::Value) -> Vec<String> {
    let known = field_names::<T>();
    let Some(map) = value.as_object_mut() else { return vec![] };
    let unknown: Vec<String> = map.keys().filter(|k| !known.contains(&k.as_str())).cloned().collect();
    for k in &unknown {
        map.remove(k);
    }
    unknown
}

/// A [`crate::config::ClusterSpec`] another hakube wrote, its unknown
/// fields set aside (for `#[serde(deserialize_with)]`).
pub fn cluster_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::config::ClusterSpec>, D::Error> {
    let mut v = Option::<serde_json::Value>::deserialize(d)?;
    let Some(v) = v.as_mut() else { return Ok(None) };
    let unknown = strip_unknown::<crate::config::ClusterSpec>(v);
    if !unknown.is_empty() {
        tracing::warn!(fields = ?unknown, "the cluster-wide settings hold fields a newer hakube wrote: set aside");
    }
    serde_json::from_value(v.take()).map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterSpec;

    #[test]
    fn a_newer_records_unknown_fields_are_set_aside_and_named() {
        let names = field_names::<ClusterSpec>();
        assert!(names.contains(&"loadBalancerAddress") && names.contains(&"loadBalancerChange"), "{names:?}");
        let spec = crate::config::tests::test_config("{}").cluster;
        let mut v = serde_json::to_value(&spec).unwrap();
        v["nextRelease"] = serde_json::json!({"target": "v1.38.0"});
        v["zeta"] = serde_json::json!(1);
        // Strictly read, the record is refused, as a person's file would be.
        assert!(serde_json::from_value::<ClusterSpec>(v.clone()).is_err());
        let unknown = strip_unknown::<ClusterSpec>(&mut v);
        assert_eq!(unknown, ["nextRelease", "zeta"]);
        assert_eq!(serde_json::from_value::<ClusterSpec>(v).unwrap(), spec);
    }
}
