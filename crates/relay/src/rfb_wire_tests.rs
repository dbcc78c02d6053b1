//! The framing parser on hand-built byte sequences.

use super::*;

fn rect(x: u16, y: u16, w: u16, h: u16, encoding: i32) -> Vec<u8> {
    let mut v = Vec::new();
    for n in [x, y, w, h] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v.extend_from_slice(&encoding.to_be_bytes());
    v
}

fn update(rects: u16) -> Vec<u8> {
    let mut v = vec![0, 0];
    v.extend_from_slice(&rects.to_be_bytes());
    v
}

/// Feeds `bytes` whole, then one byte at a time, then in chunks of 7; all must agree.
fn parse(bytes: &[u8]) -> Result<(Vec<Event>, Framing), String> {
    let mut whole = (Vec::new(), Framing::new());
    whole.1.feed(bytes, &mut whole.0)?;
    for chunk in [1, 7] {
        let (mut events, mut framing) = (Vec::new(), Framing::new());
        for piece in bytes.chunks(chunk) {
            framing.feed(piece, &mut events)?;
        }
        assert_eq!(events, whole.0, "split into chunks of {chunk}");
        assert_eq!(framing.state, whole.1.state);
    }
    Ok(whole)
}

#[test]
fn raw_updates_end_after_their_pixels() {
    let mut b = update(2);
    b.extend(rect(0, 0, 3, 2, RAW));
    b.extend(vec![9u8; 3 * 2 * 4]);
    b.extend(rect(0, 2, 1, 1, RAW));
    b.extend([1, 2, 3, 4]);
    b.extend(update(0)); // an empty update
    b.push(2); // a bell
    let (events, framing) = parse(&b).unwrap();
    assert_eq!(
        events,
        [
            Event::Update {
                pixel_rects: 2,
                pixels: 7
            },
            Event::Update {
                pixel_rects: 0,
                pixels: 0
            }
        ]
    );
    assert_eq!(framing.rects_by_encoding[&RAW], 2);
    assert_eq!(framing.state, State::MessageType);
}

#[test]
fn an_incomplete_update_is_not_reported() {
    let mut b = update(1);
    b.extend(rect(0, 0, 2, 2, RAW));
    b.extend([0u8; 15]); // one byte short
    assert_eq!(parse(&b).unwrap().0, []);
}

#[test]
fn zrle_zlib_and_copyrect_skip_their_data() {
    let mut b = update(3);
    b.extend(rect(0, 0, 64, 64, ZRLE));
    b.extend(5u32.to_be_bytes());
    b.extend([0xaa; 5]);
    b.extend(rect(0, 0, 64, 64, ZLIB));
    b.extend(2u32.to_be_bytes());
    b.extend([0xbb; 2]);
    b.extend(rect(10, 10, 64, 64, COPY_RECT));
    b.extend([0, 1, 0, 2]);
    let (events, framing) = parse(&b).unwrap();
    assert_eq!(
        events,
        [Event::Update {
            pixel_rects: 3,
            pixels: 3 * 64 * 64
        }]
    );
    assert_eq!(framing.rects_by_encoding.len(), 3);
}

#[test]
fn tight_rects_of_every_kind() {
    let mut b = update(7);
    // Fill: one compact pixel.
    b.extend(rect(0, 0, 100, 100, TIGHT));
    b.extend([0x80, 1, 2, 3]);
    // JPEG with a two-byte compact length (200 = 0xc8 → 0xc8 0x01).
    b.extend(rect(0, 0, 100, 100, TIGHT));
    b.extend([0x90, 0xc8, 0x01]);
    b.extend(vec![0xee; 200]);
    // Basic, copy filter, compressed, three-byte length (0x4000 → 0x80 0x80 0x01).
    b.extend(rect(0, 0, 100, 100, TIGHT));
    b.extend([0x00, 0x80, 0x80, 0x01]);
    b.extend(vec![0xdd; 0x4000]);
    // Basic, explicit palette filter with 2 colours: 1 bit per pixel, rows padded.
    // 3x2 pixels → 1 byte per row → 2 bytes < 12: sent uncompressed, no length.
    b.extend(rect(0, 0, 3, 2, TIGHT));
    b.extend([0x40, 1, 1]);
    b.extend([1, 1, 1, 2, 2, 2]); // the palette
    b.extend([0b1010_0000, 0b0100_0000]);
    // Palette of 4 colours on 10x10: 100 bytes, compressed to 7.
    b.extend(rect(0, 0, 10, 10, TIGHT));
    b.extend([0x50, 1, 3]);
    b.extend([0u8; 12]);
    b.extend([7]);
    b.extend([0u8; 7]);
    // Gradient filter on 2x1: 6 bytes < 12, raw.
    b.extend(rect(0, 0, 2, 1, TIGHT));
    b.extend([0x40, 2]);
    b.extend([0u8; 6]);
    // PNG (TightPNG) with a one-byte length.
    b.extend(rect(0, 0, 8, 8, TIGHT_PNG));
    b.extend([0xa0, 3, 1, 2, 3]);
    let (events, framing) = parse(&b).unwrap();
    assert_eq!(
        events,
        [Event::Update {
            pixel_rects: 7,
            pixels: 3 * 100 * 100 + 6 + 100 + 2 + 64
        }]
    );
    assert_eq!(framing.rects_by_encoding[&TIGHT], 6);
    assert_eq!(framing.state, State::MessageType);
}

