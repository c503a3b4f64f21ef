//! Interfaces from rtnetlink: the initial list, the default-route uplink, and live churn.
//!
//! Subscribing to RTNLGRP_LINK before listing means no veth created during start-up is
//! missed; the duplicates this produces are harmless because attaching is idempotent.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        link::{InfoKind, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAttribute, RouteHeader, RouteMessage},
        RouteNetlinkMessage,
    },
    MulticastGroup, RouteMessageBuilder,
};

use super::DatapathError;

/// What the selector needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND, e.g. "veth", "bridge"; `None` for physical NICs.
    pub kind: Option<String>,
    /// Enslaved to a Linux bridge (kubenet's cbr0 and similar).
    pub master_is_bridge: bool,
    pub is_loopback: bool,
}

/// A change to the set of links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// New link, or an existing one changed (renamed, moved under a bridge).
    Up(Link),
    Removed {
        index: u32,
    },
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            master_is_bridge: false,
            is_loopback: msg.header.flags.contains(LinkFlags::Loopback),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                            LinkInfo::PortKind(InfoPortKind::Bridge) => {
                                link.master_is_bridge = true
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        (!link.name.is_empty()).then_some(link)
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn nl_err(what: &'static str) -> impl Fn(rtnetlink::Error) -> DatapathError {
    move |e| DatapathError::Netlink {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

fn connect(what: &'static str) -> Result<rtnetlink::Handle, DatapathError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| DatapathError::Netlink { what, source })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Every link in this network namespace.
pub async fn list_links() -> Result<Vec<Link>, DatapathError> {
    let handle = connect("link dump")?;
    let msgs: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("link dump"))?;
    Ok(msgs.iter().filter_map(Link::from_message).collect())
}

/// Names of the interfaces carrying a default route (IPv4 first, then IPv6), deduplicated.
pub async fn default_route_interfaces() -> Result<Vec<String>, DatapathError> {
    let handle = connect("route dump")?;
    let mut oifs: Vec<u32> = Vec::new();
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
    for query in [v4, v6] {
        let routes: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("route dump"))?;
        for route in routes.iter().filter(|r| {
            r.header.destination_prefix_length == 0 && r.header.table == RouteHeader::RT_TABLE_MAIN
        }) {
            collect_oifs(route, &mut oifs);
        }
    }
    let links = list_links().await?;
    let mut names = Vec::new();
    for oif in oifs {
        if let Some(l) = links.iter().find(|l| l.index == oif) {
            if !names.contains(&l.name) {
                names.push(l.name.clone());
            }
        }
    }
    Ok(names)
}

fn collect_oifs(route: &RouteMessage, out: &mut Vec<u32>) {
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => out.push(*i),
            RouteAttribute::MultiPath(hops) => out.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
}

/// Links now present, then every change as it happens.
pub async fn watch_links(
) -> Result<(Vec<Link>, impl Stream<Item = LinkEvent> + Unpin), DatapathError> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|source| DatapathError::Netlink {
            what: "link event subscription",
            source,
        })?;
    tokio::spawn(conn);
    let initial = list_links().await?;
    let events = messages.filter_map(|(msg, _)| async move {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                Link::from_message(&l).map(LinkEvent::Up)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                Some(LinkEvent::Removed {
                    index: l.header.index,
                })
            }
            _ => None,
        }
    });
    Ok((initial, Box::pin(events)))
}
