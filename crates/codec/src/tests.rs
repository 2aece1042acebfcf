use super::*;

fn varint_bytes(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, n);
    out
}

const EDGES: [u64; 10] = [
    0,
    1,
    0x7F,
    0x80,
    0x3FFF,
    0x4000,
    u32::MAX as u64,
    1 << 56,
    u64::MAX - 1,
    u64::MAX,
];

#[test]
fn varints_round_trip_at_every_width_and_take_the_fewest_bytes() {
    for n in EDGES {
        let bytes = varint_bytes(n);
        let width = (64 - n.leading_zeros()).div_ceil(7).max(1) as usize;
        assert_eq!(bytes.len(), width, "{n:#x}");
        let mut r = Reader::new(&bytes);
        assert_eq!(r.varint("n"), Ok(n));
        r.finish().expect("nothing left over");
        let mut s = StreamReader::new(&bytes[..]);
        assert_eq!(s.varint("n").expect("stream"), n);
    }
}

#[test]
fn a_varint_beyond_64_bits_is_refused_by_both_readers() {
    // Ten bytes whose last carries more than the single top bit.
    let mut long = vec![0xFF; 9];
    long.push(0x02);
    assert_eq!(
        Reader::new(&long).varint("n"),
        Err(DecodeError::VarintOverflow("n"))
    );
    assert!(matches!(
        StreamReader::new(&long[..]).varint("n"),
        Err(StreamError::Decode(DecodeError::VarintOverflow("n")))
    ));
    // Eleven bytes, all continuing.
    let longer = vec![0x80; 11];
    assert_eq!(
        Reader::new(&longer).varint("n"),
        Err(DecodeError::VarintOverflow("n"))
    );
}

#[test]
fn every_cut_of_an_encoding_is_truncated_never_a_panic() {
    let mut out = Vec::new();
    out.push(7u8);
    put_varint(&mut out, u64::MAX);
    put_bytes(&mut out, b"hello");
    out.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    let read = |input: &[u8]| -> Result<(), DecodeError> {
        let mut r = Reader::with_format(input, "a test", 7)?;
        r.varint("n")?;
        r.bytes("a string")?;
        r.u32_le("a checksum")?;
        r.finish()
    };
    assert_eq!(read(&out), Ok(()));
    assert_eq!(read(&[]), Err(DecodeError::Empty("a test")));
    for cut in 1..out.len() {
        // Inside the string its length claims more than is left.
        assert!(
            matches!(
                read(&out[..cut]),
                Err(DecodeError::Truncated(_) | DecodeError::LengthTooLong { .. })
            ),
            "cut at {cut}: {:?}",
            read(&out[..cut])
        );
    }
    let mut longer = out.clone();
    longer.push(0);
    assert_eq!(read(&longer), Err(DecodeError::TrailingBytes(1)));
    let mut other = out;
    other[0] = 8;
    assert_eq!(
        read(&other),
        Err(DecodeError::UnknownFormat {
            what: "a test",
            found: 8,
            expected: 7
        })
    );
}

#[test]
fn a_forged_count_or_length_is_refused_before_anything_is_taken() {
    let mut out = Vec::new();
    put_varint(&mut out, 1 << 40);
    out.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        Reader::new(&out).count("items", 1),
        Err(DecodeError::LengthTooLong {
            what: "items",
            claimed: 1 << 40,
            left: 3
        })
    );
    assert!(matches!(
        Reader::new(&out).bytes("a string"),
        Err(DecodeError::LengthTooLong { .. })
    ));
    // Items of two bytes each: three bytes hold one, not two.
    let two = [2u8, 0, 0, 0];
    assert!(Reader::new(&two[..2]).count("pairs", 2).is_err());
    assert_eq!(Reader::new(&two).count("pairs", 1), Ok(2));
    assert!(
        Reader::new(&[3u8, 0, 0, 0, 0, 0])
            .count("pairs", 2)
            .is_err()
    );
    assert_eq!(Reader::new(&[2u8, 0, 0, 0, 0]).count("pairs", 2), Ok(2));
    // The stream reader never allocates for bytes that do not arrive.
    let err = StreamReader::new(&out[..]).bytes("a string", u64::MAX);
    assert!(matches!(
        err,
        Err(StreamError::Decode(DecodeError::Truncated("a string")))
    ));
    let err = StreamReader::new(&out[..]).bytes("a string", 10);
    assert!(matches!(
        err,
        Err(StreamError::Decode(DecodeError::TooLarge { .. }))
    ));
}

#[test]
fn fixed_width_fields_flags_and_limits() {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0102u16.to_be_bytes());
    out.extend_from_slice(&(-5i64).to_le_bytes());
    out.extend_from_slice(&9u64.to_be_bytes());
    out.extend_from_slice(&11u64.to_le_bytes());
    out.extend_from_slice(&[1, 0, 2]);
    put_varint(&mut out, 300);
    put_bytes(&mut out, "héllo".as_bytes());
    put_bytes(&mut out, &[0xFF, 0xFE]);
    let mut r = Reader::new(&out);
    assert_eq!(r.u16_be("a"), Ok(0x0102));
    assert_eq!(r.i64_le("b"), Ok(-5));
    assert_eq!(r.u64_be("c"), Ok(9));
    assert_eq!(r.u64_le("d"), Ok(11));
    assert_eq!(r.bool("e"), Ok(true));
    assert_eq!(r.bool("f"), Ok(false));
    assert_eq!(
        r.bool("g"),
        Err(DecodeError::UnknownTag { what: "g", tag: 2 })
    );
    assert_eq!(
        r.clone().varint_max("h", 299),
        Err(DecodeError::TooLarge {
            what: "h",
            value: 300,
            max: 299
        })
    );
    assert_eq!(r.varint_max("h", 300), Ok(300));
    assert_eq!(r.utf8("i"), Ok("héllo"));
    assert_eq!(r.clone().utf8("j"), Err(DecodeError::InvalidUtf8("j")));
    assert_eq!(r.bytes("j"), Ok(&[0xFF, 0xFE][..]));
    assert_eq!(r.left(), 0);
}

#[test]
fn garbage_never_panics() {
    // A fixed xorshift: every byte pattern of a few lengths, no panics.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 24) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
        let mut r = Reader::new(&bytes);
        let _ = r.varint("a");
        let _ = r.bytes("b");
        let _ = r.count("c", 3);
        let _ = r.utf8("d");
        let mut s = StreamReader::new(&bytes[..]);
        let _ = s.varint("a");
        let _ = s.bytes("b", 16);
    }
}

/// Prints the checksum's throughput; a measurement, not a test:
/// `cargo test --release -p codec checksum_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn checksum_throughput() {
    for (len, rounds) in [(100usize, 2_000_000u32), (4096, 100_000), (1 << 20, 400)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let started = std::time::Instant::now();
        let mut sum = 0u32;
        for _ in 0..rounds {
            sum = sum.wrapping_add(crc32c(std::hint::black_box(&data)));
        }
        let took = started.elapsed().as_secs_f64();
        let bytes = len as f64 * f64::from(rounds);
        eprintln!(
            "{len:>8} B: {:>7.2} GB/s, {:>6.1} ns a call ({sum:08x})",
            bytes / took / 1e9,
            took * 1e9 / f64::from(rounds)
        );
    }
}
