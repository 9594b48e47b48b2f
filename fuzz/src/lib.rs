//! Checks shared by the pulsegate fuzz targets (see docs/FUZZING.md).
//!
//! Everything here panics on a violated property: libFuzzer turns the panic
//! into a crash artifact under `fuzz/artifacts/<target>/`.

use pulsegate_proto::{ClientFrame, Codec, ServerFrame};
use serde_json::Value;

/// Most units in the last place two floats may differ by and still be equal
/// for [`json_eq`].
pub const FLOAT_ULPS: u64 = 8;

/// JSON equality that tolerates a few units in the last place
/// ([`FLOAT_ULPS`]) between two floats: without serde_json's
/// `float_roundtrip` feature (which the workspace does not enable) parsing
/// the shortest representation of an f64 may land a unit or two away, and
/// each JSON text -> f64 step of a round trip can add to the drift (see
/// docs/FUZZING.md, "Known behaviours"). Everything else must be exactly
/// equal; object key order does not matter (`serde_json::Map` is sorted).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            if !(x.is_f64() || y.is_f64()) {
                return false;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(f), Some(g)) => ulps_apart(f, g) <= FLOAT_ULPS,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x
                    .iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Distance between two finite floats in units in the last place; `u64::MAX`
/// when their signs differ (except for zeros).
pub fn ulps_apart(f: f64, g: f64) -> u64 {
    if f == g {
        return 0;
    }
    if f.is_sign_negative() != g.is_sign_negative() {
        return u64::MAX;
    }
    f.to_bits().abs_diff(g.to_bits())
}

/// Parses JSON text the way a subscriber would (`serde_json::Value`).
pub fn parse_json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

/// Decodes `input` as a client frame with `codec`. It must never panic;
/// when it succeeds, `encode_client` + `decode` must give back an equal
/// frame (the payload compared as JSON values, see [`json_eq`]).
pub fn check_client_frame(codec: Codec, input: &[u8]) {
    let first = match codec.decode(input) {
        Ok(f) => f,
        Err(e) => {
            // The error is sent back to the client: it must render.
            let _ = e.to_string();
            return;
        }
    };
    let _ = first.id();
    let bytes = codec.encode_client(&first);
    let second = codec.decode(&bytes).unwrap_or_else(|e| {
        panic!("re-encoded frame does not decode: {e}\nfirst: {first:?}\nbytes: {bytes:?}")
    });
    match (&first, &second) {
        (
            ClientFrame::Pub {
                id: id1,
                topic: topic1,
                data: data1,
            },
            ClientFrame::Pub {
                id: id2,
                topic: topic2,
                data: data2,
            },
        ) => {
            assert_eq!(id1, id2, "id changed in the round trip");
            assert_eq!(topic1, topic2, "topic changed in the round trip");
            let v2 = parse_json(data2).unwrap_or_else(|| {
                panic!("re-decoded payload is not JSON: {data2:?} (first: {first:?})")
            });
            match parse_json(data1) {
                Some(v1) => assert!(
                    json_eq(&v1, &v2),
                    "payload changed in the round trip: {v1} became {v2}"
                ),
                // The codec refuses JSON that serde_json::Value cannot hold
                // (such as 1e400, see `codec::check_payload`): a decoded
                // payload is always representable.
                None => panic!("decoded a payload no subscriber could receive: {data1:?}"),
            }
        }
        _ => assert_eq!(first, second, "frame changed in the round trip"),
    }
}

/// Frame equality with payloads compared by [`json_eq`].
pub fn server_frames_eq(a: &ServerFrame, b: &ServerFrame) -> bool {
    match (a, b) {
        (
            ServerFrame::Msg {
                topic: t1,
                seq: s1,
                epoch: e1,
                ts: ts1,
                data: d1,
            },
            ServerFrame::Msg {
                topic: t2,
                seq: s2,
                epoch: e2,
                ts: ts2,
                data: d2,
            },
        ) => t1 == t2 && s1 == s2 && e1 == e2 && ts1 == ts2 && json_eq(d1, d2),
        _ => a == b,
    }
}

/// Decodes `input` as a server frame with `codec` (what the client crate
/// does). It must never panic; when it succeeds, encoding the frame with
/// either codec and decoding it again gives an equal frame.
pub fn check_server_frame(codec: Codec, input: &[u8]) {
    let Ok(frame) = codec.decode_server(input) else {
        return;
    };
    for out in [Codec::Json, Codec::MsgPack] {
        let bytes = out.encode(&frame);
        let again = out.decode_server(&bytes).unwrap_or_else(|e| {
            panic!("{out:?} re-encoding of {frame:?} does not decode: {e}\nbytes: {bytes:?}")
        });
        assert!(
            server_frames_eq(&frame, &again),
            "{codec:?} -> {out:?} round trip changed the frame:\n{frame:?}\n{again:?}"
        );
    }
}
