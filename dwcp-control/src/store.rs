//! The cluster store (issue 18), its pure parts: which store an agent uses (`[store]`), where
//! each thing lives under the key prefix, and what a gateway's membership entry holds. The
//! etcd client is `dwcp-agent`'s (`store/`); the ledgers' rules are `bandwidth::ledger`'s.
//!
//! Keys, under the prefix (`/dwcp/v1` by default):
//! - `<prefix>/ledgers/<link id, 10 digits>`: the link's [`Ledger`](crate::bandwidth::Ledger)
//! - `<prefix>/reservations/<id, 20 digits>`: a [`Reservation`](crate::bandwidth::Reservation)
//! - `<prefix>/gateways/<name>`: a [`GatewayRecord`], on the gateway's lease
//!
//! Fixed-width numbers so that keys sort as their numbers do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bandwidth::ReservationId;
use crate::topology::LinkId;

pub const DEFAULT_PREFIX: &str = "/dwcp/v1";

/// Where an agent keeps what gateways must agree on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// Its own files: one gateway, or a small fixed set up (today's behaviour).
    #[default]
    File,
    Etcd(EtcdConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Starts with `/`, no trailing `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

/// PEM files: the CA that signed the members' certificates, and this gateway's client
/// certificate and key (etcd's `--client-cert-auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The keys of one deployment (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// `prefix` as validated by the configuration (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ledgers(&self) -> String {
        format!("{}/ledgers/", self.prefix)
    }

    pub fn ledger(&self, link: LinkId) -> String {
        format!("{}{:010}", self.ledgers(), link.0)
    }

    /// The link of a ledger key.
    pub fn ledger_link(&self, key: &str) -> Option<LinkId> {
        let digits = key.strip_prefix(&self.ledgers())?;
        (digits.len() == 10).then(|| digits.parse().ok().map(LinkId))?
    }

    pub fn reservations(&self) -> String {
        format!("{}/reservations/", self.prefix)
    }

    pub fn reservation(&self, id: ReservationId) -> String {
        format!("{}{:020}", self.reservations(), id.0)
    }

    pub fn gateways(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    pub fn gateway(&self, name: &str) -> String {
        format!("{}{name}", self.gateways())
    }
}

/// A gateway's membership entry: kept while its lease is renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub name: String,
    pub region: String,
    /// Where its API or underlay can be reached, as the operator reads it.
    pub address: String,
    pub version: String,
    /// The topology generation it runs.
    pub topology_generation: u64,
}

/// A registered gateway as listed (`GET /v1/gateways`, `dwcp show gateways`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    #[serde(flatten)]
    pub record: GatewayRecord,
    /// Seconds since its lease was last renewed (whole seconds: etcd's TTL resolution);
    /// `None` when the lease had gone by the time it was asked.
    pub last_contact_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_numbers_and_parse_back() {
        let k = KeyLayout::new("/dwcp/v1/");
        assert_eq!(k.ledger(LinkId(7)), "/dwcp/v1/ledgers/0000000007");
        assert!(k.ledger(LinkId(9)) < k.ledger(LinkId(10)));
        assert!(k.reservation(ReservationId(9)) < k.reservation(ReservationId(10)));
        assert_eq!(
            k.ledger_link(&k.ledger(LinkId(u32::MAX))),
            Some(LinkId(u32::MAX))
        );
        assert_eq!(k.ledger_link("/dwcp/v1/ledgers/7"), None);
        assert_eq!(k.ledger_link("/other/ledgers/0000000007"), None);
        assert_eq!(k.gateway("gw-a"), "/dwcp/v1/gateways/gw-a");
    }
}
