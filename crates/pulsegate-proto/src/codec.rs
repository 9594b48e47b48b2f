//! The two subprotocols: `pulsegate.v1.json` and `pulsegate.v1.msgpack`.
//!
//! Payloads (`data`) are carried internally as canonical JSON text, so a
//! message published in either encoding can be delivered in either. The data
//! frame of a message is encoded once per codec and shared by every
//! subscriber using that codec ([`Codec::encode_msg`]).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::{ClientFrame, Id, Position, ServerFrame};

/// Subprotocol name of the JSON codec (text frames; the default).
pub const JSON_PROTOCOL: &str = "pulsegate.v1.json";
/// Subprotocol name of the MessagePack codec (binary frames).
pub const MSGPACK_PROTOCOL: &str = "pulsegate.v1.msgpack";

/// One of the two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON in text frames.
    Json,
    /// MessagePack maps in binary frames.
    MsgPack,
}

/// Broad class of a decoding failure, for the metrics issue's
/// `frame errors by kind` and for the error code sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not JSON / not MessagePack at all, or not an object.
    BadEncoding,
    /// Unknown `op`.
    UnknownOp,
    /// Structurally valid but a field is missing or of the wrong type.
    BadRequest,
}

/// A frame that could not be decoded; `id` is set when it could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// Class of error.
    pub kind: DecodeErrorKind,
    /// The request id, when it could be read, for the error reply.
    pub id: Option<Id>,
    /// Explanation for the client.
    pub message: String,
}

/// The loosely typed shape every client frame is read into first; the `op`
/// decides which fields are required. Unknown fields are ignored so newer
/// clients can talk to older servers.
#[derive(Deserialize)]
struct Wire<D> {
    op: Option<String>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    snapshot: Option<bool>,
    #[serde(default)]
    since: Option<std::collections::BTreeMap<String, Position>>,
    #[serde(default)]
    token: Option<String>,
    /// `Some` whenever the field is present, even as `null`: null is a valid payload.
    #[serde(
        default,
        deserialize_with = "present",
        bound(deserialize = "D: Deserialize<'de>")
    )]
    data: Option<D>,
}

fn present<'de, D: Deserialize<'de>, De: serde::Deserializer<'de>>(
    d: De,
) -> Result<Option<D>, De::Error> {
    D::deserialize(d).map(Some)
}

/// Refuses JSON that is well-formed text but cannot be represented as a
/// value (numbers out of `f64` range such as `1e400`, lone UTF-16
/// surrogates): kept as raw text it would be stored, then become `null` for
/// MessagePack subscribers and undecodable for typed clients, i.e. lost
/// silently. Costs one parse per published message, none per subscriber.
///
/// The payload is walked with serde_json's own parser, as building a
/// `serde_json::Value` would be (same number and string rules), but without
/// building it: no allocation per publish.
pub fn check_payload(json: &str) -> Result<(), String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(json);
    Walk { depth: 0 }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("payload not representable: {e}"))
}

/// Visits a JSON value the way `serde_json::Value` would be built from it,
/// refusing what a `Value` cannot hold and nesting beyond
/// [`MAX_PAYLOAD_DEPTH`]; keeps nothing.
struct Walk {
    /// Containers around this value.
    depth: usize,
}

