//! Arbitrary bytes into the RDB parser (as a file, with and without chunking) and into the
//! DUMP payload decoder: any result is fine, a panic or a hang is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_relay::rdb::{decode_dump_payload, ParseOptions, RdbParser, crc64};

fuzz_target!(|data: &[u8]| {
    let _ = RdbParser::new(data, ParseOptions { verify_checksum: false, capture_raw: true, ..Default::default() })
        .run(|_| Ok(()));
    let _ = RdbParser::new(
        data,
        ParseOptions { verify_checksum: false, big_value_bytes: 64, chunk_bytes: 16, chunk_elements: 2, capture_raw: true },
    )
    .run(|_| Ok(()));
    let _ = decode_dump_payload(data);
    // Also as a DUMP body with a valid footer, so the value decoders see the bytes.
    if !data.is_empty() {
        let mut p = data.to_vec();
        p.extend_from_slice(&12u16.to_le_bytes());
        let crc = crc64(&p);
        p.extend_from_slice(&crc.to_le_bytes());
        let _ = decode_dump_payload(&p);
    }
});
