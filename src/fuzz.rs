//! Fuzz targets: one function per input meshd takes from outside, each taking raw bytes
//! and panicking only on a defect (a crash, a hang, or a broken promise that the target
//! checks, such as a secret reaching the wrong proxy).
//!
//! They live in the library so that two drivers share them: `fuzz/` (cargo-afl, run by
//! hand with `scripts/fuzz`) and `tests/fuzz_corpus.rs`, which replays every saved input
//! in `fuzz/corpus/` and `fuzz/regressions/` in the ordinary test build.

pub mod admission;
pub mod ca;
pub mod envoy_filter;
pub mod jwt;
pub mod xds;
pub mod yaml;

/// A fuzz target: any bytes in, a panic only on a defect.
pub type Target = fn(&[u8]);

/// The targets by name, as the drivers and the corpus folders call them.
pub const TARGETS: [(&str, Target); 6] = [
    ("yaml", yaml::run),
    ("xds", xds::run),
    ("csr", ca::run),
    ("admission", admission::run),
    ("jwt", jwt::run),
    ("envoy_filter", envoy_filter::run),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Reads a fuzzer's bytes as a sequence of choices. Past the end every read returns
/// zero, so any input is a complete program.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub(crate) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.byte() as usize % from.len()]
    }

    /// Up to `max` bytes, the count read first.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.byte() as usize).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub(crate) fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
}
