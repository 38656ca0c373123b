//! Picking an address from a range set, in the reference plugin's order:
//! round-robin from the address after `last_reserved_ip.N`, across the
//! set's ranges, skipping the gateway, until back at the start; so a
//! crash-looping pod does not get the same address again until the whole
//! set has been used, and both plugins hand out the same sequence.

use std::net::IpAddr;

use super::config::{Range, RangeSet, next_ip, range_for, range_set_string};
use super::store::{Store, StoreError};
use crate::result::IpPrefix;

/// Why no address could be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Every address of the set is taken.
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    /// The requested address is not in the set.
    #[error("{ip} not in range set {set}")]
    NotInRange {
        /// The address asked for.
        ip: IpAddr,
        /// The set, printed.
        set: String,
    },
    /// The requested address is the gateway.
    #[error("requested ip {0} is subnet's gateway")]
    IsGateway(IpAddr),
    /// The requested address is taken.
    #[error("requested IP address {ip} is not available in range set {set}")]
    Taken {
        /// The address asked for.
        ip: IpAddr,
        /// The set, printed.
        set: String,
    },
    /// The attachment already holds an address of this set.
    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    Duplicate {
        /// The address held.
        ip: IpAddr,
        /// The container holding it.
        container_id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An allocated address: with the subnet's prefix length, and the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with the subnet's prefix length.
    pub address: IpPrefix,
    /// The range's gateway.
    pub gateway: IpAddr,
}

/// The reference's `RangeIter`: yields candidates until it comes back to
/// where it started.
struct RangeIter<'a> {
    set: &'a RangeSet,
    index: usize,
    current: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> RangeIter<'a> {
    fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> Self {
        match last_reserved.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip)))
        {
            // Continue after the last address handed out.
            Some((index, ip)) => Self {
                set,
                index,
                current: Some(ip),
                start: None,
            },
            None => Self {
                set,
                index: 0,
                current: None,
                start: Some(set[0].start),
            },
        }
    }

    fn next_candidate(&mut self) -> Option<(IpAddr, &'a Range)> {
        loop {
            let range = &self.set[self.index];
            let Some(current) = self.current else {
                self.current = Some(range.start);
                self.start = Some(range.start);
                if range.start == range.gateway {
                    continue;
                }
                return Some((range.start, range));
            };
            let (next, range) = if current == range.end {
                self.index = (self.index + 1) % self.set.len();
                let range = &self.set[self.index];
                (range.start, range)
            } else {
                (next_ip(current), range)
            };
            self.current = Some(next);
            match self.start {
                None => self.start = Some(next),
                Some(start) if start == next => return None,
                Some(_) => {}
            }
            if next == range.gateway {
                continue;
            }
            return Some((next, range));
        }
    }
}

