//! Golden vectors (bytes written out by hand from the layout in the module doc, not produced
//! by the encoder), every malformation, and property tests: random or mutated bytes never
//! panic, whatever decodes is canonical, and encode → decode is the identity.
use proptest::prelude::{prop_assert_eq, proptest, ProptestConfig, Strategy as Gen};
use proptest::test_runner::TestCaseError;

use super::*;

fn origin(name: &str) -> Origin {
    Origin::new(name).unwrap()
}

/// Update, incarnation 0x0102030405060708: one advert (60 s left) of gw-a's record 7 on a
/// topology of digest 0x1122334455667788, reporting link 1 up (80 ms RTT, 1.5 ms jitter,
/// 0.12 % loss, 50 % utilisation) and link 3 down.
const UPDATE: [u8; 72] = [
    0x01, 0x01, 0x00, 0x01, // version 1, update, no trailer, 1 entry
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // incarnation
    0x00, 0x00, 0xea, 0x60, // lifetime 60,000 ms
    0x04, b'g', b'w', b'-', b'a', // origin
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // seq 7
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // digest
    0x02, // two links
    0x00, 0x00, 0x00, 0x01, // link 1
    0x3c, // up, rtt + jitter + loss + utilisation present
    0x00, 0x01, 0x38, 0x80, // rtt 80,000 us
    0x00, 0x00, 0x05, 0xdc, // jitter 1,500 us
    0x00, 0x0c, // loss 12/10,000
    0x13, 0x88, // utilisation 5,000/10,000
    0x00, 0x00, 0x00, 0x03, // link 3
    0x02, // down, no figures
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Ack, incarnation 1, of gw-a's record 7 and gw-b's record 2^56.
const ACK: [u8; 38] = [
    0x01, 0x02, 0x00, 0x02, // version 1, ack, no trailer, 2 entries
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // incarnation
    0x04, b'g', b'w', b'-', b'a', // origin
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // seq 7
    0x04, b'g', b'w', b'-', b'b', // origin
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq 2^56
];

fn update_message() -> Message {
    let record = Record::new(
        origin("gw-a"),
        7,
        TopologyDigest(0x1122_3344_5566_7788),
        vec![
            LinkReport {
                link: LinkId(1),
                health: RoutingHealth::Up,
                figures: Figures {
                    rtt_us: Some(80_000),
                    jitter_us: Some(1_500),
                    loss: Some(12),
                    utilisation: Some(5_000),
                },
            },
            LinkReport {
                link: LinkId(3),
                health: RoutingHealth::Down,
                figures: Figures::default(),
            },
        ],
    )
    .unwrap();
    let advert = Advert {
        lifetime_ms: 60_000,
        record: Arc::new(record),
    };
    Message::updates(0x0102_0304_0506_0708, vec![advert]).remove(0)
}

fn ack_message() -> Message {
    let keys = vec![
        RecordKey {
            origin: origin("gw-a"),
            seq: 7,
        },
        RecordKey {
            origin: origin("gw-b"),
            seq: 1 << 56,
        },
    ];
    Message::acks(1, keys).remove(0)
}

#[test]
fn golden_update() {
    assert_eq!(update_message().encode(), UPDATE);
    assert_eq!(Message::decode(&UPDATE), Ok(update_message()));
}

#[test]
fn golden_ack() {
    assert_eq!(ack_message().encode(), ACK);
    assert_eq!(Message::decode(&ACK), Ok(ack_message()));
}

#[test]
fn an_authentication_trailer_is_skipped() {
    let mut bytes = ACK.to_vec();
    bytes[2] = 4;
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(Message::decode(&bytes), Ok(ack_message()));
    bytes[2] = 255;
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::Truncated {
            what: "authentication trailer",
            ..
        })
    ));
}

#[test]
fn every_truncation_is_reported() {
    for golden in [&UPDATE[..], &ACK[..]] {
        for len in 0..golden.len() {
            assert!(
                matches!(
                    Message::decode(&golden[..len]),
                    Err(WireError::Truncated { .. })
                ),
                "{len} bytes: {:?}",
                Message::decode(&golden[..len])
            );
        }
    }
}