impl Walk {
    fn inner<E: serde::de::Error>(&self) -> Result<Walk, E> {
        if self.depth >= MAX_PAYLOAD_DEPTH {
            return Err(E::custom(format_args!(
                "nested deeper than {MAX_PAYLOAD_DEPTH} levels"
            )));
        }
        Ok(Walk {
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(Walk { ..inner })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        // Keys go through the same string rules (a lone surrogate is refused).
        while map.next_key_seed(Walk { ..inner })?.is_some() {
            map.next_value_seed(Walk { ..inner })?;
        }
        Ok(())
    }
}

/// Deepest nesting of arrays and objects a payload may have (`[]` is one
/// level). serde_json, and so most JSON clients, refuse documents nested
/// more than 127 levels, and a `msg` frame wraps the payload in one more
/// object: 126 is the most every JSON subscriber can read. Held for JSON,
/// MessagePack and HTTP publishers alike.
pub const MAX_PAYLOAD_DEPTH: usize = 126;

/// Whether `v` nests no deeper than [`MAX_PAYLOAD_DEPTH`] (iterative: a
/// hostile payload cannot exhaust the stack here).
pub fn depth_ok(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if d > MAX_PAYLOAD_DEPTH {
            return false;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    true
}

/// A frame must be a JSON object / MessagePack map; serde would otherwise
/// also accept an array of fields by position.
fn is_map(codec: Codec, bytes: &[u8]) -> bool {
    match codec {
        Codec::Json => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Codec::MsgPack => matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    }
}

impl Codec {
    /// Picks the codec from the client's offered subprotocols, in the
    /// client's order of preference; JSON when none of ours is offered.
    pub fn negotiate<'a>(
        offered: impl IntoIterator<Item = &'a str>,
    ) -> (Codec, Option<&'static str>) {
        for p in offered {
            match p.trim() {
                JSON_PROTOCOL => return (Codec::Json, Some(JSON_PROTOCOL)),
                MSGPACK_PROTOCOL => return (Codec::MsgPack, Some(MSGPACK_PROTOCOL)),
                _ => {}
            }
        }
        (Codec::Json, None)
    }

    /// The subprotocol name of this codec (`pulsegate.v1.json` or `pulsegate.v1.msgpack`).
    pub fn protocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_PROTOCOL,
            Codec::MsgPack => MSGPACK_PROTOCOL,
        }
    }

    /// Metric label: `json` or `msgpack`.
    pub fn label(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// True when frames of this codec go in binary WebSocket frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Codec::MsgPack)
    }

    /// Decodes one client frame.
    pub fn decode(self, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        if !is_map(self, bytes) {
            return Err(bad_encoding(
                format!(
                    "a frame must be one {} object",
                    if self == Codec::Json {
                        "JSON"
                    } else {
                        "MessagePack map"
                    }
                ),
                None,
            ));
        }
        match self {
            Codec::Json => {
                let wire: Wire<Box<RawValue>> = serde_json::from_slice(bytes).map_err(|e| {
                    bad_encoding(
                        if e.is_data() {
                            format!("invalid frame: {e}")
                        } else {
                            format!("malformed JSON: {e}")
                        },
                        bytes_id_json(bytes),
                    )
                })?;
                from_wire(wire, |raw| {
                    check_payload(raw.get())?;
                    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
                })
            }
            Codec::MsgPack => {
                let wire: Wire<serde_json::Value> = rmp_serde::from_slice(bytes)
                    .map_err(|e| bad_encoding(format!("malformed MessagePack: {e}"), None))?;
                from_wire(wire, |v| {
                    if !depth_ok(&v) {
                        return Err(format!(
                            "payload not representable: nested deeper than {MAX_PAYLOAD_DEPTH} levels"
                        ));
                    }
                    serde_json::to_vec(&v)
                        .map(Bytes::from)
                        .map_err(|e| e.to_string())
                })
            }
        }
    }

    /// Encodes a control frame.
    pub fn encode(self, frame: &ServerFrame) -> Bytes {
        match self {
            Codec::Json => {
                Bytes::from(serde_json::to_vec(frame).expect("server frames always serialise"))
            }
            Codec::MsgPack => {
                Bytes::from(rmp_serde::to_vec_named(frame).expect("server frames always serialise"))
            }
        }
    }

