//! Tables keyed by names a binary knows (`[backends.NAME]`): reading one
//! refuses a name the binary does not know, with the error at that name's own key
//! (`invalid config at `backends.limts``), so a typo is an error rather than a table nobody
//! reads.
//!
//! This module does not say which names exist: each binary passes the names it uses. Tables keyed
//! by names the operator chooses (devices, users, topic prefixes) do not use it.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// Deserialises a table of `what`s by name (`deserialize_with` of a config field), refusing any
/// name not in `known` with an error at that name's key that lists the known ones.
pub fn only_known<'de, D, V>(
    deserializer: D,
    what: &'static str,
    known: &'static [&'static str],
) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(Known {
        what,
        known,
        value: PhantomData,
    })
}

struct Known<V> {
    what: &'static str,
    known: &'static [&'static str],
    value: PhantomData<V>,
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for Known<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a table of {}s by name", self.what)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            if self.known.contains(&name.as_str()) {
                let value = map.next_value()?;
                out.insert(name, value);
            } else {
                // Refused from inside the value, so that the error's path ends in the name.
                map.next_value_seed(Unknown {
                    what: self.what,
                    known: self.known,
                })?;
            }
        }
        Ok(out)
    }
}

/// The value of an unknown name: always an error.
struct Unknown {
    what: &'static str,
    known: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for Unknown {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(format!(
            "no {} of this name; known: {}",
            self.what,
            self.known.join(", ")
        )))
    }
}
