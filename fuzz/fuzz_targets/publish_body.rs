//! The bodies of `POST /api/publish` (a batch) and `POST /api/publish/{topic}`
//! (one value), parsed as crates/pulsegate-server/src/http.rs does
//! (`publish_batch_inner`, `publish_one`). The item struct is private there
//! and is reproduced here: keep the two in step.
//!
//! Never panics; every item that parses has a topic that is validated (with
//! a few length limits) and a payload that is valid JSON text; for payloads
//! a subscriber can parse, the data frame built from it (`encode_msg`, both
//! codecs) decodes again on the client side to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate_proto::{topic::validate_topic, Codec, ServerFrame};
use serde_json::value::RawValue;

/// As `Item` in `publish_batch_inner`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    topic: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

const MAX_LENS: [usize; 3] = [1, 256, 65535];

fuzz_target!(|body: &[u8]| {
    // POST /api/publish/{topic}: the body is one JSON value.
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        check_payload("a/b", raw);
    }
    // POST /api/publish: a JSON array of {"topic":…,"data":…}.
    let Ok(items) = serde_json::from_slice::<Vec<Item<'_>>>(body) else {
        return;
    };
    for item in &items {
        let mut valid = false;
        for max in MAX_LENS {
            if let Err(e) = validate_topic(&item.topic, max) {
                // Rendered into the 400 response.
                let _ = format!("item 0: {e}");
            } else {
                valid = true;
            }
        }
        // The `$` check that follows validation in the handler.
        let _reserved = item.topic.starts_with('$');
        if valid {
            check_payload(&item.topic, item.data);
        }
    }
});

fn check_payload(topic: &str, raw: &RawValue) {
    let text = raw.get();
    // What the hub stores: the raw text, which must itself be one JSON value.
    serde_json::from_str::<&RawValue>(text)
        .unwrap_or_else(|e| panic!("stored payload {text:?} is not JSON: {e}"));
    // The handlers refuse what no subscriber could receive (400 bad_json).
    if pulsegate_proto::codec::check_payload(text).is_err() {
        assert!(pulsegate_fuzz::parse_json(text.as_bytes()).is_none());
        return;
    }
    let value = pulsegate_fuzz::parse_json(text.as_bytes())
        .unwrap_or_else(|| panic!("check_payload accepted {text:?}, which does not parse"));
    for codec in [Codec::Json, Codec::MsgPack] {
        let bytes = codec.encode_msg(topic, 1, "E", 0, text.as_bytes());
        match codec.decode_server(&bytes) {
            Ok(ServerFrame::Msg {
                topic: t, data, ..
            }) => {
                assert_eq!(t, topic, "{codec:?} data frame topic");
                assert!(
                    pulsegate_fuzz::json_eq(&value, &data),
                    "{codec:?} data frame payload: {value} became {data}"
                );
            }
            other => panic!("{codec:?} data frame for {text:?} decodes as {other:?}"),
        }
    }
}
