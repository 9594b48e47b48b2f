//! The client's real address behind proxies that `server.trusted_proxies`
//! names, from `Forwarded: for=` and `X-Forwarded-For`.
//!
//! Only a peer that is a trusted proxy is believed, and only as far as the
//! chain stays within trusted proxies: the address used is the rightmost one
//! in the chain that is *not* a trusted proxy (anything left of it could
//! have been written by the client itself). From any other peer the headers
//! are ignored, so a client cannot pick the address its limits apply to.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses one `server.trusted_proxies` entry: an address or a CIDR block.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR block such as 10.0.0.0/8"))
}

/// One address from a forwarding header: `1.2.3.4`, `1.2.3.4:5678`,
/// `"[2001:db8::1]:80"`, `2001:db8::1`. `None` for `unknown`, obfuscated
/// identifiers and garbage.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.rsplit_once(':')
        .and_then(|(host, _port)| host.parse::<IpAddr>().ok())
}

/// The hops of a `Forwarded` header (`for=` parameters, in order).
pub fn forwarded_for(header: &str) -> Vec<String> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().to_string())
            })
        })
        .collect()
}

/// The hops of an `X-Forwarded-For` header, in order.
pub fn x_forwarded_for(header: &str) -> Vec<String> {
    header.split(',').map(|h| h.trim().to_string()).collect()
}

/// The address limits and logs apply to: `peer`, or, when `peer` is a
/// trusted proxy, the rightmost hop of `chain` that is not one.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, chain: &[String]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in chain.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    return client;
                }
            }
            // An unreadable hop ends what can be believed.
            None => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let chain = x_forwarded_for("203.0.113.7, 10.1.2.3");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip(&trusted, ip("127.0.0.1"), &chain),
            ip("203.0.113.7")
        );
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(&trusted, ip("198.51.100.1"), &chain),
            ip("198.51.100.1")
        );
        // A client cannot prepend its way past the first untrusted hop.
        let spoofed = x_forwarded_for("1.1.1.1, 203.0.113.7");
        assert_eq!(
            client_ip(&trusted, ip("10.0.0.5"), &spoofed),
            ip("203.0.113.7")
        );
        // No trusted proxies: never believed.
        assert_eq!(client_ip(&[], ip("127.0.0.1"), &chain), ip("127.0.0.1"));
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            client_ip(&trusted, ip("::ffff:127.0.0.1"), &chain),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn forwarded_header_forms() {
        let hops = forwarded_for(
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711", for=unknown"#,
        );
        assert_eq!(hops.len(), 3);
        let trusted = nets(&["127.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The rightmost hop is `unknown`: nothing beyond the proxy is believed.
        assert_eq!(client_ip(&trusted, ip("127.0.0.1"), &hops), ip("127.0.0.1"));
        assert_eq!(
            client_ip(&trusted, ip("127.0.0.1"), &hops[..2]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(parse_hop("192.0.2.60:8080"), Some(ip("192.0.2.60")));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
