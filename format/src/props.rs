//! The PROPS section (format 1.4): the model's properties, string keys with string values, as
//! ONNX's `metadata_props` and TFLite's metadata carry them (a text recognizer's character set,
//! a detector's labels, the source model's version).
//!
//! Section layout: the prefix and DEFLATE stream of PACKED (`u32 inflated_len`, `u32 reserved`,
//! a raw DEFLATE stream ending with the section); the inflated bytes are entries
//! `u32 key_len, u32 value_len, key bytes, value bytes`, back to back to the last byte. Keys are
//! non-empty UTF-8 in strictly ascending byte order (so each appears once and the same
//! properties give the same bytes); values are UTF-8, possibly empty. The section is marked
//! optional, so readers older than 1.4 skip it.

use std::collections::BTreeMap;

use crate::error::FormatError;
use crate::packed::{deflate_prefixed, inflate_prefixed, MAX_INFLATED};

type Result<T> = std::result::Result<T, FormatError>;

/// Section kind code of PROPS.
pub const PROPS_KIND: u32 = 14;
/// Bytes before each entry's key.
const ENTRY_HEAD: usize = 8;

fn err(msg: String) -> FormatError {
    FormatError::Props(msg)
}

/// The PROPS section holding `props`; an error if a key is empty or they exceed the readers'
/// limit.
pub fn encode(props: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    for (key, value) in props {
        if key.is_empty() {
            return Err(err("a property has an empty key".into()));
        }
        let len = |s: &str| {
            u32::try_from(s.len())
                .map_err(|_| FormatError::TooLarge(format!("property '{key}' exceeds 2^32 - 1 bytes")))
        };
        raw.extend_from_slice(&len(key)?.to_le_bytes());
        raw.extend_from_slice(&len(value)?.to_le_bytes());
        raw.extend_from_slice(key.as_bytes());
        raw.extend_from_slice(value.as_bytes());
        if raw.len() > MAX_INFLATED {
            return Err(FormatError::TooLarge(format!(
                "the model's properties exceed the readers' limit of {MAX_INFLATED} bytes"
            )));
        }
    }
    Ok(deflate_prefixed(&raw))
}

/// Inflates and checks a PROPS section: the stream (as PACKED's), then that the entries cover the
/// inflated bytes exactly, with UTF-8 keys and values and non-empty keys in ascending order.
pub fn decode(section: &[u8]) -> Result<BTreeMap<String, String>> {
    let buf = inflate_prefixed(section, err)?;
    let bytes = buf.bytes();
    let mut props: BTreeMap<String, String> = BTreeMap::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = props.len();
        if bytes.len() - at < ENTRY_HEAD {
            return Err(err(format!("entry #{n} at inflated offset {at} is cut off")));
        }
        let word =
            |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().expect("4 bytes")) as usize;
        let (key_len, value_len) = (word(0), word(4));
        let start = at + ENTRY_HEAD;
        // Two u32 lengths cannot overflow usize on the 64-bit targets Pith supports, but a
        // checked sum keeps 32-bit ones honest.
        let end = start
            .checked_add(key_len)
            .and_then(|e| e.checked_add(value_len))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                err(format!(
                    "entry #{n} ({key_len}-byte key, {value_len}-byte value) runs past the inflated end ({} bytes)",
                    bytes.len()
                ))
            })?;
        let text = |range: std::ops::Range<usize>, what: &str| {
            std::str::from_utf8(&bytes[range])
                .map_err(|e| err(format!("entry #{n}: {what} is not UTF-8 ({e})")))
        };
        let key = text(start..start + key_len, "key")?;
        let value = text(start + key_len..end, "value")?;
        if key.is_empty() {
            return Err(err(format!("entry #{n} has an empty key")));
        }
        if let Some((prev, _)) = props.last_key_value().filter(|(prev, _)| prev.as_str() >= key) {
            return Err(err(format!(
                "key '{key}' (entry #{n}) does not follow '{prev}': keys must be distinct and in ascending order"
            )));
        }
        props.insert(key.to_owned(), value.to_owned());
        at = end;
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("character".to_owned(), "a\nb\n字".to_owned());
        p.insert("author".to_owned(), String::new());
        p.insert("labels".to_owned(), "face".to_owned());
        p
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), sample());
        assert_eq!(bytes, encode(&sample()).unwrap());
        assert!(decode(&encode(&BTreeMap::new()).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn refuses_an_empty_key_when_writing() {
        let mut p = sample();
        p.insert(String::new(), "x".into());
        assert!(encode(&p).unwrap_err().to_string().contains("empty key"));
    }

    fn entry(key: &[u8], value: &[u8]) -> Vec<u8> {
        [&(key.len() as u32).to_le_bytes()[..], &(value.len() as u32).to_le_bytes(), key, value].concat()
    }

    fn message(raw: &[u8]) -> String {
        match decode(&deflate_prefixed(raw)) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("accepted bad properties {p:?}"),
        }
    }

    #[test]
    fn refuses_bad_entries() {
        assert!(message(&[1, 0, 0]).contains("entry #0 at inflated offset 0 is cut off"));
        let good = entry(b"a", b"1");
        assert!(message(&[&good[..], &[0, 0]].concat()).contains("entry #1 at inflated offset 10 is cut off"));
        let long = [&5u32.to_le_bytes()[..], &0u32.to_le_bytes(), b"abc"].concat();
        assert!(message(&long).contains("runs past the inflated end"));
        let huge = [&u32::MAX.to_le_bytes()[..], &u32::MAX.to_le_bytes()].concat();
        assert!(message(&huge).contains("runs past"));
        assert!(message(&entry(&[0xff, 0xfe], b"")).contains("key is not UTF-8"));
        assert!(message(&entry(b"k", &[0xc3])).contains("value is not UTF-8"));
        assert!(message(&entry(b"", b"v")).contains("empty key"));
        let twice = [entry(b"k", b"1"), entry(b"k", b"2")].concat();
        assert!(message(&twice).contains("key 'k' (entry #1) does not follow 'k'"));
        let unordered = [entry(b"b", b""), entry(b"a", b"")].concat();
        assert!(message(&unordered).contains("ascending order"));
    }

    #[test]
    fn refuses_a_bad_stream_by_name() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.truncate(bytes.len() - 2);
        let msg = decode(&bytes).unwrap_err().to_string();
        assert!(msg.starts_with("bad PROPS section") && msg.contains("truncated"), "{msg}");
        assert!(decode(&bytes[..4]).unwrap_err().to_string().contains("prefix"));
    }
}