/// `UPDATE` with `edit` applied, decoded.
fn decode_edited(edit: impl FnOnce(&mut Vec<u8>)) -> Result<Message, WireError> {
    let mut bytes = UPDATE.to_vec();
    edit(&mut bytes);
    Message::decode(&bytes)
}

/// Offset of link 1's flags in `UPDATE`, and of link 3's.
const FLAGS_1: usize = 42;
const FLAGS_3: usize = 59;

#[test]
fn every_malformation_has_its_error() {
    use WireError::*;
    assert_eq!(decode_edited(|b| b[0] = 2), Err(Version(2)));
    assert_eq!(decode_edited(|b| b[1] = 3), Err(Kind(3)));
    assert_eq!(decode_edited(|b| b[3] = 0), Err(Empty));
    assert_eq!(decode_edited(|b| b.push(0)), Err(Trailing(1)));
    assert_eq!(
        decode_edited(|b| b[16] = 0),
        Err(Record(RecordError::OriginLength(0)))
    );
    assert_eq!(
        decode_edited(|b| b[16] = 65),
        Err(Record(RecordError::OriginLength(65)))
    );
    assert_eq!(decode_edited(|b| b[17] = 0xff), Err(OriginUtf8));
    assert_eq!(
        decode_edited(|b| b[37] = 65),
        Err(Record(RecordError::TooManyLinks(65)))
    );
    assert_eq!(decode_edited(|b| b[FLAGS_3] = 0x03), Err(Health(LinkId(3))));
    assert_eq!(
        decode_edited(|b| b[FLAGS_3] = 0x42),
        Err(Flags {
            link: LinkId(3),
            flags: 0x42
        })
    );
    assert_eq!(
        decode_edited(|b| b[FLAGS_3 + 4] = 1),
        Err(NonCanonical {
            link: LinkId(3),
            field: "rtt"
        })
    );
    assert_eq!(
        decode_edited(|b| b[FLAGS_1] &= !HAS_UTILISATION),
        Err(NonCanonical {
            link: LinkId(1),
            field: "utilisation"
        })
    );
    // Link 3 renumbered 1: listed twice.
    assert_eq!(
        decode_edited(|b| b[FLAGS_3 - 1] = 1),
        Err(Record(RecordError::LinkOrder(LinkId(1))))
    );
    // Loss 10,000/10,000 on link 1.
    assert_eq!(
        decode_edited(|b| b[51..53].copy_from_slice(&10_000u16.to_be_bytes())),
        Err(Record(RecordError::Loss {
            link: LinkId(1),
            value: 10_000
        }))
    );
    assert_eq!(
        decode_edited(|b| b.resize(MAX_MESSAGE_LEN + 1, 0)),
        Err(TooLong(MAX_MESSAGE_LEN + 1))
    );
}

#[test]
fn the_largest_record_fits_one_message_and_many_are_split() {
    let links = (0..MAX_RECORD_LINKS as u32)
        .map(|l| LinkReport {
            link: LinkId(l),
            health: RoutingHealth::Degraded,
            figures: Figures::quantise(Some(1.0), Some(1.0), Some(0.5), Some(1.0)),
        })
        .collect();
    let name = "g".repeat(MAX_ORIGIN_LEN);
    let record = Arc::new(Record::new(origin(&name), u64::MAX, TopologyDigest(1), links).unwrap());
    let advert = Advert {
        lifetime_ms: u32::MAX,
        record,
    };
    let messages = Message::updates(9, vec![advert.clone(); 3]);
    assert_eq!(messages.len(), 3, "one of the largest per message");
    for m in &messages {
        let bytes = m.encode();
        assert!(bytes.len() <= MAX_MESSAGE_LEN, "{}", bytes.len());
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(m));
    }
    let keys: Vec<RecordKey> = (0..600)
        .map(|seq| RecordKey {
            origin: origin("gw-a"),
            seq,
        })
        .collect();
    let messages = Message::acks(9, keys.clone());
    assert!(messages.iter().all(|m| m.encode().len() <= MAX_MESSAGE_LEN));
    let back: Vec<RecordKey> = messages
        .into_iter()
        .flat_map(|m| match m.into_body() {
            Body::Ack(k) => k,
            Body::Update(_) => unreachable!(),
        })
        .collect();
    assert_eq!(back, keys, "split in order, nothing lost");
}

