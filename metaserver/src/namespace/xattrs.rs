//! An inode's extended attributes. Most inodes have none, so the map is boxed and absent
//! until the first one: 8 bytes per inode instead of 24. Stored as a plain map.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xattrs(Option<Box<Map>>);

impl Xattrs {
    pub fn get(&self, name: &[u8]) -> Option<&Vec<u8>> {
        self.0.as_ref()?.get(name)
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    pub fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.0.get_or_insert_with(Box::default).insert(name, value);
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Vec<u8>> {
        let map = self.0.as_mut()?;
        let value = map.remove(name);
        if map.is_empty() {
            self.0 = None;
        }
        value
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.iter().map(|(k, _)| k)
    }
}

impl Serialize for Xattrs {
    /// As the map itself: bincode needs the length up front, which an iterator over an
    /// optional map does not tell.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(map) => map.serialize(s),
            None => Map::new().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Xattrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::deserialize(d)?;
        Ok(Xattrs((!map.is_empty()).then(|| Box::new(map))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_common::codec;

    /// A snapshot holding any extended attribute (an ACL, `user.*`) failed to encode.
    #[test]
    fn encodes_as_a_map_with_or_without_attributes() {
        let mut x = Xattrs::default();
        for _ in 0..2 {
            let bytes = codec::encode_state(&x).expect("encodes");
            let back: Xattrs = codec::decode_state(&bytes, 1 << 20).expect("decodes");
            assert_eq!(back, x);
            let plain: Map = x.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(bytes, codec::encode_state(&plain).expect("encodes"));
            x.insert(b"user.k".to_vec(), b"v".to_vec());
        }
    }
}
