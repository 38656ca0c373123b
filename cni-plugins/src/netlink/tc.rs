//! Traffic control over the same rtnetlink socket: IFB devices, the `tbf`
//! and `ingress` qdiscs and a match-all `u32` filter that redirects a link's
//! ingress to another device (what the `bandwidth` plugin needs). No `tc`
//! command is run.
//!
//! netlink-packet-route has no `tbf` type, so its options are written and
//! read as raw attributes here, laid out as the kernel's `tc_tbf_qopt`.
//! Rates are in bytes per second, the buffer in scheduler ticks, as the
//! kernel takes them.

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, Nla, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

use super::{Netlink, NetlinkError};

/// `TCA_OPTIONS` of a qdisc message.
const TCA_OPTIONS: u16 = 2;
/// `TCA_TBF_PARMS`: a `tc_tbf_qopt`.
const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: the rate when it does not fit the 32-bit field.
const TCA_TBF_RATE64: u16 = 4;
/// Size of `struct tc_tbf_qopt`: two 12-byte `tc_ratespec`, then limit,
/// buffer and mtu.
const TBF_QOPT_LEN: usize = 36;
/// `ETH_P_ALL`, in network byte order as `tcm_info` wants it.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// Strips the `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER` bits from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A token bucket: what `tc qdisc add ... tbf` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Rate in bytes per second.
    pub rate: u64,
    /// Bytes that may wait in the queue.
    pub limit: u32,
    /// Bucket size as transmission time in scheduler ticks.
    pub buffer: u32,
}

/// A qdisc found on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// `tbf`, `ingress`, `noqueue`, ...
    pub kind: String,
    /// Its handle (`1:` is `0x0001_0000`).
    pub handle: u32,
    /// Its parent (`TC_H_ROOT` is `0xffff_ffff`).
    pub parent: u32,
    /// The token bucket, for a `tbf`.
    pub tbf: Option<Tbf>,
}

impl Qdisc {
    /// Whether this is the link's root qdisc.
    pub fn is_root(&self) -> bool {
        self.parent == u32::from(TcHandle::ROOT)
    }
}

/// The `tc_tbf_qopt` bytes for `tbf`; the peak rate stays unset.
fn tbf_qopt(tbf: &Tbf) -> Vec<u8> {
    let mut buf = vec![0u8; TBF_QOPT_LEN];
    // rate.rate is the last field of the first tc_ratespec; a rate beyond
    // 32 bits goes in TCA_TBF_RATE64 and this one is truncated, as
    // iproute2 and the reference plugin do.
    buf[8..12].copy_from_slice(&(tbf.rate as u32).to_ne_bytes());
    buf[24..28].copy_from_slice(&tbf.limit.to_ne_bytes());
    buf[28..32].copy_from_slice(&tbf.buffer.to_ne_bytes());
    buf
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The token bucket of a `tbf` qdisc's `TCA_OPTIONS` payload.
fn parse_tbf(options: &[u8]) -> Option<Tbf> {
    let mut tbf = None;
    let mut rate64 = None;
    for nla in NlasIterator::new(options) {
        let nla = nla.ok()?;
        let value = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            TCA_TBF_PARMS => {
                tbf = Some(Tbf {
                    rate: u64::from(read_u32(value, 8)?),
                    limit: read_u32(value, 24)?,
                    buffer: read_u32(value, 28)?,
                });
            }
            TCA_TBF_RATE64 => {
                rate64 = Some(u64::from_ne_bytes(value.get(..8)?.try_into().ok()?));
            }
            _ => {}
        }
    }
    let mut tbf = tbf?;
    if let Some(rate) = rate64 {
        tbf.rate = rate;
    }
    Some(tbf)
}

/// The raw bytes of an attribute this crate does not decode.
fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

fn qdisc_from_message(msg: &TcMessage) -> Option<Qdisc> {
    let mut kind = None;
    let mut options = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind = Some(k.clone()),
            TcAttribute::Options(opts) => options = Some(opts),
            _ => {}
        }
    }
    let kind = kind?;
    let tbf = match (kind.as_str(), options) {
        ("tbf", Some(opts)) => opts.iter().find_map(|opt| match opt {
            TcOption::Other(nla) if nla.kind() & NLA_TYPE_MASK == TCA_OPTIONS => {
                parse_tbf(&nla_value(nla))
            }
            _ => None,
        }),
        _ => None,
    };
    Some(Qdisc {
        kind,
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        tbf,
    })
}

impl Netlink {
    /// Creates an IFB device, up, with `mtu` and a zero transmit queue
    /// length (as the reference plugin makes it).
    pub fn add_ifb(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::TxQueueLen(0));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add ifb",
            &name,
        )
    }

    /// Adds a `tbf` as the root qdisc (handle `1:`) of link `index`.
    pub fn add_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.header.parent = TcHandle::ROOT;
        let mut options = vec![TcOption::Other(DefaultNla::new(
            TCA_TBF_PARMS,
            tbf_qopt(tbf),
        ))];
        if tbf.rate > u64::from(u32::MAX) {
            options.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                tbf.rate.to_ne_bytes().to_vec(),
            )));
        }
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(options));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add tbf qdisc",
            &index,
        )
    }

    /// Adds the `ingress` qdisc (handle `ffff:`) to link `index`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.header.parent = TcHandle::INGRESS;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add ingress qdisc",
            &index,
        )
    }

    /// On the ingress qdisc of link `index`: a `u32` filter matching every
    /// packet (priority 1, all protocols, flowid `1:1`) whose action
    /// redirects it out of link `target` (`mirred egress redirect`).
    pub fn add_ingress_redirect(&mut self, index: u32, target: u32) -> Result<(), NetlinkError> {
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];

        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = target;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];

        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.header.info = (1 << 16) | ETH_P_ALL_BE;
        msg.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 })),
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.ack(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add redirect filter",
            &index,
        )
    }

    /// The qdiscs of link `index` (the kernel dumps all links; the others
    /// are dropped here, as `tc qdisc show dev` does).
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
            "list qdiscs",
            &index,
        )?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewQueueDiscipline(msg)
                    if msg.header.index == index as i32 =>
                {
                    qdisc_from_message(msg)
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn tbf_options_round_trip() {
        for rate in [1_000_000u64, 6_000_000_000] {
            let tbf = Tbf {
                rate,
                limit: 125_000,
                buffer: 1_562_500,
            };
            let mut options = vec![TcOption::Other(DefaultNla::new(
                TCA_TBF_PARMS,
                tbf_qopt(&tbf),
            ))];
            if rate > u64::from(u32::MAX) {
                options.push(TcOption::Other(DefaultNla::new(
                    TCA_TBF_RATE64,
                    rate.to_ne_bytes().to_vec(),
                )));
            }
            // What the kernel sends back: the same attributes nested in TCA_OPTIONS.
            let mut nested = Vec::new();
            for opt in &options {
                let mut buf = vec![0; opt.buffer_len()];
                opt.emit(&mut buf);
                nested.extend(buf);
            }
            let parsed = parse_tbf(&nested).unwrap();
            assert_eq!(parsed, tbf);
        }
    }

    #[test]
    fn handles_and_protocol() {
        assert_eq!(u32::from(TcHandle { major: 1, minor: 0 }), 0x0001_0000);
        assert_eq!(u32::from(TcHandle::INGRESS), 0xffff_fff1);
        assert_eq!(ETH_P_ALL_BE, 0x0300);
    }
}
