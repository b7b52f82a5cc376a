//! The bytes of a file: an mmap, or an owned 64-byte-aligned buffer (tests, fuzzing).

use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

use crate::IoError;

/// 64 bytes with 64-byte alignment: the unit of an owned aligned buffer.
#[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// Immutable file bytes whose start is aligned to at least 64 bytes
/// (mmaps start on a page boundary).
pub(crate) enum Backing {
    Mapped(Mmap),
    Owned { lines: Vec<Line>, len: usize },
    Empty,
}

impl Backing {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Backing, IoError> {
        let file = File::open(path).map_err(|e| IoError::os(path, e))?;
        let len = file.metadata().map_err(|e| IoError::os(path, e))?.len();
        if len == 0 {
            // mmap of an empty file fails on some platforms; an empty file is just empty.
            return Ok(Backing::Empty);
        }
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody truncating or
        // rewriting the file while it is mapped (twain writes files via tmp + rename, never in place).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IoError::os(path, e))?;
        Ok(Backing::Mapped(map))
    }

    /// Copies `bytes` into an aligned owned buffer.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Backing {
        let mut lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[..bytes.len()].copy_from_slice(bytes);
        Backing::Owned {
            lines,
            len: bytes.len(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned { lines, len } => &bytemuck::cast_slice::<Line, u8>(lines)[..*len],
            Backing::Empty => &[],
        }
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Backing::Mapped(_) => "mmap",
            Backing::Owned { .. } => "owned",
            Backing::Empty => "empty",
        };
        write!(f, "Backing({kind}, {} bytes)", self.bytes().len())
    }
}