fn figures() -> impl Gen<Value = Figures> {
    use proptest::option::of;
    (
        of(proptest::num::u32::ANY),
        of(proptest::num::u32::ANY),
        of(0u16..10_000),
        of(0u16..=10_000),
    )
        .prop_map(|(rtt_us, jitter_us, loss, utilisation)| Figures {
            rtt_us,
            jitter_us,
            loss,
            utilisation,
        })
}

fn record() -> impl Gen<Value = Record> {
    let health = proptest::sample::select(vec![
        RoutingHealth::Up,
        RoutingHealth::Degraded,
        RoutingHealth::Down,
    ]);
    (
        "[a-z0-9é-]{1,20}",
        proptest::num::u64::ANY,
        proptest::num::u64::ANY,
        proptest::collection::btree_map(0u32..1024, (health, figures()), 0..=MAX_RECORD_LINKS),
    )
        .prop_map(|(name, seq, digest, links)| {
            let links = links
                .into_iter()
                .map(|(link, (health, figures))| LinkReport {
                    link: LinkId(link),
                    health,
                    figures,
                })
                .collect();
            Record::new(origin(&name), seq, TopologyDigest(digest), links).unwrap()
        })
}

fn adverts() -> impl Gen<Value = Vec<Advert>> {
    let advert = (proptest::num::u32::ANY, record()).prop_map(|(lifetime_ms, r)| Advert {
        lifetime_ms,
        record: Arc::new(r),
    });
    proptest::collection::vec(advert, 1..6)
}

fn keys() -> impl Gen<Value = Vec<RecordKey>> {
    let key = ("[a-z-]{1,64}", proptest::num::u64::ANY).prop_map(|(name, seq)| RecordKey {
        origin: origin(&name),
        seq,
    });
    proptest::collection::vec(key, 1..40)
}

/// Whatever decodes re-encodes to the same bytes (trailer aside): decoding accepts only the
/// canonical form, so two gateways never disagree on what a message says.
fn check_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = Message::decode(bytes) {
        if bytes[2] == 0 {
            prop_assert_eq!(m.encode(), bytes.to_vec());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1_600)) {
        check_canonical(&bytes)?;
    }

    #[test]
    fn mutated_messages_never_panic(
        golden in proptest::bool::ANY,
        edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..4),
        cut in proptest::option::of(proptest::num::usize::ANY),
    ) {
        let mut bytes = if golden { UPDATE.to_vec() } else { ACK.to_vec() };
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        check_canonical(&bytes)?;
    }

    #[test]
    fn updates_round_trip(incarnation in proptest::num::u64::ANY, adverts in adverts()) {
        for m in Message::updates(incarnation, adverts) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn acks_round_trip(incarnation in proptest::num::u64::ANY, keys in keys()) {
        for m in Message::acks(incarnation, keys) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }
}

/// On a keyed link: the trailer is the MAC of every byte before it, the message still
/// decodes, and any change to the message, the MAC or the key, or a missing trailer, makes
/// it unauthentic.
#[test]
fn signed_messages_verify_only_unchanged_and_under_their_key() {
    let key = ProbeKey { k0: 3, k1: 4 };
    let message = Message::decode(&UPDATE).unwrap();
    let signed = message.encode_signed(Some(&key));
    assert_eq!(signed.len(), UPDATE.len() + MAC_LEN);
    assert_eq!(signed[2], MAC_LEN as u8, "auth_len");
    assert_eq!(&signed[3..UPDATE.len()], &UPDATE[3..]);
    assert!(authentic(&signed, &key));
    assert_eq!(Message::decode(&signed).unwrap(), message);
    assert_eq!(message.encode_signed(None), UPDATE);
    assert!(!authentic(&UPDATE, &key), "no trailer");
    assert!(
        !authentic(&signed, &ProbeKey { k0: 3, k1: 5 }),
        "another key"
    );
    for i in 0..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 0x01;
        assert!(!authentic(&bad, &key), "byte {i} changed");
    }
    assert!(!authentic(&signed[..signed.len() - 1], &key), "cut short");
    assert!(!authentic(&signed[..4], &key), "a header fragment");
}