    /// Encodes the data frame of one message. Called once per message and
    /// codec; the result is shared by all subscribers. `data` must be valid
    /// JSON text (it was validated at ingress).
    pub fn encode_msg(self, topic: &str, seq: u64, epoch: &str, ts: u64, data: &[u8]) -> Bytes {
        match self {
            Codec::Json => {
                // Hand-assembled so the payload is copied once, never re-parsed.
                let mut out = BytesMut::with_capacity(data.len() + topic.len() + epoch.len() + 80);
                out.put_slice(b"{\"op\":\"msg\",\"topic\":");
                write_json_str(&mut out, topic);
                out.put_slice(b",\"seq\":");
                out.put_slice(itoa::Buffer::new().format(seq).as_bytes());
                out.put_slice(b",\"epoch\":");
                write_json_str(&mut out, epoch);
                out.put_slice(b",\"ts\":");
                out.put_slice(itoa::Buffer::new().format(ts).as_bytes());
                out.put_slice(b",\"data\":");
                out.put_slice(data);
                out.put_u8(b'}');
                out.freeze()
            }
            Codec::MsgPack => {
                #[derive(Serialize)]
                struct Msg<'a> {
                    op: &'static str,
                    topic: &'a str,
                    seq: u64,
                    epoch: &'a str,
                    ts: u64,
                    data: serde_json::Value,
                }
                let data: serde_json::Value =
                    serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
                let msg = Msg {
                    op: "msg",
                    topic,
                    seq,
                    epoch,
                    ts,
                    data,
                };
                Bytes::from(rmp_serde::to_vec_named(&msg).expect("msg always serialises"))
            }
        }
    }

    /// Decodes a server frame (for clients and tests).
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerFrame, String> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::MsgPack => {
                let frame: ServerFrame = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
                match &frame {
                    ServerFrame::Msg { data, .. } if !depth_ok(data) => Err(format!(
                        "payload nested deeper than {MAX_PAYLOAD_DEPTH} levels"
                    )),
                    _ => Ok(frame),
                }
            }
        }
    }

    /// Encodes a client frame (for clients and tests). `Pub.data` must be JSON text.
    pub fn encode_client(self, frame: &ClientFrame) -> Bytes {
        let mut map = serde_json::Map::new();
        let (op, id) = match frame {
            ClientFrame::Sub {
                id,
                topic,
                snapshot,
                since,
            } => {
                map.insert("topic".into(), topic.clone().into());
                if *snapshot {
                    map.insert("snapshot".into(), true.into());
                }
                if !since.is_empty() {
                    let s: serde_json::Map<String, serde_json::Value> = since
                        .iter()
                        .map(|(t, p)| (t.clone(), serde_json::to_value(p).expect("position")))
                        .collect();
                    map.insert("since".into(), s.into());
                }
                ("sub", id)
            }
            ClientFrame::Unsub { id, topic } => {
                map.insert("topic".into(), topic.clone().into());
                ("unsub", id)
            }
            ClientFrame::Pub { id, topic, data } => {
                map.insert("topic".into(), topic.clone().into());
                let v: serde_json::Value =
                    serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
                map.insert("data".into(), v);
                ("pub", id)
            }
            ClientFrame::Ping { id } => ("ping", id),
            ClientFrame::Auth { id, token } => {
                map.insert("token".into(), token.clone().into());
                ("auth", id)
            }
        };
        map.insert("op".into(), op.into());
        if let Some(id) = id {
            map.insert("id".into(), serde_json::to_value(id).expect("id"));
        }
        let v = serde_json::Value::Object(map);
        match self {
            Codec::Json => Bytes::from(serde_json::to_vec(&v).expect("json")),
            Codec::MsgPack => Bytes::from(rmp_serde::to_vec_named(&v).expect("msgpack")),
        }
    }
}

fn bad_encoding(message: String, id: Option<Id>) -> DecodeError {
    DecodeError {
        kind: DecodeErrorKind::BadEncoding,
        id,
        message,
    }
}

/// Best effort: read `id` from a frame that failed to decode as a whole.
fn bytes_id_json(bytes: &[u8]) -> Option<Id> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: Option<Id>,
    }
    serde_json::from_slice::<OnlyId>(bytes)
        .ok()
        .and_then(|o| o.id)
}

