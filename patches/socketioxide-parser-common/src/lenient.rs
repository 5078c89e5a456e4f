//! Leniency for text packets that strict JSON parsing refuses although the official
//! JavaScript client sends them (a patch of sandpool's, not in upstream 0.17.3).
//!
//! `JSON.stringify` writes a lone UTF-16 surrogate (a string cut in the middle of an emoji)
//! as a `\udXXX` escape, which serde_json refuses; and an event name with any escape cannot
//! be borrowed as `&str` by [`crate::value::read_event`]. Either made socketioxide close the
//! whole connection (`PacketParsingError`) for one odd event, and a lone surrogate in the
//! data made the handler's deserialization fail. Here such a packet is repaired instead:
//! lone surrogates become U+FFFD (what a `TextDecoder` makes of them) in every JSON text the
//! parser hands on (events, binary events, acks, connect data), and an event name with escapes
//! is rewritten without them (escapes decoded; a quote, a backslash or a control character,
//! which JSON cannot hold unescaped, becomes U+FFFD). Handlers then see the event, an
//! unknown name at worst, and answer it like any other.
//!
//! Nothing is parsed on the common path: a packet is looked at further only when it holds a
//! `\ud`/`\uD` sequence or its event name holds a backslash, which one substring search over
//! the packet and a scan of the name find.

use socketioxide_core::{Str, Value, packet::PacketData};

/// Repairs the packet's JSON text in place when it needs it (see the module doc).
pub(crate) fn repair(packet: &mut PacketData) {
    let (data, with_event) = match packet {
        PacketData::Event(Value::Str(data, _), _)
        | PacketData::BinaryEvent(Value::Str(data, _), _) => (data, true),
        PacketData::EventAck(Value::Str(data, _), _)
        | PacketData::BinaryAck(Value::Str(data, _), _)
        | PacketData::Connect(Some(Value::Str(data, _))) => (data, false),
        _ => return,
    };
    let repaired = if with_event {
        repair_event(data)
    } else {
        repair_surrogates(data)
    };
    if let Some(repaired) = repaired {
        *data = Str::from(repaired);
    }
}

/// An event's payload (`[name, ...data]`) repaired, or `None` when it needs nothing.
fn repair_event(data: &str) -> Option<String> {
    let surrogates = repair_surrogates(data);
    let text = surrogates.as_deref().unwrap_or(data);
    match event_name(text) {
        Some(name) if name.escaped => unescape_event_name(text, &name).or(surrogates),
        _ => surrogates,
    }
}

/// The text with lone surrogate escapes as `\ufffd`, or `None` when it has none.
fn repair_surrogates(data: &str) -> Option<String> {
    let bytes = data.as_bytes();
    let candidate = data
        .match_indices("\\u")
        .any(|(at, _)| matches!(bytes.get(at + 2), Some(b'd' | b'D')));
    if candidate {
        replace_lone_surrogates(data)
    } else {
        None
    }
}

/// Rewrites every `\uXXXX` escape of a lone surrogate as `\ufffd`: a high one (D800–DBFF) not
/// followed by an escaped low one, or a low one (DC00–DFFF) not preceded by a high one.
/// `None` when there is none.
fn replace_lone_surrogates(data: &str) -> Option<String> {
    let bytes = data.as_bytes();
    let mut out = String::with_capacity(data.len());
    let mut copied = 0;
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
                    // `\\`, `\"` and the like: skip the escaped character, so that the `u`
                    // of `\\ud800` is never read as the start of an escape.
                    i += 2;
                    continue;
                }
                let Some(unit) = hex4(bytes, i + 2) else {
                    i += 2;
                    continue;
                };
                let lone = match unit {
                    0xD800..=0xDBFF => {
                        let next = (bytes.get(i + 6) == Some(&b'\\')
                            && bytes.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(bytes, i + 8))
                        .flatten();
                        if matches!(next, Some(0xDC00..=0xDFFF)) {
                            // A valid pair: keep both escapes.
                            i += 12;
                            continue;
                        }
                        true
                    }
                    0xDC00..=0xDFFF => true,
                    _ => false,
                };
                if lone {
                    out.push_str(&data[copied..i]);
                    out.push_str("\\ufffd");
                    copied = i + 6;
                }
                i += 6;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&data[copied..]);
    Some(out)
}

/// The four hex digits at `at`, if they are there.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    // Four ASCII hex digits: valid UTF-8 and a valid number.
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The event name's string token in a payload: its quotes' positions and whether it holds an
/// escape.
struct NameToken {
    open: usize,
    close: usize,
    escaped: bool,
}

