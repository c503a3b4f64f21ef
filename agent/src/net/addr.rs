//! Addresses as the kernel programs key them: two words, IPv4 in the first four bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::FlowKey;

/// Decode a key address (IPv4 in the first four bytes).
pub fn addr(family: u8, words: &[u64; 2]) -> IpAddr {
    let raw = FlowKey::addr_bytes(words);
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_families() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[10, 244, 1, 5]);
        assert_eq!(
            addr(4, &FlowKey::addr_words(&raw)).to_string(),
            "10.244.1.5"
        );
        let v6: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let words = FlowKey::addr_words(&v6.octets());
        assert_eq!(addr(6, &words).to_string(), "fd00:10:244:1::5");
    }
}
