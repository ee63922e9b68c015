//! POSIX ACLs, stored as the `system.posix_acl_access` and `system.posix_acl_default`
//! extended attributes in the kernel's xattr format. The kernel checks permissions against
//! them; the filesystem keeps them consistent with the mode: inheritance of a directory's
//! default ACL on create (instead of the umask), chmod rewriting the ACL, and an access ACL
//! that says no more than the mode being kept as the mode alone. Same rules as Linux's
//! `posix_acl_create_masq`, `__posix_acl_chmod` and `posix_acl_equiv_mode`.

use lattice_common::fs::Errno;
use lattice_common::mount_user::Credentials;

pub use lattice_common::fs::{ACL_ACCESS as ACCESS, ACL_DEFAULT as DEFAULT};

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// Most entries one ACL may have.
const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// Parses and validates an ACL as the kernel sends it (EINVAL when malformed).
    pub fn parse(bytes: &[u8]) -> Result<Acl, Errno> {
        let (head, body) = bytes.split_first_chunk::<4>().ok_or(Errno::INVAL)?;
        if u32::from_le_bytes(*head) != VERSION
            || body.len() % 8 != 0
            || body.len() / 8 > MAX_ENTRIES
        {
            return Err(Errno::INVAL);
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let valid = entries.iter().all(|e| {
            e.perm <= 7 && matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER)
        }) && count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1);
        if !valid {
            return Err(Errno::INVAL);
        }
        Ok(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn entry(&mut self, tag: u16) -> Option<&mut Entry> {
        self.0.iter_mut().find(|e| e.tag == tag)
    }

    /// The rwx bits the ACL implies for the mode (group bits from the mask when there is one).
    pub fn mode_bits(&self) -> u16 {
        let perm = |tag| self.0.iter().find(|e| e.tag == tag).map_or(0, |e| e.perm);
        let group = if self.0.iter().any(|e| e.tag == MASK) {
            perm(MASK)
        } else {
            perm(GROUP_OBJ)
        };
        perm(USER_OBJ) << 6 | group << 3 | perm(OTHER)
    }

    /// Whether the ACL gives `who` every bit of `want` on an inode of `owner` and `group`,
    /// as Linux's `posix_acl_permission`: the owner entry, else a named user entry, else
    /// the group entries (any one that matches and grants all of `want`), else other; the
    /// mask limits all but the owner and other.
    pub fn permits(&self, owner: u32, group: u32, who: &Credentials, want: u16) -> bool {
        let mask = self.0.iter().find(|e| e.tag == MASK).map_or(7, |e| e.perm);
        let perm = |tag| self.0.iter().find(|e| e.tag == tag).map_or(0, |e| e.perm);
        if who.uid == owner {
            return perm(USER_OBJ) & want == want;
        }
        if let Some(e) = self.0.iter().find(|e| e.tag == USER && e.id == who.uid) {
            return e.perm & mask & want == want;
        }
        let mut groups = self.0.iter().filter(|e| match e.tag {
            GROUP_OBJ => who.in_group(group),
            GROUP => who.in_group(e.id),
            _ => false,
        });
        match groups.next() {
            Some(first) => std::iter::once(first)
                .chain(groups)
                .any(|e| e.perm & mask & want == want),
            None => perm(OTHER) & want == want,
        }
    }

    /// Whether the mode alone says everything this ACL does.
    pub fn is_equivalent_to_mode(&self) -> bool {
        self.0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// Applies a new mode's rwx bits to the ACL (chmod).
    pub fn chmod(&mut self, mode: u16) {
        if let Some(e) = self.entry(USER_OBJ) {
            e.perm = (mode >> 6) & 7;
        }
        let group_tag = if self.0.iter().any(|e| e.tag == MASK) {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(e) = self.entry(group_tag) {
            e.perm = (mode >> 3) & 7;
        }
        if let Some(e) = self.entry(OTHER) {
            e.perm = mode & 7;
        }
    }

    /// A new inode's access ACL from its directory's default ACL: both the ACL and the
    /// requested mode are narrowed to what each allows. Returns the new mode bits.
    pub fn create_masq(&mut self, mode: u16) -> u16 {
        let mut mode = mode;
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) & 7;
                    mode &= (e.perm << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= mode & 7;
                    mode &= e.perm | !0o007;
                }
                _ => {}
            }
        }
        let group_tag = if has_mask { MASK } else { GROUP_OBJ };
        if let Some(e) = self.entry(group_tag) {
            e.perm &= (mode >> 3) & 7;
            mode &= (e.perm << 3) | !0o070;
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn round_trips_and_rejects_malformed() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&a.encode()).unwrap(), a);
        // A named entry without a mask, a missing other entry, a bad version.
        assert!(Acl::parse(
            &acl(&[
                (USER_OBJ, 7, 0),
                (USER, 5, 1),
                (GROUP_OBJ, 5, 0),
                (OTHER, 0, 0)
            ])
            .encode()
        )
        .is_err());
        assert!(Acl::parse(&acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0)]).encode()).is_err());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_err());
        assert!(Acl::parse(&[2, 0]).is_err());
    }

    #[test]
    fn inheritance_chmod_and_mode_follow_linux() {
        // Default ACL u::rwx,u:1000:rwx,g::r-x,m::rwx,o::--- and a create mode of 0666.
        let mut d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        let mode = d.create_masq(0o666);
        assert_eq!(mode, 0o660);
        assert_eq!(d.mode_bits(), 0o660);
        assert!(!d.is_equivalent_to_mode());
        d.chmod(0o640);
        assert_eq!(d.mode_bits(), 0o640);
        let plain = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert!(plain.is_equivalent_to_mode());
        assert_eq!(plain.mode_bits(), 0o644);
    }
}
