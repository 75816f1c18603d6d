//! The flooding protocol's datagrams: records (updates) and their acknowledgements, sent over
//! the links themselves in small UDP messages.
//!
//! Version 1, all numbers big-endian:
//!
//! ```text
//! header (12 bytes)
//!   0  version       u8    1
//!   1  kind          u8    1 = update, 2 = ack
//!   2  auth_len      u8    bytes of the authentication trailer at the end (0 in version 1)
//!   3  entries       u8    1..=255
//!   4  incarnation   u64   the sender's, new at each start (a restart shows without a link going down)
//! update entry (an advert)
//!      lifetime_ms   u32   the record's remaining lifetime at the sender
//!      origin_len    u8    1..=64, then the origin's name (UTF-8)
//!      seq           u64
//!      digest        u64   topology digest of the origin
//!      links         u8    0..=64, then one report per link in increasing link id order:
//!        link_id u32, flags u8, rtt_us u32, jitter_us u32, loss u16, utilisation u16
//!        flags: bits 0-1 health (0 up, 1 degraded, 2 down), bit 2 rtt, 3 jitter, 4 loss,
//!        5 utilisation present (an absent figure is written 0), bits 6-7 zero
//! ack entry
//!      origin_len u8, origin, seq u64
//! authentication trailer: auth_len bytes
//! ```
//!
//! The trailer is the keyed MAC of the link the message crosses, where the link has a shared
//! key (`auth_key_file`): [`MAC_LEN`] bytes, SipHash-2-4 under that key of every byte before
//! it (header included, so `auth_len` is covered), big-endian. Without a key none is sent and
//! one received is skipped; with one, a message without a valid MAC is dropped
//! ([`authentic`]). Lifetimes travel outside the records (as IS-IS's remaining
//! lifetime does) because each hop rewrites them; a record's content never changes on the way.
//!
//! Decoding treats its input as hostile: every length is checked before it is used, every
//! malformation has its own [`WireError`], and only the canonical encoding of a message is
//! accepted (decode then encode gives the same bytes).
use std::sync::Arc;

use dwcp_common::probe::{siphash24_bytes, ProbeKey};
use thiserror::Error;

use crate::topology::{LinkId, RoutingHealth};

use super::digest::TopologyDigest;
use super::record::{
    Figures, LinkReport, Origin, Record, RecordError, RecordKey, MAX_ORIGIN_LEN, MAX_RECORD_LINKS,
};

pub const VERSION: u8 = 1;
/// The UDP port gateways exchange these messages on by default (`[link_state] port`): next to
/// VXLAN's 4789 and the probes' 4790, taken by nothing of dwcp's.
pub const LINK_STATE_PORT: u16 = 4792;
/// Largest message built or accepted, trailer aside: with a 32-byte MAC and IPv6 + UDP
/// headers it still fits a 1,500-byte MTU.
pub const MAX_MESSAGE_LEN: usize = 1_400;
const HEADER_LEN: usize = 12;
/// Bytes of the authentication trailer on a link with a shared key.
pub const MAC_LEN: usize = 8;
const MAX_ENTRIES: usize = u8::MAX as usize;
const REPORT_LEN: usize = 17;

const KIND_UPDATE: u8 = 1;
const KIND_ACK: u8 = 2;

const HEALTH_MASK: u8 = 0b11;
const HAS_RTT: u8 = 1 << 2;
const HAS_JITTER: u8 = 1 << 3;
const HAS_LOSS: u8 = 1 << 4;
const HAS_UTILISATION: u8 = 1 << 5;
const RESERVED: u8 = 0b1100_0000;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated: {what} needs {needed} bytes at offset {at}, the message has {len}")]
    Truncated {
        what: &'static str,
        at: usize,
        needed: usize,
        len: usize,
    },
    #[error("version {0}: this gateway speaks version {VERSION}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("message of {0} bytes (trailer aside): at most {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    #[error("message without entries")]
    Empty,
    #[error("gateway name is not UTF-8")]
    OriginUtf8,
    #[error("link {0}: health code 3 is not defined")]
    Health(LinkId),
    #[error("link {link}: reserved flag bits set ({flags:#04x})")]
    Flags { link: LinkId, flags: u8 },
    #[error("link {link}: {field} is flagged absent but not zero")]
    NonCanonical { link: LinkId, field: &'static str },
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A record as sent to a neighbour: with its remaining lifetime at the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub lifetime_ms: u32,
    pub record: Arc<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Update(Vec<Advert>),
    Ack(Vec<RecordKey>),
}

