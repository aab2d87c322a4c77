//! A connected user's id in 16 bytes, the size of the `Rc<str>` it replaces: up to 15 bytes
//! inline, longer ones behind one thin pointer.
//!
//! Every idle connection has a user slot (`users.rs`), and its id was an `Rc<str>` block of
//! its own: 32 to 48 bytes of heap for the ids people (and chatload) use, more than the slot.
//! Ids are 1 to 32 ASCII characters (`protocol::valid_id`), so most fit in the slot itself.
//! What needs an `Rc<str>` of the id (holds, presence facts, kept private lines) makes one
//! when it needs it: those are rare, or cost an allocation of their own already.

use std::fmt;
use std::ops::Deref;

/// Bytes kept inline: all but the one holding the length.
pub const INLINE: usize = 15;

/// An inline id's length. An enum, not a `u8`, so that its unused values are a niche: the
/// boxed form fits around it and `UserId`, and `Option<User>`, stay 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Len {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
}

const LENS: [Len; INLINE + 1] = [
    Len::L0,
    Len::L1,
    Len::L2,
    Len::L3,
    Len::L4,
    Len::L5,
    Len::L6,
    Len::L7,
    Len::L8,
    Len::L9,
    Len::L10,
    Len::L11,
    Len::L12,
    Len::L13,
    Len::L14,
    Len::L15,
];

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline {
        len: Len,
        bytes: [u8; INLINE],
    },
    // Boxed twice on purpose: a thin pointer, so that the enum stays 16 bytes.
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    Boxed(Box<Box<str>>),
}

/// An id as typed (see the module's comment).
#[derive(Clone, PartialEq, Eq)]
pub struct UserId(Repr);

impl UserId {
    pub fn new(id: &str) -> UserId {
        match LENS.get(id.len()) {
            Some(len) => {
                let mut bytes = [0u8; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                UserId(Repr::Inline { len: *len, bytes })
            }
            None => UserId(Repr::Boxed(Box::new(Box::from(id)))),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever copied from a `&str` whole (`new`), so always UTF-8.
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default(),
            Repr::Boxed(b) => b,
        }
    }
}

impl Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for UserId {
    fn from(id: &str) -> UserId {
        UserId::new(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_every_length_round_trip_in_sixteen_bytes() {
        for n in 0..=40 {
            let id: String = "abcdefghij0123456789ABCDEFGHIJ-_.xyzXYZ!".chars().take(n).collect();
            let u = UserId::new(&id);
            assert_eq!(u.as_str(), id);
            assert_eq!(u.clone(), u);
            assert_eq!(matches!(u.0, Repr::Inline { .. }), n <= INLINE, "{n}");
        }
        assert_ne!(UserId::new("bob"), UserId::new("bob2"));
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(std::mem::size_of::<UserId>(), 16);
            assert_eq!(std::mem::size_of::<Option<UserId>>(), 16);
        }
    }
}
