//! Server frames as the client crate decodes them (`Codec::decode_server`),
//! in both subprotocols: a client must survive whatever a (possibly hostile
//! or buggy) server sends. Never panics; a decoded frame survives `encode` +
//! `decode_server` in both codecs.
//!
//! Every input is decoded with both codecs (a JSON frame is not a valid
//! MessagePack map and vice versa, so each seed exercises one of them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate_proto::Codec;

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::Json, Codec::MsgPack] {
        pulsegate_fuzz::check_server_frame(codec, data);
    }
});