/// One datagram. Built by [`Message::updates`] and [`Message::acks`], which split their
/// entries so every message fits [`MAX_MESSAGE_LEN`], or by [`Message::decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    incarnation: u64,
    body: Body,
}

/// Whether `datagram` carries a valid MAC under `key` in its trailer (see the module
/// documentation): checked before anything of it is decoded.
pub fn authentic(datagram: &[u8], key: &ProbeKey) -> bool {
    let Some(signed) = datagram.len().checked_sub(MAC_LEN) else {
        return false;
    };
    if signed < HEADER_LEN || datagram[2] as usize != MAC_LEN {
        return false;
    }
    let (body, mac) = datagram.split_at(signed);
    mac == siphash24_bytes(key, body).to_be_bytes()
}

impl Message {
    /// `adverts` in as few messages as they fit.
    pub fn updates(incarnation: u64, adverts: Vec<Advert>) -> Vec<Message> {
        pack(adverts, advert_len)
            .into_iter()
            .map(|chunk| Message {
                incarnation,
                body: Body::Update(chunk),
            })
            .collect()
    }

    /// Acknowledgements of `keys` in as few messages as they fit.
    pub fn acks(incarnation: u64, keys: Vec<RecordKey>) -> Vec<Message> {
        pack(keys, key_len)
            .into_iter()
            .map(|chunk| Message {
                incarnation,
                body: Body::Ack(chunk),
            })
            .collect()
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    pub fn into_body(self) -> Body {
        self.body
    }

    /// The datagram, with the MAC under `key` when the link has one.
    pub fn encode_signed(&self, key: Option<&ProbeKey>) -> Vec<u8> {
        let mut out = self.encode();
        if let Some(key) = key {
            out[2] = MAC_LEN as u8;
            let mac = siphash24_bytes(key, &out);
            out.extend_from_slice(&mac.to_be_bytes());
        }
        out
    }

    /// The datagram, without authentication trailer.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, entries) = match &self.body {
            Body::Update(a) => (KIND_UPDATE, a.len()),
            Body::Ack(k) => (KIND_ACK, k.len()),
        };
        let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
        out.extend_from_slice(&[VERSION, kind, 0, entries as u8]);
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        match &self.body {
            Body::Update(adverts) => {
                for a in adverts {
                    out.extend_from_slice(&a.lifetime_ms.to_be_bytes());
                    put_record(&mut out, &a.record);
                }
            }
            Body::Ack(keys) => {
                for k in keys {
                    put_origin(&mut out, &k.origin);
                    out.extend_from_slice(&k.seq.to_be_bytes());
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut header = Reader { bytes, at: 0 };
        // The version first: another version may lay out the rest differently.
        let version = header.u8("version")?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = header.u8("kind")?;
        if kind != KIND_UPDATE && kind != KIND_ACK {
            return Err(WireError::Kind(kind));
        }
        let auth_len = header.u8("auth_len")? as usize;
        let entries = header.u8("entry count")? as usize;
        let incarnation = header.u64("incarnation")?;
        if auth_len > bytes.len() - HEADER_LEN {
            return Err(WireError::Truncated {
                what: "authentication trailer",
                at: HEADER_LEN,
                needed: auth_len,
                len: bytes.len(),
            });
        }
        let body = &bytes[..bytes.len() - auth_len];
        if body.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong(body.len()));
        }
        if entries == 0 {
            return Err(WireError::Empty);
        }
        let mut r = Reader {
            bytes: body,
            at: HEADER_LEN,
        };
        let body = if kind == KIND_UPDATE {
            let adverts = (0..entries)
                .map(|_| {
                    let lifetime_ms = r.u32("lifetime")?;
                    let record = Arc::new(read_record(&mut r)?);
                    Ok(Advert {
                        lifetime_ms,
                        record,
                    })
                })
                .collect::<Result<_, WireError>>()?;
            Body::Update(adverts)
        } else {
            let keys = (0..entries)
                .map(|_| {
                    let origin = read_origin(&mut r)?;
                    let seq = r.u64("sequence number")?;
                    Ok(RecordKey { origin, seq })
                })
                .collect::<Result<_, WireError>>()?;
            Body::Ack(keys)
        };
        if r.at != r.bytes.len() {
            return Err(WireError::Trailing(r.bytes.len() - r.at));
        }
        Ok(Message { incarnation, body })
    }
}