#[test]
fn a_bad_tight_control_byte_is_an_error() {
    let mut b = update(1);
    b.extend(rect(0, 0, 1, 1, TIGHT));
    b.push(0xb0);
    assert!(parse(&b).unwrap_err().contains("Tight"));
}

#[test]
fn hextile_tiles_with_and_without_subrects() {
    // 20x17: four tiles (16x16, 4x16, 16x1, 4x1).
    let mut b = update(1);
    b.extend(rect(0, 0, 20, 17, HEXTILE));
    b.push(1); // raw tile 16x16
    b.extend(vec![0u8; 16 * 16 * 4]);
    b.extend([2 | 4 | 8 | 16, 1, 1, 1, 1, 2, 2, 2, 2, 2]); // bg, fg, 2 coloured subrects
    b.extend([0u8; 2 * 6]);
    b.extend([8, 3]); // 3 plain subrects
    b.extend([0u8; 3 * 2]);
    b.push(0); // nothing: same background
    b.extend(update(0));
    let (events, _) = parse(&b).unwrap();
    assert_eq!(
        events,
        [
            Event::Update {
                pixel_rects: 1,
                pixels: 20 * 17
            },
            Event::Update {
                pixel_rects: 0,
                pixels: 0
            }
        ]
    );
}

#[test]
fn rre_and_pseudo_encodings() {
    let mut b = update(6);
    b.extend(rect(0, 0, 10, 10, RRE));
    b.extend(2u32.to_be_bytes());
    b.extend([0u8; 4 + 2 * 12]);
    b.extend(rect(1, 1, 9, 2, CURSOR));
    b.extend(vec![0u8; 9 * 2 * 4 + 2 * 2]);
    b.extend(rect(0, 0, 2, 2, VMWARE_CURSOR));
    b.extend([1, 0]);
    b.extend([0u8; 16]);
    b.extend(rect(0, 0, 1024, 768, DESKTOP_SIZE));
    b.extend(rect(0, 0, 800, 600, EXTENDED_DESKTOP_SIZE));
    b.extend([1, 0, 0, 0]);
    b.extend([0u8; 16]);
    b.extend(rect(0, 0, 0, 0, DESKTOP_NAME));
    b.extend(3u32.to_be_bytes());
    b.extend(*b"abc");
    b.extend(update(2));
    b.extend(rect(0, 0, 0, 0, QEMU_EXTENDED_KEY));
    b.extend(rect(0, 0, 0, 0, QEMU_LED));
    b.push(1);
    let (events, _) = parse(&b).unwrap();
    assert_eq!(
        events,
        [
            Event::Resize {
                width: 1024,
                height: 768
            },
            Event::Resize {
                width: 800,
                height: 600
            },
            Event::Update {
                pixel_rects: 1,
                pixels: 100
            },
            Event::Update {
                pixel_rects: 0,
                pixels: 0
            }
        ]
    );
}

#[test]
fn last_rect_ends_an_update_of_unknown_length() {
    let mut b = update(0xffff);
    b.extend(rect(0, 0, 1, 1, RAW));
    b.extend([0u8; 4]);
    b.extend(rect(0, 0, 0, 0, LAST_RECT));
    b.push(2);
    let (events, framing) = parse(&b).unwrap();
    assert_eq!(
        events,
        [Event::Update {
            pixel_rects: 1,
            pixels: 1
        }]
    );
    assert_eq!(framing.state, State::MessageType);
}

#[test]
fn other_server_messages() {
    let mut b = vec![150]; // EndOfContinuousUpdates
    b.extend([248, 0, 0, 0, 0x80, 0, 0, 3, 3, b'a', b'b', b'c']); // fence request
    b.extend([1, 0, 0, 0, 0, 2]); // colour map: 2 entries
    b.extend([0u8; 12]);
    b.extend([3, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']); // cut text
    b.extend([3, 0, 0, 0]); // extended clipboard: length -4
    b.extend((-4i32).to_be_bytes());
    b.extend([0u8; 4]);
    b.extend([250, 0, 1, 1]); // XVP init
    let (events, _) = parse(&b).unwrap();
    assert_eq!(
        events,
        [
            Event::EndOfContinuousUpdates,
            Event::Fence {
                flags: 0x8000_0003,
                payload: b"abc".to_vec()
            }
        ]
    );
}

#[test]
fn unknown_messages_and_encodings_are_errors() {
    assert!(parse(&[99]).is_err());
    let mut b = update(1);
    b.extend(rect(0, 0, 1, 1, 12345));
    assert!(parse(&b).unwrap_err().contains("12345"));
}

#[test]
fn client_messages_are_well_formed() {
    assert_eq!(
        set_encodings(&[TIGHT, -1]),
        [2, 0, 0, 2, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(
        update_request(true, 1280, 720),
        [3, 1, 0, 0, 0, 0, 5, 0, 2, 208]
    );
    assert_eq!(
        fence_response(0x8000_0007, b"x"),
        [248, 0, 0, 0, 0, 0, 0, 3, 1, b'x']
    );
    assert_eq!(enable_continuous_updates(16, 8)[..2], [150, 1]);
}