fn from_wire<D>(
    wire: Wire<D>,
    data_to_json: impl FnOnce(D) -> Result<Bytes, String>,
) -> Result<ClientFrame, DecodeError> {
    let id = wire.id;
    let bad = |id: &Option<Id>, message: &str| DecodeError {
        kind: DecodeErrorKind::BadRequest,
        id: id.clone(),
        message: message.to_string(),
    };
    let Some(op) = wire.op else {
        return Err(bad(&id, "missing field `op`"));
    };
    match op.as_str() {
        "sub" => {
            let topic = wire.topic.ok_or_else(|| bad(&id, "sub needs `topic`"))?;
            Ok(ClientFrame::Sub {
                id,
                topic,
                snapshot: wire.snapshot.unwrap_or(false),
                since: wire
                    .since
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            })
        }
        "unsub" => {
            let topic = wire.topic.ok_or_else(|| bad(&id, "unsub needs `topic`"))?;
            Ok(ClientFrame::Unsub { id, topic })
        }
        "pub" => {
            let topic = wire.topic.ok_or_else(|| bad(&id, "pub needs `topic`"))?;
            let data = wire.data.ok_or_else(|| bad(&id, "pub needs `data`"))?;
            let data = data_to_json(data).map_err(|e| bad(&id, &format!("bad data: {e}")))?;
            Ok(ClientFrame::Pub { id, topic, data })
        }
        "ping" => Ok(ClientFrame::Ping { id }),
        "auth" => {
            let token = wire.token.ok_or_else(|| bad(&id, "auth needs `token`"))?;
            Ok(ClientFrame::Auth { id, token })
        }
        other => Err(DecodeError {
            kind: DecodeErrorKind::UnknownOp,
            message: format!(
                "unknown op `{}`",
                other.chars().take(32).collect::<String>()
            ),
            id,
        }),
    }
}

