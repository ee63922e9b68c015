//! Who a mount may act as. A client certificate is either `trusted` (its machine's kernel
//! checks permissions and passes each caller's uid and gid, as NFS trusts a host) or limited
//! to one user: then every request of that mount acts as that user, whatever uid it sends
//! (root included, unless the user is root), and the metaserver checks permissions itself.
//!
//! The identity is kept in the certificate's organizational unit, e.g.
//! `uid=1000 gid=1000 groups=27,100`; a client certificate without one is trusted.

use crate::fs::Caller;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Most supplementary groups one identity may carry (NFS's AUTH_SYS carries 16).
pub const MAX_GROUPS: usize = 64;

/// A user as the metaserver checks permissions for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without duplicates.
    pub groups: Vec<u32>,
}

impl Credentials {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.binary_search(&gid).is_ok()
    }

    /// Who new inodes created by this user belong to.
    pub fn caller(&self) -> Caller {
        Caller {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MountUser {
    /// The mount's kernel is trusted with permission checks and callers.
    Trusted,
    /// Every request acts as this user and is checked by the metaserver.
    Limited(Credentials),
}

impl MountUser {
    /// The user whose permissions the metaserver checks; `None` when the mount is trusted.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            MountUser::Trusted => None,
            MountUser::Limited(c) => Some(c),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("mount user {text:?}: {why} (expected `trusted` or `uid=N gid=N [groups=N,N,...]`)")]
pub struct MountUserError {
    text: String,
    why: String,
}

impl FromStr for MountUser {
    type Err = MountUserError;

    fn from_str(text: &str) -> Result<MountUser, MountUserError> {
        let fail = |why: &str| MountUserError {
            text: text.chars().take(200).collect(),
            why: why.to_string(),
        };
        if text == "trusted" {
            return Ok(MountUser::Trusted);
        }
        let id = |v: &str| v.parse::<u32>().map_err(|_| fail("not a number"));
        let (mut uid, mut gid, mut groups) = (None, None, None);
        for word in text.split(' ') {
            let (key, value) = word.split_once('=').ok_or_else(|| fail("not key=value"))?;
            let slot_taken = match key {
                "uid" => uid.replace(id(value)?).is_some(),
                "gid" => gid.replace(id(value)?).is_some(),
                "groups" => {
                    let list = value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(id)
                        .collect::<Result<Vec<u32>, _>>()?;
                    groups.replace(list).is_some()
                }
                _ => return Err(fail("unknown key")),
            };
            if slot_taken {
                return Err(fail("a key given twice"));
            }
        }
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(fail("uid and gid are both needed"));
        };
        MountUser::limited(uid, gid, groups.unwrap_or_default()).map_err(|e| fail(&e))
    }
}

impl MountUser {
    /// A limited identity; refuses more than [`MAX_GROUPS`] groups.
    pub fn limited(uid: u32, gid: u32, mut groups: Vec<u32>) -> Result<MountUser, String> {
        groups.sort_unstable();
        groups.dedup();
        if groups.len() > MAX_GROUPS {
            return Err(format!("more than {MAX_GROUPS} groups"));
        }
        Ok(MountUser::Limited(Credentials { uid, gid, groups }))
    }
}

impl fmt::Display for MountUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountUser::Trusted => f.write_str("trusted"),
            MountUser::Limited(c) => {
                write!(f, "uid={} gid={}", c.uid, c.gid)?;
                if !c.groups.is_empty() {
                    let list: Vec<String> = c.groups.iter().map(u32::to_string).collect();
                    write!(f, " groups={}", list.join(","))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_it_prints() {
        for text in ["trusted", "uid=1000 gid=1000", "uid=0 gid=5 groups=27,100"] {
            let id: MountUser = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
        }
        let id: MountUser = "gid=2 uid=1 groups=9,3,9".parse().unwrap();
        assert_eq!(id.to_string(), "uid=1 gid=2 groups=3,9");
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for text in [
            "",
            "uid=1000",
            "uid=1000 gid=x",
            "uid=1 gid=1 uid=2",
            "uid=1 gid=1 shell=sh",
            "uid=-1 gid=1",
            "uid=1  gid=1",
            "Trusted",
        ] {
            assert!(text.parse::<MountUser>().is_err(), "{text:?} was taken");
        }
        let many: Vec<String> = (0..=MAX_GROUPS as u32).map(|g| g.to_string()).collect();
        let text = format!("uid=1 gid=1 groups={}", many.join(","));
        assert!(text.parse::<MountUser>().is_err());
    }

    #[test]
    fn membership_counts_the_primary_group() {
        let MountUser::Limited(c) = MountUser::limited(5, 7, vec![100, 3]).unwrap() else {
            unreachable!()
        };
        assert!(c.in_group(7) && c.in_group(3) && c.in_group(100));
        assert!(!c.in_group(5) && !c.is_root());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,80}") {
            if let Ok(id) = text.parse::<MountUser>() {
                prop_assert_eq!(id.to_string().parse::<MountUser>().unwrap(), id);
            }
        }
    }
}
