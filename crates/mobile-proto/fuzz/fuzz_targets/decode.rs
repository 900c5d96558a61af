//! Fuzzes the decoder: any bytes, as either side would receive them, in either encoding and
//! frame kind, must decode or fail with a `DecodeError` — never panic, hang or overflow the
//! stack — and whatever decodes must re-encode to something that decodes again (to the same
//! message in CBOR; JSON floats are best-effort in the last bit).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mobile_proto::{Encoding, FrameKind, diag};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for enc in Encoding::ALL {
        for kind in [FrameKind::Text, FrameKind::Binary] {
            if let Ok(msg) = enc.decode_client(kind, data, MAX) {
                let frame = enc.encode_client(&msg);
                let back = enc.decode_client(frame.kind(), frame.as_bytes(), MAX);
                match enc {
                    Encoding::Cbor => assert_eq!(back.as_ref(), Ok(&msg)),
                    Encoding::Json => assert!(back.is_ok()),
                }
            }
            if let Ok(msg) = enc.decode_server(kind, data, MAX) {
                let frame = enc.encode_server(&msg);
                let back = enc.decode_server(frame.kind(), frame.as_bytes(), MAX);
                match enc {
                    Encoding::Cbor => assert_eq!(back.as_ref(), Ok(&msg)),
                    Encoding::Json => assert!(back.is_ok()),
                }
            }
        }
    }
    let _ = diag::diagnostic_pretty(data);
});
