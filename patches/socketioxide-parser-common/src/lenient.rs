//! Leniency for text packets that strict JSON parsing refuses although the official
//! JavaScript client sends them (a patch of sandpool's, not in upstream 0.17.3).
//!
//! `JSON.stringify` writes a lone UTF-16 surrogate (a string cut in the middle of an emoji)
//! as a `\udXXX` escape, which serde_json refuses; and an event name with any escape cannot
//! be borrowed as `&str` by [`crate::value::read_event`]. Either made socketioxide close the
//! whole connection (`PacketParsingError`) for one odd event. Here such a packet is repaired
//! instead: lone surrogates become U+FFFD (what a `TextDecoder` makes of them), and an event
//! name with escapes is rewritten without them (escapes decoded; a quote, a backslash or a
//! control character, which JSON cannot hold unescaped, becomes U+FFFD). Handlers then see
//! the event, an unknown name at worst, and answer it like any other.

/// The packet's payload repaired, or `None` when it needs nothing (the common case costs a
/// substring search and the `read_event` the packet needs anyway).
pub(crate) fn repair_event(data: &str) -> Option<String> {
    let surrogates = if data.contains("\\ud") || data.contains("\\uD") {
        replace_lone_surrogates(data)
    } else {
        None
    };
    let text = surrogates.as_deref().unwrap_or(data);
    if crate::value::de::read_event(text).is_ok() {
        return surrogates;
    }
    let renamed = unescape_event_name(text)?;
    crate::value::de::read_event(&renamed)
        .is_ok()
        .then_some(renamed)
}

/// Rewrites every `\uXXXX` escape of a lone surrogate as `\ufffd`. `None` when there is none.
fn replace_lone_surrogates(data: &str) -> Option<String> {
    let bytes = data.as_bytes();
    let mut out = String::with_capacity(data.len());
    let mut copied = 0;
    let mut changed = false;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                if bytes.get(i + 1) != Some(&b'u') {
                    // `\\`, `\"` and the like: skip the escaped character.
                    i += 2;
                    continue;
                }
                let Some(unit) = hex4(bytes, i + 2) else {
                    i += 2;
                    continue;
                };
                let lone = match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        let next = (bytes.get(i + 6) == Some(&b'\\')
                            && bytes.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(bytes, i + 8))
                        .flatten();
                        match next {
                            Some(0xDC00..=0xDFFF) => {
                                i += 12;
                                continue;
                            }
                            _ => true,
                        }
                    }
                    0xDC00..=0xDFFF => true,
                    _ => false,
                };
                if lone {
                    out.push_str(&data[copied..i]);
                    out.push_str("\\ufffd");
                    copied = i + 6;
                    changed = true;
                }
                i += 6;
            }
            _ => i += 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&data[copied..]);
    Some(out)
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let digits = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// Rewrites the event name (the array's first element) without escapes. `None` when the
/// payload is not an array starting with a string.
fn unescape_event_name(data: &str) -> Option<String> {
    let bytes = data.as_bytes();
    let open = data.find('[')?;
    let start = open + 1 + data[open + 1..].find(|c: char| !c.is_ascii_whitespace())?;
    if bytes[start] != b'"' {
        return None;
    }
    let mut end = start + 1;
    while end < bytes.len() {
        match bytes[end] {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
    let token = data.get(start..=end)?;
    let name: String = serde_json::from_str(token).ok()?;
    let name: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\u{fffd}',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect();
    Some(format!("{}\"{}\"{}", &data[..start], name, &data[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> String {
        let repaired = repair_event(data).unwrap_or_else(|| data.to_string());
        crate::value::de::read_event(&repaired).unwrap().to_string()
    }

    #[test]
    fn plain_events_are_left_alone() {
        assert_eq!(repair_event(r#"["exec",{"command":"ls"}]"#), None);
        assert_eq!(repair_event(r#"["café",1]"#), None);
    }

    #[test]
    fn lone_high_surrogate_becomes_the_replacement_character() {
        assert_eq!(event(r#"["x\ud800",{}]"#), "x\u{fffd}");
        assert_eq!(event(r#"["\uD83D",{}]"#), "\u{fffd}");
    }

    #[test]
    fn lone_low_surrogate_becomes_the_replacement_character() {
        assert_eq!(event(r#"["\udc00y",{}]"#), "\u{fffd}y");
    }

    #[test]
    fn a_high_surrogate_at_the_end_of_the_text_is_lone() {
        assert_eq!(
            replace_lone_surrogates(r#"["a\ud800"#).as_deref(),
            Some(r#"["a\ufffd"#)
        );
    }

    #[test]
    fn a_valid_pair_is_kept() {
        assert_eq!(event(r#"["\ud83d\ude00",{}]"#), "😀");
        assert_eq!(replace_lone_surrogates(r#"["\ud83d\ude00"]"#), None);
    }

    #[test]
    fn an_escaped_backslash_before_u_is_not_an_escape() {
        assert_eq!(replace_lone_surrogates(r#"["a\\ud800"]"#), None);
        assert_eq!(event(r#"["a\\ud800",{}]"#), "a\u{fffd}ud800");
    }

    #[test]
    fn lone_surrogates_in_the_data_are_repaired_too() {
        let repaired = repair_event(r#"["x\ud800",{"command":"echo \ud800"}]"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(&repaired).unwrap();
        assert_eq!(value[1]["command"], "echo \u{fffd}");
    }

    #[test]
    fn names_with_other_escapes_are_readable() {
        assert_eq!(event(r#"["a\nb",{}]"#), "a\u{fffd}b");
        assert_eq!(event(r#"["\u00e9t\u00e9",{}]"#), "été");
        assert_eq!(event(r#"["q\"",{}]"#), "q\u{fffd}");
    }

    #[test]
    fn lone_surrogates_in_the_data_of_a_plain_event_are_repaired() {
        let repaired = repair_event(r#"["exec",{"command":"a\ud83d"}]"#).unwrap();
        assert_eq!(repaired, r#"["exec",{"command":"a\ufffd"}]"#);
    }

    #[test]
    fn what_cannot_be_repaired_stays_an_error() {
        assert_eq!(repair_event(r#"[1,2]"#), None);
        assert_eq!(repair_event(r#"{"a":1}"#), None);
        assert_eq!(repair_event(r#"["unterminated"#), None);
    }
}
