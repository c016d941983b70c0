//! Free-form labels of an instance or a service ([`Metadata`]): text keys and values, sorted
//! by key, packed in one allocation.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Free-form labels: text keys and values, sorted by key, each key once. Read like a map
/// ([`get`](Self::get), [`iter`](Self::iter), [`len`](Self::len)), written and read as a
/// JSON object (as a `BTreeMap<String, String>` is, so the wire and the stores see the same
/// documents).
///
/// Every key and value lives in one allocation and their ends in a second one: a registry
/// holds one of these per instance, and a `BTreeMap<String, String>` spent a tree node and
/// two allocations per entry, several times the text of short labels. Changing one entry
/// copies them all (labels are small: at most 4 KiB per instance).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Key 0, value 0, key 1, value 1, … concatenated, keys in order.
    text: Box<str>,
    /// Where each key and value ends in `text`: `ends[2i]` is key i's end, `ends[2i + 1]`
    /// value i's.
    ends: Box<[u32]>,
}

impl Metadata {
    /// No labels.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether there is no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of every key and value together (what the 4 KiB limit counts).
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.value(i))
    }

    /// Whether `key` has a value.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// The entries, in key order.
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter { metadata: self, front: 0, back: self.len() }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Sets `key` to `value`; returns the value it replaces.
    ///
    /// # Panics
    /// When the labels would pass 4 GiB in total.
    // A map's signature, so code written for the map it replaced still compiles.
    #[allow(clippy::needless_pass_by_value)]
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let (at, old) = match self.position(&key) {
            Ok(i) => (i, Some(self.value(i).to_owned())),
            Err(i) => (i, None),
        };
        let skip = usize::from(old.is_some());
        let entries = self.iter().take(at).chain([(key.as_str(), value.as_str())]).chain(self.iter().skip(at + skip));
        *self = Self::pack(entries, self.text.len() + key.len() + value.len());
        old
    }

    /// Takes `key` out; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.position(key).ok()?;
        let old = self.value(at).to_owned();
        let entries = self.iter().take(at).chain(self.iter().skip(at + 1));
        *self = Self::pack(entries, self.text.len());
        Some(old)
    }

    /// Takes every key out.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The labels as a map.
    #[must_use]
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    /// Packs entries already sorted by key, each key once.
    fn pack<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>, capacity: usize) -> Self {
        let mut text = String::with_capacity(capacity);
        let mut ends = Vec::new();
        let end = |text: &String| u32::try_from(text.len()).expect("metadata over 4 GiB");
        for (k, v) in entries {
            text.push_str(k);
            ends.push(end(&text));
            text.push_str(v);
            ends.push(end(&text));
        }
        Self { text: text.into_boxed_str(), ends: ends.into_boxed_slice() }
    }

    /// Entries in any order, a key given twice keeping its last value (as a map's inserts
    /// would).
    fn from_entries<K: AsRef<str>, V: AsRef<str>>(mut entries: Vec<(K, V)>) -> Self {
        // Stable: of equal keys, the last given stays last.
        entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut kept: Vec<(&str, &str)> = Vec::with_capacity(entries.len());
        for (k, v) in &entries {
            match kept.last_mut() {
                Some(last) if last.0 == k.as_ref() => last.1 = v.as_ref(),
                _ => kept.push((k.as_ref(), v.as_ref())),
            }
        }
        let capacity = kept.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self::pack(kept.into_iter(), capacity)
    }

    /// Where `key` is, or where it would go.
    fn position(&self, key: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    fn bound(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] as usize }
    }

    fn key(&self, i: usize) -> &str {
        &self.text[self.bound(2 * i)..self.ends[2 * i] as usize]
    }

    fn value(&self, i: usize) -> &str {
        &self.text[self.ends[2 * i] as usize..self.ends[2 * i + 1] as usize]
    }
}

/// The entries of a [`Metadata`], in key order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    metadata: &'a Metadata,
    front: usize,
    back: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        (self.front < self.back).then(|| {
            self.front += 1;
            (self.metadata.key(self.front - 1), self.metadata.value(self.front - 1))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.back - self.front, Some(self.back - self.front))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        (self.front < self.back).then(|| {
            self.back -= 1;
            (self.metadata.key(self.back), self.metadata.value(self.back))
        })
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Metadata {
    /// # Panics
    /// When the labels pass 4 GiB in total.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        Self::from_entries(entries.into_iter().collect())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Metadata {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        let capacity = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self::pack(map.iter().map(|(k, v)| (k.as_str(), v.as_str())), capacity)
    }
}

impl std::ops::Index<&str> for Metadata {
    type Output = str;

    /// # Panics
    /// When `key` has no value.
    fn index(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("no metadata key {key:?}"))
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of text values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut entries: Vec<(String, String)> = Vec::with_capacity(map.size_hint().unwrap_or(0).min(256));
                let mut total = 0usize;
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    total += k.len() + v.len();
                    if u32::try_from(total).is_err() {
                        return Err(serde::de::Error::custom("metadata over 4 GiB"));
                    }
                    entries.push((k, v));
                }
                Ok(Metadata::from_entries(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_writes_and_encodes_as_the_map_it_replaces() {
        let mut map = BTreeMap::new();
        let mut m = Metadata::new();
        assert!(m.is_empty() && m.get("a").is_none() && m.remove("a").is_none());
        // Inserts, replacements and removals in a fixed pseudo-random order, against a map.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for step in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = ["", "a", "b", "ab", "zone", "é", "k1", "k10", "k2"][(seed % 9) as usize].to_owned();
            if seed.is_multiple_of(3) {
                assert_eq!(m.remove(&key), map.remove(&key), "step {step}");
            } else {
                let value = "v".repeat((seed % 5) as usize) + &step.to_string();
                assert_eq!(m.insert(key.clone(), value.clone()), map.insert(key, value), "step {step}");
            }
            assert_eq!(m.to_map(), map, "step {step}");
            assert_eq!(m.len(), map.len());
            assert_eq!(m.text_len(), map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
            for k in map.keys() {
                assert_eq!(m.get(k), map.get(k).map(String::as_str));
            }
            assert!(m.iter().rev().map(|(k, _)| k).eq(map.keys().rev().map(String::as_str)));
        }
        // The same JSON as the map, both ways; a key given twice keeps its last value.
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
        let twice: Metadata = serde_json::from_str(r#"{"b":"1","a":"x","b":"2"}"#).unwrap();
        assert_eq!(twice, Metadata::from([("a", "x"), ("b", "2")]));
        assert_eq!(format!("{twice:?}"), r#"{"a": "x", "b": "2"}"#);
        assert!(serde_json::from_str::<Metadata>(r#"{"a":1}"#).is_err(), "values are text");
        assert_eq!(Metadata::from(map.clone()), m);
    }
}