/// Allocates one address of range set number `range_id` to the attachment.
pub fn allocate(
    store: &Store,
    set: &RangeSet,
    range_id: usize,
    container_id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<Allocation, AllocError> {
    let with_prefix = |ip: IpAddr, range: &Range| Allocation {
        address: IpPrefix {
            addr: ip,
            prefix_len: range.subnet.prefix_len,
        },
        gateway: range.gateway,
    };
    if let Some(ip) = requested {
        let range = range_for(set, ip).ok_or_else(|| AllocError::NotInRange {
            ip,
            set: range_set_string(set),
        })?;
        if ip == range.gateway {
            return Err(AllocError::IsGateway(ip));
        }
        if !store.reserve(container_id, ifname, ip, range_id)? {
            return Err(AllocError::Taken {
                ip,
                set: range_set_string(set),
            });
        }
        return Ok(with_prefix(ip, range));
    }
    if let Some(held) = store
        .get_by_id(container_id, ifname)?
        .into_iter()
        .find(|ip| range_for(set, *ip).is_some())
    {
        return Err(AllocError::Duplicate {
            ip: held,
            container_id: container_id.to_owned(),
        });
    }
    let mut iter = RangeIter::new(set, store.last_reserved(range_id));
    while let Some((ip, range)) = iter.next_candidate() {
        if store.reserve(container_id, ifname, ip, range_id)? {
            return Ok(with_prefix(ip, range));
        }
    }
    Err(AllocError::Exhausted(range_set_string(set)))
}

#[cfg(test)]
mod tests {
    use super::super::config::IpamConfig;
    use super::*;
    use serde_json::json;

    fn set(ranges: serde_json::Value) -> RangeSet {
        let config = json!({"name": "n", "ipam": {"ranges": [ranges]}});
        IpamConfig::parse(&config, None).unwrap().ranges.remove(0)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sequence(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        let mut iter = RangeIter::new(set, last.map(ip));
        let mut out = Vec::new();
        while let Some((ip, _)) = iter.next_candidate() {
            out.push(ip.to_string());
            assert!(out.len() < 1000, "iterator does not end");
        }
        out
    }

    #[test]
    fn iterates_like_the_reference() {
        // /29: hosts .1-.6, gateway .1 skipped.
        let small = set(json!([{"subnet": "10.240.9.0/29"}]));
        assert_eq!(
            sequence(&small, None),
            [
                "10.240.9.2",
                "10.240.9.3",
                "10.240.9.4",
                "10.240.9.5",
                "10.240.9.6"
            ]
        );
        // After .4: .5, .6, wrap to .2, .3, and .4 last.
        assert_eq!(
            sequence(&small, Some("10.240.9.4")),
            [
                "10.240.9.5",
                "10.240.9.6",
                "10.240.9.2",
                "10.240.9.3",
                "10.240.9.4"
            ]
        );
        // A cursor outside the set starts over.
        assert_eq!(sequence(&small, Some("10.1.1.1")).len(), 5);
        // Two ranges are walked in order, then wrap.
        let two = set(json!([
            {"subnet": "10.240.9.0/30"},
            {"subnet": "10.240.9.8/30", "gateway": "10.240.9.8"}
        ]));
        assert_eq!(
            sequence(&two, None),
            ["10.240.9.2", "10.240.9.9", "10.240.9.10"]
        );
        assert_eq!(
            sequence(&two, Some("10.240.9.9")),
            ["10.240.9.10", "10.240.9.2", "10.240.9.9"]
        );
    }

    #[test]
    fn allocates_round_robin_until_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let small = set(
            json!([{"subnet": "10.240.9.0/29", "rangeStart": "10.240.9.2", "rangeEnd": "10.240.9.4"}]),
        );
        let mut got = Vec::new();
        for id in ["a", "b", "c"] {
            let alloc = allocate(&store, &small, 0, id, "eth0", None).unwrap();
            assert_eq!(alloc.gateway, ip("10.240.9.1"));
            got.push(alloc.address.to_string());
        }
        assert_eq!(got, ["10.240.9.2/29", "10.240.9.3/29", "10.240.9.4/29"]);
        let err = allocate(&store, &small, 0, "d", "eth0", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no IP addresses available in range set: 10.240.9.2-10.240.9.4"
        );
        assert!(matches!(
            allocate(&store, &small, 0, "a", "eth0", None),
            Err(AllocError::Duplicate { .. })
        ));
        // Freeing .3 and allocating again: .3, the only one free.
        store.release_by_id("b", "eth0").unwrap();
        let alloc = allocate(&store, &small, 0, "e", "eth0", None).unwrap();
        assert_eq!(alloc.address.addr, ip("10.240.9.3"));
    }

    #[test]
    fn requested_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let s = set(json!([{"subnet": "10.240.9.0/24"}]));
        let alloc = allocate(&store, &s, 0, "a", "eth0", Some(ip("10.240.9.77"))).unwrap();
        assert_eq!(alloc.address.to_string(), "10.240.9.77/24");
        assert!(matches!(
            allocate(&store, &s, 0, "b", "eth0", Some(ip("10.240.9.77"))),
            Err(AllocError::Taken { .. })
        ));
        assert!(matches!(
            allocate(&store, &s, 0, "b", "eth0", Some(ip("10.240.9.1"))),
            Err(AllocError::IsGateway(_))
        ));
        assert!(matches!(
            allocate(&store, &s, 0, "b", "eth0", Some(ip("10.1.0.1"))),
            Err(AllocError::NotInRange { .. })
        ));
    }
}
