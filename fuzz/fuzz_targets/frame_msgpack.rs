//! Client frames in the MessagePack subprotocol (`pulsegate.v1.msgpack`):
//! what the server decodes from every binary frame. Never panics; a decoded
//! frame survives `encode_client` + `decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate_proto::Codec;

fuzz_target!(|data: &[u8]| {
    pulsegate_fuzz::check_client_frame(Codec::MsgPack, data);
});