/// Finds the event name (the array's first element) without parsing the rest. `None` when
/// the payload does not start with an array whose first element is a string.
fn event_name(data: &str) -> Option<NameToken> {
    let bytes = data.as_bytes();
    let skip_ws = |mut i: usize| {
        while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    let at = skip_ws(0);
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    let open = skip_ws(at + 1);
    if bytes.get(open) != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    let mut i = open + 1;
    loop {
        match bytes.get(i)? {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => {
                return Some(NameToken {
                    open,
                    close: i,
                    escaped,
                });
            }
            _ => i += 1,
        }
    }
}

/// Rewrites the event name without escapes. `None` when the name is not a valid JSON string.
fn unescape_event_name(data: &str, name: &NameToken) -> Option<String> {
    let token = data.get(name.open..=name.close)?;
    let decoded: String = serde_json::from_str(token).ok()?;
    let raw: String = decoded
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\u{fffd}',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect();
    Some(format!(
        "{}\"{}\"{}",
        &data[..name.open],
        raw,
        &data[name.close + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> String {
        let repaired = repair_event(data).unwrap_or_else(|| data.to_string());
        let value = Value::Str(Str::from(repaired), None);
        crate::value::read_event(&value).unwrap().to_string()
    }

    #[test]
    fn plain_events_are_left_alone() {
        assert_eq!(repair_event(r#"["exec",{"command":"ls"}]"#), None);
        assert_eq!(repair_event(r#"["café",1]"#), None);
        assert_eq!(
            repair_event(r#"["exec",{"command":"printf 'a\nb\u0041'"}]"#),
            None
        );
    }

    #[test]
    fn lone_high_surrogate_becomes_the_replacement_character() {
        assert_eq!(event(r#"["x\ud800",{}]"#), "x\u{fffd}");
        assert_eq!(event(r#"["\uD83D",{}]"#), "\u{fffd}");
        // A high surrogate followed by another high one, then a valid pair.
        assert_eq!(event(r#"["\ud800\ud83d\ude00",{}]"#), "\u{fffd}😀");
    }

    #[test]
    fn lone_low_surrogate_becomes_the_replacement_character() {
        assert_eq!(event(r#"["\udc00y",{}]"#), "\u{fffd}y");
        assert_eq!(event(r#"["a\ude00\ude00",{}]"#), "a\u{fffd}\u{fffd}");
    }

    #[test]
    fn a_high_surrogate_at_the_end_of_a_string_is_lone() {
        assert_eq!(event(r#"["ab\ud83d"]"#), "ab\u{fffd}");
        // At the end of the text, even cut short.
        assert_eq!(
            replace_lone_surrogates(r#"["a\ud800"#).as_deref(),
            Some(r#"["a\ufffd"#)
        );
        assert_eq!(
            replace_lone_surrogates(r#"["a\ud800\u"#).as_deref(),
            Some(r#"["a\ufffd\u"#)
        );
    }

    #[test]
    fn a_valid_pair_is_kept() {
        assert_eq!(event(r#"["\ud83d\ude00",{}]"#), "😀");
        assert_eq!(event(r#"["\uD83D\uDE00",{}]"#), "😀");
        assert_eq!(repair_surrogates(r#"["\ud83d\ude00"]"#), None);
    }

    #[test]
    fn an_escaped_backslash_before_u_is_not_an_escape() {
        assert_eq!(replace_lone_surrogates(r#"["a\\ud800"]"#), None);
        assert_eq!(
            replace_lone_surrogates(r#"["a\\\ud800"]"#).as_deref(),
            Some(r#"["a\\\ufffd"]"#)
        );
        // The name is rewritten without its escape; the data keeps its text as it was.
        let repaired = repair_event(r#"["a\\ud800",{"c":"\\udc00"}]"#).unwrap();
        assert_eq!(
            repaired,
            format!(r#"["a{}ud800",{{"c":"\\udc00"}}]"#, '\u{fffd}')
        );
    }

    #[test]
    fn a_quote_in_the_data_does_not_confuse_the_scan() {
        assert_eq!(
            replace_lone_surrogates(r#"["e",{"q\"\ud800":"\"\udc00"}]"#).as_deref(),
            Some(r#"["e",{"q\"\ufffd":"\"\ufffd"}]"#)
        );
    }

    #[test]
    fn lone_surrogates_in_the_data_are_repaired_too() {
        let repaired = repair_event(r#"["x\ud800",{"command":"echo \ud800"}]"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(&repaired).unwrap();
        assert_eq!(value[0], "x\u{fffd}");
        assert_eq!(value[1]["command"], "echo \u{fffd}");
        let repaired = repair_event(r#"["exec",{"command":"a\ud83d"}]"#).unwrap();
        assert_eq!(repaired, r#"["exec",{"command":"a\ufffd"}]"#);
    }

    #[test]
    fn names_with_other_escapes_are_readable() {
        assert_eq!(event(r#"["a\nb",{}]"#), "a\u{fffd}b");
        assert_eq!(event(r#"["\u00e9t\u00e9",{}]"#), "été");
        assert_eq!(event(r#"["q\"",{}]"#), "q\u{fffd}");
        assert_eq!(event(r#" [ "a\/b" , 1 ]"#), "a/b");
    }

    #[test]
    fn what_cannot_be_repaired_is_left_as_it_was() {
        assert_eq!(repair_event(r#"[1,2]"#), None);
        assert_eq!(repair_event(r#"{"a":1}"#), None);
        assert_eq!(repair_event(r#"["unterminated"#), None);
        assert_eq!(repair_event(r#"["bad \x escape",1]"#), None);
        assert_eq!(repair_event(r#"["not hex \udzzz",1]"#), None);
    }

    /// Through the parser as socketioxide drives it: `decode_str`, then `read_event` and
    /// `decode_value` on the packet's data.
    mod through_the_parser {
        use bytes::Bytes;
        use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};

        use super::*;
        use crate::CommonParser;

        fn decode(state: &ParserState, text: &str) -> Result<PacketData, ParseError> {
            CommonParser
                .decode_str(&ParseConfig::default(), state, Str::from(text.to_string()))
                .map(|p| p.inner)
        }

        #[test]
        fn an_event_with_a_lone_surrogate_in_its_name_and_data_is_readable() {
            let packet = decode(
                &ParserState::default(),
                r#"2["x\ud800",{"c":"echo \ud800"}]"#,
            );
            let PacketData::Event(mut value, None) = packet.unwrap() else {
                panic!("an event");
            };
            assert_eq!(CommonParser.read_event(&value).unwrap(), "x\u{fffd}");
            let data: serde_json::Value = CommonParser.decode_value(&mut value, true).unwrap();
            assert_eq!(data["c"], "echo \u{fffd}");
        }

        #[test]
        fn a_binary_event_with_a_lone_surrogate_in_its_name_is_readable() {
            let state = ParserState::default();
            let header = r#"51-3["x\ud800",{"_placeholder":true,"num":0}]"#;
            assert!(matches!(
                decode(&state, header),
                Err(ParseError::NeedsMoreBinaryData)
            ));
            let packet = CommonParser
                .decode_bin(&ParseConfig::default(), &state, Bytes::from_static(&[1, 2]))
                .unwrap();
            let PacketData::BinaryEvent(mut value, Some(3)) = packet.inner else {
                panic!("a binary event with its ack id");
            };
            assert_eq!(CommonParser.read_event(&value).unwrap(), "x\u{fffd}");
            let data: Bytes = CommonParser.decode_value(&mut value, true).unwrap();
            assert_eq!(data, Bytes::from_static(&[1, 2]));
        }

        #[test]
        fn ack_and_connect_data_with_a_lone_surrogate_deserialize() {
            let state = ParserState::default();
            let PacketData::EventAck(mut value, 7) = decode(&state, r#"37["a\udc00"]"#).unwrap()
            else {
                panic!("an ack");
            };
            let data: String = CommonParser.decode_value(&mut value, false).unwrap();
            assert_eq!(data, "a\u{fffd}");

            let PacketData::Connect(value) = decode(&state, r#"0{"t":"\ud800"}"#).unwrap() else {
                panic!("a connect");
            };
            let auth: serde_json::Value = CommonParser.decode_default(value.as_ref()).unwrap();
            assert_eq!(auth["t"], "\u{fffd}");
        }

        #[test]
        fn a_plain_event_is_passed_on_as_it_came() {
            let text = r#"2["exec",{"command":"printf '\\ud800\n'"}]"#;
            let PacketData::Event(value, None) = decode(&ParserState::default(), text).unwrap()
            else {
                panic!("an event");
            };
            assert_eq!(value.as_str().unwrap().as_str(), &text[1..]);
        }
    }
}
