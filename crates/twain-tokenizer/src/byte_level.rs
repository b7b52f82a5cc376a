//! GPT-2's byte-to-character alphabet, used by byte-level BPE vocabularies: every byte is
//! written as one printable character (`' '` is `Ġ`, `'\n'` is `Ċ`), so a vocabulary piece is a
//! string of those characters and stands for the bytes they map back to.

use std::sync::OnceLock;

/// Character -> byte, indexed by the character's code point (all of them are below 324).
fn char_to_byte_table() -> &'static [Option<u8>; 324] {
    static TABLE: OnceLock<[Option<u8>; 324]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [None; 324];
        let mut shifted = 0u32;
        for b in 0..=255u8 {
            // Printable Latin-1 bytes stand for themselves; the rest are moved above 255.
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable {
                u32::from(b)
            } else {
                shifted += 1;
                255 + shifted
            };
            table[c as usize] = Some(b);
        }
        table
    })
}

/// The byte a byte-level character stands for, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    char_to_byte_table().get(c as usize).copied().flatten()
}

/// The bytes a byte-level piece stands for; `None` if a character is outside the alphabet.
pub(crate) fn piece_to_bytes(piece: &str) -> Option<Vec<u8>> {
    piece.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_over_bytes() {
        let mut seen = [false; 256];
        for c in 0..324u32 {
            if let Some(b) = char::from_u32(c).and_then(char_to_byte) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(char_to_byte('Ġ'), Some(b' '));
        assert_eq!(char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(char_to_byte('ĉ'), Some(b'\t'));
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(piece_to_bytes("Ġhello"), Some(b" hello".to_vec()));
        assert_eq!(piece_to_bytes("日"), None);
    }
}