fn write_json_str(out: &mut BytesMut, s: &str) {
    // serde_json's escaping is correct for every input; topics and epochs are short.
    let mut buf = Vec::with_capacity(s.len() + 2);
    serde_json::to_writer(&mut buf, s).expect("string serialises");
    out.put_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorCode, Reply};

    #[test]
    fn negotiate_prefers_client_order() {
        assert_eq!(Codec::negotiate([]).0, Codec::Json);
        assert_eq!(
            Codec::negotiate(["x", MSGPACK_PROTOCOL]),
            (Codec::MsgPack, Some(MSGPACK_PROTOCOL))
        );
        assert_eq!(
            Codec::negotiate([JSON_PROTOCOL, MSGPACK_PROTOCOL]).0,
            Codec::Json
        );
    }

    #[test]
    fn decode_sub_with_since() {
        let f = Codec::Json
            .decode(br#"{"op":"sub","id":1,"topic":"site/+/power","snapshot":true,"since":{"site/a/power":{"epoch":"E","seq":41}}}"#)
            .unwrap();
        assert_eq!(
            f,
            ClientFrame::Sub {
                id: Some(Id::Num(1)),
                topic: "site/+/power".into(),
                snapshot: true,
                since: vec![(
                    "site/a/power".into(),
                    Position {
                        epoch: "E".into(),
                        seq: 41
                    }
                )],
            }
        );
    }

    #[test]
    fn decode_pub_keeps_raw_json() {
        let f = Codec::Json
            .decode(br#"{"op":"pub","id":"x","topic":"a/b","data":{"w": 1520}}"#)
            .unwrap();
        match f {
            ClientFrame::Pub { id, topic, data } => {
                assert_eq!(id, Some(Id::Str("x".into())));
                assert_eq!(topic, "a/b");
                assert_eq!(&data[..], br#"{"w": 1520}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn msgpack_payloads_nest_no_deeper_than_json_allows() {
        use serde_json::json;
        let nested = |d: usize| -> serde_json::Value { (0..d).fold(json!(1), |v, _| json!([v])) };
        let frame = |d: usize| {
            let mut m = serde_json::Map::new();
            m.insert("op".into(), "pub".into());
            m.insert("topic".into(), "t".into());
            m.insert("data".into(), nested(d));
            rmp_serde::to_vec_named(&serde_json::Value::Object(m)).unwrap()
        };
        // The JSON parser's own bound is one level more: the frame's.
        let text = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(serde_json::from_str::<serde_json::Value>(&text(MAX_PAYLOAD_DEPTH + 1)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&text(MAX_PAYLOAD_DEPTH + 2)).is_err());
        assert!(check_payload(&text(MAX_PAYLOAD_DEPTH)).is_ok());
        assert!(check_payload(&text(MAX_PAYLOAD_DEPTH + 1)).is_err());
        // The deepest payload accepted still decodes inside a JSON `msg`.
        let json_msg = Codec::Json.encode(&ServerFrame::Msg {
            topic: "t".into(),
            seq: 1,
            epoch: "e".into(),
            ts: 1,
            data: nested(MAX_PAYLOAD_DEPTH),
        });
        assert!(Codec::Json.decode_server(&json_msg).is_ok());
        assert!(Codec::MsgPack.decode(&frame(MAX_PAYLOAD_DEPTH)).is_ok());
        let err = Codec::MsgPack
            .decode(&frame(MAX_PAYLOAD_DEPTH + 1))
            .unwrap_err();
        assert!(format!("{err:?}").contains("nested deeper"), "{err:?}");
        let msg = |d: usize| {
            Codec::MsgPack.encode(&ServerFrame::Msg {
                topic: "t".into(),
                seq: 1,
                epoch: "e".into(),
                ts: 1,
                data: nested(d),
            })
        };
        assert!(Codec::MsgPack
            .decode_server(&msg(MAX_PAYLOAD_DEPTH))
            .is_ok());
        assert!(Codec::MsgPack
            .decode_server(&msg(MAX_PAYLOAD_DEPTH + 1))
            .is_err());
    }

    /// What `check_payload` did before it walked without building: parse
    /// into a `Value`, then measure its depth.
    fn check_payload_by_value(json: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| depth_ok(&v))
    }

    #[test]
    fn the_payload_walk_refuses_what_a_value_refuses() {
        let nest = |d: usize, inner: &str| format!("{}{inner}{}", "[".repeat(d), "]".repeat(d));
        let objs = |d: usize| format!("{}1{}", r#"{"k":"#.repeat(d), "}".repeat(d));
        let cases = [
            "1".to_string(),
            "1e400".into(),
            "-1e999".into(),
            "1e-400".into(),
            "123456789012345678901234567890".into(),
            r#""\ud800""#.into(),
            r#""\udc00x""#.into(),
            r#""\ud800\udc00""#.into(),
            r#"{"\ud800":1}"#.into(),
            r#"{"\ud83d\ude00":[1,{"a":null}]}"#.into(),
            r#"{"a":1,"a":2}"#.into(),
            nest(MAX_PAYLOAD_DEPTH, "1"),
            nest(MAX_PAYLOAD_DEPTH + 1, "1"),
            nest(MAX_PAYLOAD_DEPTH + 5, ""),
            objs(MAX_PAYLOAD_DEPTH),
            objs(MAX_PAYLOAD_DEPTH + 1),
            format!(
                "[{},{}]",
                nest(MAX_PAYLOAD_DEPTH - 1, ""),
                nest(MAX_PAYLOAD_DEPTH, "")
            ),
            " [1, 2] ".into(),
            "[1,]".into(),
            "[1] x".into(),
        ];
        for c in &cases {
            assert_eq!(check_payload(c).is_ok(), check_payload_by_value(c), "{c}");
        }
        let e = check_payload(&nest(MAX_PAYLOAD_DEPTH + 1, "")).unwrap_err();
        assert!(e.contains("nested deeper than 126 levels"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn the_payload_walk_agrees_with_building_a_value(
            tokens in proptest::collection::vec(
                proptest::sample::select(vec![
                    "[", "]", "{", "}", ",", ":", " ", "null", "true", "-0", "1.5e3",
                    "1e400", "18446744073709551616", r#""k""#, r#""\ud800""#,
                    r#""\ud800\udc00""#, r#""\u00e9""#, r#""\"""#,
                ]),
                0..40,
            )
        ) {
            let text = tokens.concat();
            proptest::prop_assert_eq!(check_payload(&text).is_ok(), check_payload_by_value(&text), "{}", text);
        }
    }

    #[test]
    fn null_data_is_a_payload() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let frame = ClientFrame::Pub {
                id: None,
                topic: "a".into(),
                data: Bytes::from_static(b"null"),
            };
            assert_eq!(
                codec.decode(&codec.encode_client(&frame)).unwrap(),
                frame,
                "{codec:?}"
            );
        }
        let e = Codec::Json
            .decode(br#"{"op":"pub","topic":"a"}"#)
            .unwrap_err();
        assert_eq!(e.message, "pub needs `data`");
    }

    #[test]
    fn decode_errors() {
        let e = Codec::Json.decode(b"{nope").unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadEncoding);
        let e = Codec::Json.decode(br#"{"op":"fly","id":9}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnknownOp);
        assert_eq!(e.id, Some(Id::Num(9)));
        let e = Codec::Json
            .decode(br#"{"op":"pub","id":3,"topic":"a"}"#)
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadRequest);
        assert_eq!(e.id, Some(Id::Num(3)));
        let e = Codec::Json.decode(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadEncoding);
        // Valid JSON text that no subscriber could receive as a value.
        for data in ["1e400", "-1e999", r#""\ud800""#] {
            let frame = format!(r#"{{"op":"pub","id":4,"topic":"a","data":{data}}}"#);
            let e = Codec::Json.decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::BadRequest, "{data}");
            assert!(e.message.contains("not representable"), "{}", e.message);
        }
        let e = Codec::Json.decode(br#"["ping",7]"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadEncoding);
        let e = Codec::MsgPack
            .decode(&rmp_serde::to_vec(&("ping", 7)).unwrap())
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadEncoding);
        let e = Codec::Json
            .decode(br#"{"op":"sub","id":2,"topic":5}"#)
            .unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadEncoding);
        assert_eq!(e.id, Some(Id::Num(2)));
        assert!(Codec::MsgPack.decode(&[0xc1]).is_err());
    }

    #[test]
    fn msg_roundtrip_both_codecs() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode_msg("a/\"b", 42, "E1", 7, br#"{"w":1520,"s":"x"}"#);
            let f = codec.decode_server(&bytes).unwrap();
            assert_eq!(
                f,
                ServerFrame::Msg {
                    topic: "a/\"b".into(),
                    seq: 42,
                    epoch: "E1".into(),
                    ts: 7,
                    data: serde_json::json!({"w":1520,"s":"x"}),
                }
            );
        }
    }

    #[test]
    fn control_frames_roundtrip() {
        let frames = [
            ServerFrame::Ok(Reply {
                id: Some(Id::Num(1)),
                recovered: Some(vec!["a".into()]),
                not_recovered: Some(vec![]),
                ..Reply::default()
            }),
            ServerFrame::Error {
                id: None,
                code: ErrorCode::Limit,
                message: "too many".into(),
            },
            ServerFrame::Pong {
                id: Some(Id::Str("p".into())),
                ts: 5,
            },
            ServerFrame::Welcome {
                conn: "c1".into(),
                node: "n".into(),
                ping_interval_ms: 25000,
            },
        ];
        for codec in [Codec::Json, Codec::MsgPack] {
            for f in &frames {
                let bytes = codec.encode(f);
                assert_eq!(&codec.decode_server(&bytes).unwrap(), f, "{codec:?}");
            }
        }
        let json = String::from_utf8(Codec::Json.encode(&frames[1]).to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"op":"error","code":"limit","message":"too many"}"#
        );
    }

    #[test]
    fn client_frames_roundtrip() {
        let frames = [
            ClientFrame::Sub {
                id: Some(Id::Num(1)),
                topic: "a/+".into(),
                snapshot: true,
                since: vec![(
                    "a/b".into(),
                    Position {
                        epoch: "E".into(),
                        seq: 3,
                    },
                )],
            },
            ClientFrame::Unsub {
                id: None,
                topic: "a/+".into(),
            },
            ClientFrame::Pub {
                id: Some(Id::Num(2)),
                topic: "a/b".into(),
                data: Bytes::from_static(b"[1,2]"),
            },
            ClientFrame::Ping {
                id: Some(Id::Num(3)),
            },
        ];
        for codec in [Codec::Json, Codec::MsgPack] {
            for f in &frames {
                assert_eq!(
                    &codec.decode(&codec.encode_client(f)).unwrap(),
                    f,
                    "{codec:?}"
                );
            }
        }
    }
}
