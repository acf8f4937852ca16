//! An encoded resource in parts laid end to end.
//!
//! Most resources are one buffer. A sidecar's route configuration in a large mesh is one
//! resource of megabytes (a virtual host per service, 5.7 MB at 10,000 services), and a
//! VirtualService edit changes one of its hosts: as one buffer, every edit copied all of
//! it into fresh memory. Assembled from segments of kept virtual hosts
//! (translate/route/pieces.rs), an edit makes only the segment holding the changed host
//! again and shares the others with the assembly before it; the wire writes the parts
//! one after the other, so a proxy receives the same bytes either way.

use std::sync::Arc;

use bytes::Bytes;

/// The bytes of an encoded message, in one part or several.
#[derive(Debug, Clone)]
pub enum Encoded {
    One(Bytes),
    /// Parts in order, their total length, and the resource's version: a hash its
    /// maker derived from the parts' own hashes, so that it is not computed over
    /// megabytes again at every edit. (A single buffer's version is the hash of its
    /// bytes.)
    Parts {
        parts: Arc<[Bytes]>,
        len: usize,
        version: u64,
    },
}

impl Default for Encoded {
    fn default() -> Self {
        Encoded::One(Bytes::new())
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(v: Vec<u8>) -> Self {
        Encoded::One(Bytes::from(v))
    }
}

impl From<Bytes> for Encoded {
    fn from(b: Bytes) -> Self {
        Encoded::One(b)
    }
}

impl Encoded {
    /// `parts` laid end to end, with the version their maker computed for them.
    pub fn from_parts(parts: Vec<Bytes>, version: u64) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        Encoded::Parts {
            parts: parts.into(),
            len,
            version,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Encoded::One(b) => b.len(),
            Encoded::Parts { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Encoded::One(b) => std::slice::from_ref(b),
            Encoded::Parts { parts, .. } => parts,
        }
    }

    /// The bytes as one buffer (a copy when in parts).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }
}

/// Equal when the bytes are, however they are split.
impl PartialEq for Encoded {
    fn eq(&self, other: &Self) -> bool {
        if self.len() != other.len() {
            return false;
        }
        match (self, other) {
            (Encoded::One(a), Encoded::One(b)) => a == b,
            _ => self.to_vec() == other.to_vec(),
        }
    }
}

impl Eq for Encoded {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_their_bytes_laid_end_to_end() {
        let e = Encoded::from_parts(
            vec![
                Bytes::from_static(b"ab"),
                Bytes::new(),
                Bytes::from_static(b"cde"),
            ],
            7,
        );
        assert_eq!(e.len(), 5);
        assert_eq!(e.to_vec(), b"abcde");
        assert_eq!(e, Encoded::from(b"abcde".to_vec()));
        assert_ne!(e, Encoded::from(b"abcdf".to_vec()));
        assert!(matches!(e, Encoded::Parts { version: 7, .. }));
        assert_eq!(
            Encoded::from(b"x".to_vec()).parts(),
            &[Bytes::from_static(b"x")]
        );
    }
}