/// Splits `items` into runs that each fit one message. Every single item fits (origins of at
/// most 64 bytes, records of at most 64 links), so no run is empty.
fn pack<T>(items: Vec<T>, len: fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut size = HEADER_LEN;
    for item in items {
        let n = len(&item);
        if !run.is_empty() && (size + n > MAX_MESSAGE_LEN || run.len() == MAX_ENTRIES) {
            runs.push(std::mem::take(&mut run));
            size = HEADER_LEN;
        }
        size += n;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

fn advert_len(a: &Advert) -> usize {
    4 + 1 + a.record.origin().as_str().len() + 8 + 8 + 1 + REPORT_LEN * a.record.links().len()
}

fn key_len(k: &RecordKey) -> usize {
    1 + k.origin.as_str().len() + 8
}

fn put_origin(out: &mut Vec<u8>, origin: &Origin) {
    out.push(origin.as_str().len() as u8);
    out.extend_from_slice(origin.as_str().as_bytes());
}

fn put_record(out: &mut Vec<u8>, record: &Record) {
    put_origin(out, record.origin());
    out.extend_from_slice(&record.seq().to_be_bytes());
    out.extend_from_slice(&record.digest().0.to_be_bytes());
    out.push(record.links().len() as u8);
    for r in record.links() {
        let f = &r.figures;
        let health = match r.health {
            RoutingHealth::Up => 0,
            RoutingHealth::Degraded => 1,
            RoutingHealth::Down => 2,
        };
        let present = |set: bool, bit: u8| if set { bit } else { 0 };
        let flags = health
            | present(f.rtt_us.is_some(), HAS_RTT)
            | present(f.jitter_us.is_some(), HAS_JITTER)
            | present(f.loss.is_some(), HAS_LOSS)
            | present(f.utilisation.is_some(), HAS_UTILISATION);
        out.extend_from_slice(&r.link.0.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&f.rtt_us.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&f.jitter_us.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&f.loss.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&f.utilisation.unwrap_or(0).to_be_bytes());
    }
}

fn read_origin(r: &mut Reader<'_>) -> Result<Origin, WireError> {
    let len = r.u8("origin length")? as usize;
    if len == 0 || len > MAX_ORIGIN_LEN {
        return Err(RecordError::OriginLength(len).into());
    }
    let name = std::str::from_utf8(r.take(len, "origin")?).map_err(|_| WireError::OriginUtf8)?;
    Ok(Origin::new(name)?)
}

fn read_record(r: &mut Reader<'_>) -> Result<Record, WireError> {
    let origin = read_origin(r)?;
    let seq = r.u64("sequence number")?;
    let digest = TopologyDigest(r.u64("digest")?);
    let count = r.u8("link count")? as usize;
    if count > MAX_RECORD_LINKS {
        return Err(RecordError::TooManyLinks(count).into());
    }
    let links = (0..count)
        .map(|_| read_report(r))
        .collect::<Result<_, _>>()?;
    Ok(Record::new(origin, seq, digest, links)?)
}

fn read_report(r: &mut Reader<'_>) -> Result<LinkReport, WireError> {
    let link = LinkId(r.u32("link id")?);
    let flags = r.u8("link flags")?;
    let health = match flags & HEALTH_MASK {
        0 => RoutingHealth::Up,
        1 => RoutingHealth::Degraded,
        2 => RoutingHealth::Down,
        _ => return Err(WireError::Health(link)),
    };
    if flags & RESERVED != 0 {
        return Err(WireError::Flags { link, flags });
    }
    let rtt = r.u32("rtt")?;
    let jitter = r.u32("jitter")?;
    let loss = r.u16("loss")?;
    let utilisation = r.u16("utilisation")?;
    let field = |value: u64, bit: u8, name: &'static str| match (flags & bit != 0, value) {
        (true, _) => Ok(true),
        (false, 0) => Ok(false),
        (false, _) => Err(WireError::NonCanonical { link, field: name }),
    };
    let figures = Figures {
        rtt_us: field(rtt.into(), HAS_RTT, "rtt")?.then_some(rtt),
        jitter_us: field(jitter.into(), HAS_JITTER, "jitter")?.then_some(jitter),
        loss: field(loss.into(), HAS_LOSS, "loss")?.then_some(loss),
        utilisation: field(utilisation.into(), HAS_UTILISATION, "utilisation")?
            .then_some(utilisation),
    };
    Ok(LinkReport {
        link,
        health,
        figures,
    })
}

/// A cursor that checks every length before it takes bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.at + n;
        if end > self.bytes.len() {
            return Err(WireError::Truncated {
                what,
                at: self.at,
                needed: n,
                len: self.bytes.len(),
            });
        }
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests;
