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
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Xattrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::deserialize(d)?;
        Ok(Xattrs((!map.is_empty()).then(|| Box::new(map))))
    }
}
