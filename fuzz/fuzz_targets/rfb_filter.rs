//! Arbitrary client bytes through the RFB filter, with both policies.
//!
//! The first byte picks the chunk size (1 to 255 bytes), so one input also exercises how the
//! stream is split. Half of the inputs get a valid handshake in front, so the fuzzer
//! spends its time on messages rather than on guessing "RFB 003.008\n".
//!
//! Checked on every input: no panic; the output is the same whether the input is fed
//! whole or in chunks; a view-only output, read again as an interactive client, is valid
//! RFB without a single input message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use livesession_relay::{FilterError, MessageKind, Policy, RfbClientFilter};

const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x01";

fn run(policy: Policy, input: &[u8], chunk: usize) -> (Result<(), FilterError>, Vec<u8>) {
    let mut filter = RfbClientFilter::new(policy);
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        if let Err(e) = filter.feed(piece, &mut out) {
            return (Err(e), out);
        }
    }
    (Ok(()), out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x7f) * 2 + 1;
    let input: Vec<u8> = if first & 0x80 != 0 {
        [HANDSHAKE, rest].concat()
    } else {
        rest.to_vec()
    };
    for policy in [Policy::Interactive, Policy::ViewOnly] {
        let (whole_result, whole) = run(policy, &input, input.len().max(1));
        let (chunked_result, chunked) = run(policy, &input, chunk);
        assert_eq!(whole_result, chunked_result, "{policy:?}");
        assert_eq!(whole, chunked, "{policy:?}");
        assert!(whole.len() <= input.len());
        if policy == Policy::ViewOnly {
            let mut reader = RfbClientFilter::new(Policy::Interactive);
            let mut echo = Vec::new();
            reader
                .feed(&whole, &mut echo)
                .expect("view-only output is valid RFB");
            assert_eq!(echo, whole);
            for kind in [
                MessageKind::KeyEvent,
                MessageKind::PointerEvent,
                MessageKind::ClientCutText,
                MessageKind::Xvp,
                MessageKind::SetDesktopSize,
                MessageKind::QemuKeyEvent,
            ] {
                assert_eq!(reader.stats().forwarded(kind), 0, "{kind:?} got through");
            }
        }
    }
});
