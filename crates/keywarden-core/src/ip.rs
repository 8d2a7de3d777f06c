//! Client addresses: per-key IP allowlists (`docs/concepts.md#objects` `ip_allowlist`), the trusted proxies whose
//! `X-Forwarded-For` is believed, the client IP derived from them (`docs/decision.md`), and the bucket a
//! client IP is locked out by after repeated failures.
//!
//! Rules shared by every function here:
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address `a.b.c.d`, both as a
//!   client address and in an entry (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). A dual-stack
//!   listener reports IPv4 peers in that form, and they must match IPv4 entries.
//! - Other IPv6 networks match IPv6 clients only: `::/0` means "any IPv6 client" and does
//!   not admit IPv4 clients, just as `0.0.0.0/0` does not admit IPv6 ones.
//! - An entry is an address (`203.0.113.7`, `::1`) or a network in CIDR form (`10.0.0.0/8`,
//!   `2001:db8::/32`); surrounding spaces are ignored. A CIDR with host bits set
//!   (`10.0.0.5/8`) is rejected, with the network it would denote in the reason: it is either
//!   a typo or a wider grant than the operator meant, and an allowlist must not guess.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, SocketAddr};

/// Longest part of an offending entry repeated in an [`IpListError`], so that a huge input
/// cannot blow up an error message or a log line.
const MAX_ENTRY_IN_ERROR: usize = 64;

/// An entry of an IP list that is neither an address nor a network, with the reason, so that
/// the API can answer `400` naming exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP address or network {entry:?}: {reason}")]
pub struct IpListError {
    /// The offending entry as given (cut to 64 characters).
    pub entry: String,
    /// Why it was refused, in words an operator can act on.
    pub reason: String,
}

impl IpListError {
    /// Builds the error for `entry`, cut to a printable length.
    fn new(entry: &str, reason: impl Into<String>) -> Self {
        Self {
            entry: entry.chars().take(MAX_ENTRY_IN_ERROR).collect(),
            reason: reason.into(),
        }
    }
}

/// The addresses a key may be used from. Empty (the default) admits any address, because a
/// key without an allowlist is unrestricted (`docs/concepts.md#objects`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpAllowlist {
    /// The parsed networks, IPv4-mapped ones already turned into IPv4.
    nets: Vec<IpNet>,
}

impl IpAllowlist {
    /// Parses a key's `ip_allowlist`; the first bad entry fails the whole list, since a
    /// partly understood allowlist would admit or refuse the wrong clients.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, IpListError> {
        Ok(Self {
            nets: parse_list(entries)?,
        })
    }

    /// Whether the list is empty, that is, admits every address.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether a request from `ip` may use the key: the list is empty or one of its networks
    /// contains the (normalised) address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.nets.is_empty() || contains(&self.nets, ip)
    }

    /// The networks in canonical form, for display and for storing a normalised list.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether every address this list admits, `outer` admits too: `outer` is empty (it
    /// admits any address), or this list is not empty and each of its networks lies inside
    /// one of `outer`'s. A network that only several of `outer`'s cover together does not.
    pub fn is_within(&self, outer: &Self) -> bool {
        outer.nets.is_empty() || (!self.nets.is_empty() && self.outside(outer).next().is_none())
    }

    /// This list's networks that lie inside none of `outer`'s; none when `outer` is empty.
    pub fn outside<'a>(&'a self, outer: &'a Self) -> impl Iterator<Item = &'a IpNet> + 'a {
        self.nets
            .iter()
            .filter(move |n| !outer.nets.is_empty() && !outer.nets.iter().any(|o| o.contains(*n)))
    }
}

/// The proxies whose `X-Forwarded-For` header is believed (`trusted_proxies` in the config).
/// Empty (the default) trusts no one, so the peer address is always the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// The parsed networks, IPv4-mapped ones already turned into IPv4.
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses the configured list; the first bad entry fails it, so a typo stops startup
    /// instead of silently distrusting (or trusting) a proxy.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, IpListError> {
        Ok(Self {
            nets: parse_list(entries)?,
        })
    }

    /// Whether `ip` (normalised) belongs to a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        contains(&self.nets, ip)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks in canonical form, for display.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }
}

/// Turns an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into the IPv4 address it carries, so
/// that a dual-stack listener's view of an IPv4 client compares equal to the plain form.
/// Every other address is returned unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A request's client as its addresses tell it: an address, or unknown because a trusted
/// proxy named it with something that is not one.
///
/// An unknown client is never taken for the proxy that forwarded it: it matches no
/// allowlist, and its authentication failures are counted in a lockout bucket of their own
/// ([`LockoutBucket::Unknown`]), apart from every address's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    /// The client's address, normalised.
    Ip(IpAddr),
    /// A trusted proxy forwarded the request for a client whose address does not parse
    /// (`unknown`, a hostname, an obfuscated identifier, garbage).
    Unknown,
}

impl ClientAddr {
    /// The address, when it is known.
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            ClientAddr::Ip(ip) => Some(ip),
            ClientAddr::Unknown => None,
        }
    }

    /// The lockout bucket this client's authentication failures count in.
    pub fn lockout_bucket(self) -> LockoutBucket {
        match self {
            ClientAddr::Ip(ip) => lockout_bucket(ip),
            ClientAddr::Unknown => LockoutBucket::Unknown,
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Ip(ip) => ip.fmt(f),
            ClientAddr::Unknown => f.write_str("unknown"),
        }
    }
}

impl From<IpAddr> for ClientAddr {
    fn from(ip: IpAddr) -> Self {
        ClientAddr::Ip(normalize(ip))
    }
}

/// The client of a request (`docs/decision.md`).
///
/// It is the peer address, unless the peer is a trusted proxy. Then `X-Forwarded-For` is
/// read right to left, skipping trusted hops, and the first untrusted address is the client;
/// if every hop is trusted, the leftmost one is. An entry that is not an address, reached
/// before the first untrusted one, makes the client [`ClientAddr::Unknown`]: a trusted
/// proxy vouched for a client it could not name, and nothing left of it can be believed,
/// nor is the proxy the client. Entries are trimmed, empty ones are skipped, and an address
/// may carry a port (`203.0.113.7:4711`, `[2001:db8::1]:443`) or brackets. The caller joins
/// repeated headers with commas. The result is normalised.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted: &TrustedProxies,
) -> ClientAddr {
    let peer = normalize(peer);
    let Some(header) = forwarded_for else {
        return ClientAddr::Ip(peer);
    };
    if !trusted.contains(peer) {
        // An untrusted peer can write anything in the header.
        return ClientAddr::Ip(peer);
    }
    let mut client = peer;
    for hop in header.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
        let Some(addr) = parse_hop(hop) else {
            return ClientAddr::Unknown;
        };
        client = addr;
        if !trusted.contains(addr) {
            break;
        }
    }
    ClientAddr::Ip(client)
}

/// What a client's authentication failures are counted and locked by (`docs/decision.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockoutBucket {
    /// A known client's network: see [`lockout_bucket`].
    Net(IpNet),
    /// Every client a trusted proxy could not name, together: apart from every address
    /// (the proxy's included), so that failures sent under a made-up address lock out
    /// neither the proxy nor anyone with a real one.
    Unknown,
}

impl std::fmt::Display for LockoutBucket {
    /// The network in CIDR form, or `unknown` (which no network is written as).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockoutBucket::Net(net) => net.fmt(f),
            LockoutBucket::Unknown => f.write_str("unknown"),
        }
    }
}

/// The network a client's authentication failures are counted and locked by (`docs/decision.md`): the
/// address itself for IPv4 (`/32`), its `/64` for IPv6, since one IPv6 subscriber usually
/// holds a whole `/64` and could otherwise rotate addresses to escape the lockout.
pub fn lockout_bucket(ip: IpAddr) -> LockoutBucket {
    LockoutBucket::Net(match normalize(ip) {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => Ipv6Net::new(v6, 64)
            .map(|net| IpNet::V6(net.trunc()))
            .unwrap_or_else(|_| IpNet::V6(Ipv6Net::from(v6))),
    })
}

/// Parses every entry of a list.
fn parse_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<IpNet>, IpListError> {
    entries.iter().map(|e| parse_entry(e.as_ref())).collect()
}

/// Parses one entry: an address or a CIDR network, mapped IPv6 turned into IPv4.
fn parse_entry(raw: &str) -> Result<IpNet, IpListError> {
    let entry = raw.trim();
    if entry.is_empty() {
        return Err(IpListError::new(raw, "the entry is empty"));
    }
    let net = match entry.split_once('/') {
        None => {
            let addr: IpAddr = entry
                .parse()
                .map_err(|_| IpListError::new(raw, "not an IPv4 or IPv6 address"))?;
            IpNet::from(addr)
        }
        Some((addr, len)) => {
            let addr: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| IpListError::new(raw, "not an IPv4 or IPv6 address before the /"))?;
            let len = len.trim();
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = Some(len)
                .filter(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse::<u8>().ok())
                .filter(|&p| p <= max)
                .ok_or_else(|| {
                    IpListError::new(
                        raw,
                        format!("the prefix length must be a number from 0 to {max}"),
                    )
                })?;
            let net = IpNet::new(addr, prefix).map_err(|_| {
                IpListError::new(
                    raw,
                    format!("the prefix length must be a number from 0 to {max}"),
                )
            })?;
            if net.addr() != net.network() {
                return Err(IpListError::new(
                    raw,
                    format!("host bits are set; the network is {}", net.trunc()),
                ));
            }
            net
        }
    };
    Ok(unmap(net))
}

/// Turns a network inside `::ffff:0:0/96` into the IPv4 network it denotes; any other
/// network is returned unchanged.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4net) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4net);
            }
        }
    }
    net
}

/// Whether any of `nets` contains the normalised `ip`.
fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = normalize(ip);
    nets.iter().any(|net| net.contains(&ip))
}

/// Parses one `X-Forwarded-For` hop: an address, optionally bracketed or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let unbracketed = hop
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(hop);
    unbracketed
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|sa| sa.ip()))
        .ok()
        .map(normalize)
}

/// Room for any IP address in text form.
pub const IP_TEXT_MAX: usize = 48;

/// `ip` in its usual text form, written into `buf` without allocating: what a log line or a
/// header carries for each request.
pub fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &str {
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Debug;

    #[test]
    fn addresses_are_written_as_their_display_form() {
        let mut buf = [0u8; IP_TEXT_MAX];
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.99.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string(), "{text}");
        }
    }

    /// Asserts one table row, naming the case when it fails.
    fn check<T: PartialEq + Debug>(case: &str, got: T, want: T) {
        assert_eq!(got, want, "case: {case}");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allowlist_matching() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], &str, bool)] = &[
            // Each row holds the case, the entries, the client and whether it is allowed.
            ("empty admits v4", &[], "198.51.100.1", true),
            ("empty admits v6", &[], "2001:db8::1", true),
            ("v4 address, same", &["203.0.113.7"], "203.0.113.7", true),
            ("v4 address, neighbour", &["203.0.113.7"], "203.0.113.8", false),
            ("v4 /8, inside", &["10.0.0.0/8"], "10.255.255.255", true),
            ("v4 /8, just outside", &["10.0.0.0/8"], "11.0.0.0", false),
            ("v4 /32", &["203.0.113.7/32"], "203.0.113.7", true),
            ("v4 /0 admits every v4", &["0.0.0.0/0"], "198.51.100.1", true),
            ("v4 /0 does not admit v6", &["0.0.0.0/0"], "2001:db8::1", false),
            ("v6 /32, inside", &["2001:db8::/32"], "2001:db8:ffff::1", true),
            ("v6 /32, outside", &["2001:db8::/32"], "2001:db9::1", false),
            ("v6 loopback", &["::1"], "::1", true),
            ("v6 loopback is not v4 loopback", &["::1"], "127.0.0.1", false),
            ("v6 /128", &["2001:db8::7/128"], "2001:db8::7", true),
            ("v6 /0 admits every v6", &["::/0"], "2001:db8::1", true),
            ("v6 /0 does not admit v4", &["::/0"], "198.51.100.1", false),
            ("v6 /0 does not admit mapped v4", &["::/0"], "::ffff:198.51.100.1", false),
            ("v4 entry does not admit v6", &["10.0.0.0/8"], "2001:db8::1", false),
            ("mapped client, v4 entry", &["203.0.113.7"], "::ffff:203.0.113.7", true),
            ("mapped client, v4 cidr", &["10.0.0.0/8"], "::ffff:10.1.2.3", true),
            ("mapped entry, v4 client", &["::ffff:203.0.113.7"], "203.0.113.7", true),
            ("mapped cidr entry, v4 client", &["::ffff:10.0.0.0/104"], "10.1.2.3", true),
            ("mapped cidr entry, outside", &["::ffff:10.0.0.0/104"], "11.1.2.3", false),
            ("mapped /96 is all of v4", &["::ffff:0:0/96"], "198.51.100.1", true),
            ("v4-compatible form is v6", &["::10.0.0.1"], "10.0.0.1", false),
            ("several entries, second matches", &["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", true),
            ("several entries, none matches", &["10.0.0.0/8", "2001:db8::/32"], "192.0.2.1", false),
            ("spaces around entries", &[" 10.0.0.1 ", "\t2001:db8::/32 "], "10.0.0.1", true),
            ("spaces around the slash", &["10.0.0.0 / 8"], "10.9.9.9", true),
        ];
        for &(case, entries, client, want) in cases {
            let list = IpAllowlist::parse(entries).unwrap();
            check(case, list.allows(ip(client)), want);
            check(case, list.is_empty(), entries.is_empty());
        }
    }

    #[test]
    fn one_allowlist_within_another() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], &[&str], bool)] = &[
            // The case, the inner list, the outer list, and whether inner is within outer.
            ("anything within empty", &["10.0.0.0/8"], &[], true),
            ("empty within empty", &[], &[], true),
            ("empty (any) not within a list", &[], &["10.0.0.0/8"], false),
            ("same", &["10.0.0.0/8"], &["10.0.0.0/8"], true),
            ("address inside", &["10.1.2.3"], &["10.0.0.0/8"], true),
            ("narrower network", &["10.1.0.0/16"], &["10.0.0.0/8"], true),
            ("wider network", &["10.0.0.0/7"], &["10.0.0.0/8"], false),
            ("one entry outside", &["10.1.2.3", "11.0.0.1"], &["10.0.0.0/8"], false),
            ("covered only by two together", &["10.0.0.0/23"], &["10.0.0.0/24", "10.0.1.0/24"], false),
            ("each in a different one", &["10.0.0.1", "2001:db8::1"], &["10.0.0.0/24", "2001:db8::/32"], true),
            ("v4 not within v6 any", &["10.0.0.1"], &["::/0"], false),
            ("mapped inside v4", &["::ffff:10.0.0.1"], &["10.0.0.0/8"], true),
        ];
        for &(case, inner, outer, want) in cases {
            let inner = IpAllowlist::parse(inner).unwrap();
            let outer = IpAllowlist::parse(outer).unwrap();
            check(case, inner.is_within(&outer), want);
            if !inner.is_empty() {
                check(case, inner.outside(&outer).next().is_none(), want);
            }
        }
    }

    #[test]
    fn canonical_networks() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("v4 address", "203.0.113.7", "203.0.113.7/32"),
            ("v6 address", "2001:db8::7", "2001:db8::7/128"),
            ("v4 cidr", "10.0.0.0/8", "10.0.0.0/8"),
            ("mapped address", "::ffff:203.0.113.7", "203.0.113.7/32"),
            ("mapped cidr", "::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("mapped /96", "::ffff:0.0.0.0/96", "0.0.0.0/0"),
            ("wider than the mapped range stays v6", "::/95", "::/95"),
        ];
        for &(case, entry, want) in cases {
            let list = IpAllowlist::parse(&[entry]).unwrap();
            check(case, list.networks()[0].to_string(), want.to_owned());
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let prefix = |max| format!("the prefix length must be a number from 0 to {max}");
        let not_ip = "not an IPv4 or IPv6 address".to_owned();
        let not_ip_slash = "not an IPv4 or IPv6 address before the /".to_owned();
        #[rustfmt::skip]
        let cases: &[(&str, &str, String)] = &[
            ("empty", "", "the entry is empty".to_owned()),
            ("blank", "   ", "the entry is empty".to_owned()),
            ("word", "office", not_ip.clone()),
            ("octet too large", "10.0.0.256", not_ip.clone()),
            ("leading zero", "010.0.0.1", not_ip.clone()),
            ("port", "203.0.113.7:80", not_ip.clone()),
            ("brackets", "[::1]", not_ip.clone()),
            ("zone id", "fe80::1%eth0", not_ip.clone()),
            ("hostname", "example.com", not_ip.clone()),
            ("bad address before slash", "10.0.0/8", not_ip_slash.clone()),
            ("v4 prefix too long", "10.0.0.0/33", prefix(32)),
            ("v6 prefix too long", "2001:db8::/129", prefix(128)),
            ("missing prefix", "10.0.0.0/", prefix(32)),
            ("signed prefix", "10.0.0.0/+8", prefix(32)),
            ("negative prefix", "10.0.0.0/-8", prefix(32)),
            ("word prefix", "10.0.0.0/eight", prefix(32)),
            ("netmask form", "10.0.0.0/255.0.0.0", prefix(32)),
            ("two slashes", "10.0.0.0/8/8", prefix(32)),
            ("v4 host bits", "10.0.0.5/8", "host bits are set; the network is 10.0.0.0/8".to_owned()),
            ("v6 host bits", "2001:db8::1/32", "host bits are set; the network is 2001:db8::/32".to_owned()),
            ("mapped host bits", "::ffff:10.0.0.1/104", "host bits are set; the network is ::ffff:10.0.0.0/104".to_owned()),
        ];
        for (case, entry, reason) in cases {
            let want = Err(IpListError {
                entry: (*entry).to_owned(),
                reason: reason.clone(),
            });
            check(case, IpAllowlist::parse(&["10.0.0.1", entry]), want.clone());
            check(
                case,
                TrustedProxies::parse(&[entry]).map(|_| ()),
                want.map(|_| ()),
            );
        }
        let long = "x".repeat(500);
        let err = IpAllowlist::parse(&[&long]).unwrap_err();
        check("long entry is cut", err.entry.len(), MAX_ENTRY_IN_ERROR);
        check(
            "message names the entry",
            IpAllowlist::parse(&["10.0.0.5/8"]).unwrap_err().to_string(),
            "invalid IP address or network \"10.0.0.5/8\": host bits are set; the network is 10.0.0.0/8".to_owned(),
        );
    }

    #[test]
    fn trusted_proxies() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], &str, bool)] = &[
            ("empty trusts no one", &[], "10.0.0.1", false),
            ("inside v4 range", &["10.0.0.0/8"], "10.0.0.1", true),
            ("outside v4 range", &["10.0.0.0/8"], "192.0.2.1", false),
            ("mapped peer", &["10.0.0.0/8"], "::ffff:10.0.0.1", true),
            ("v6 proxy", &["2001:db8:ffff::/48"], "2001:db8:ffff::2", true),
        ];
        for &(case, entries, addr, want) in cases {
            let proxies = TrustedProxies::parse(entries).unwrap();
            check(case, proxies.contains(ip(addr)), want);
            check(case, proxies.is_empty(), entries.is_empty());
        }
    }

    #[test]
    fn client_ip_from_forwarded_for() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap();
        let none = TrustedProxies::default();
        #[rustfmt::skip]
        let cases: &[(&str, &TrustedProxies, &str, Option<&str>, &str)] = &[
            // Each row holds the case, the trusted proxies, the peer, the X-Forwarded-For header
            // and the expected client.
            ("untrusted peer, no header", &trusted, "198.51.100.9", None, "198.51.100.9"),
            ("untrusted peer, forged header ignored", &trusted, "198.51.100.9", Some("203.0.113.7"), "198.51.100.9"),
            ("untrusted peer, forged trusted hop ignored", &trusted, "198.51.100.9", Some("10.0.0.2"), "198.51.100.9"),
            ("no proxies trusted, header ignored", &none, "10.0.0.1", Some("203.0.113.7"), "10.0.0.1"),
            ("trusted peer, no header", &trusted, "10.0.0.1", None, "10.0.0.1"),
            ("trusted peer, empty header", &trusted, "10.0.0.1", Some(""), "10.0.0.1"),
            ("trusted peer, one hop", &trusted, "10.0.0.1", Some("203.0.113.7"), "203.0.113.7"),
            ("forged left entries ignored", &trusted, "10.0.0.1", Some("198.51.100.1, 203.0.113.7"), "203.0.113.7"),
            ("trusted hops skipped", &trusted, "10.0.0.1", Some("203.0.113.7, 10.0.0.3, 10.0.0.2"), "203.0.113.7"),
            ("every hop trusted, leftmost", &trusted, "10.0.0.1", Some("10.0.0.3, 10.0.0.2"), "10.0.0.3"),
            ("garbage left of the client is never reached", &trusted, "10.0.0.1", Some("garbage, 203.0.113.7"), "203.0.113.7"),
            ("spaces tolerated", &trusted, "10.0.0.1", Some("  203.0.113.7 ,10.0.0.2  "), "203.0.113.7"),
            ("empty elements skipped", &trusted, "10.0.0.1", Some("203.0.113.7,, 10.0.0.2,"), "203.0.113.7"),
            ("mapped trusted peer", &trusted, "::ffff:10.0.0.1", Some("203.0.113.7"), "203.0.113.7"),
            ("mapped hop normalised", &trusted, "10.0.0.1", Some("::ffff:203.0.113.7"), "203.0.113.7"),
            ("mapped trusted hop skipped", &trusted, "10.0.0.1", Some("203.0.113.7, ::ffff:10.0.0.2"), "203.0.113.7"),
            ("mapped untrusted peer normalised", &trusted, "::ffff:198.51.100.9", Some("203.0.113.7"), "198.51.100.9"),
            ("v6 client via v6 proxy", &trusted, "2001:db8:ffff::2", Some("2001:db8:1::5"), "2001:db8:1::5"),
            ("v4 hop with port", &trusted, "10.0.0.1", Some("203.0.113.7:4711"), "203.0.113.7"),
            ("v6 hop with port", &trusted, "10.0.0.1", Some("[2001:db8::1]:443"), "2001:db8::1"),
            ("v6 hop in brackets", &trusted, "10.0.0.1", Some("[2001:db8::1]"), "2001:db8::1"),
        ];
        for &(case, proxies, peer, xff, want) in cases {
            check(
                case,
                client_ip(ip(peer), xff, proxies),
                ClientAddr::Ip(ip(want)),
            );
        }
    }

    #[test]
    fn a_trusted_hop_that_is_no_address_makes_the_client_unknown() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            // Each row holds the case, the peer and the X-Forwarded-For header.
            ("the proxy says unknown", "10.0.0.1", "unknown"),
            ("garbage rightmost", "10.0.0.1", "203.0.113.7, unknown"),
            ("garbage behind a trusted hop", "10.0.0.1", "203.0.113.7, garbage, 10.0.0.2"),
            ("a hostname", "10.0.0.1", "client.example.com"),
            ("an obfuscated identifier", "10.0.0.1", "_hidden"),
            ("a replacement character", "10.0.0.1", "203.0.113.7\u{fffd}"),
            ("a bad port", "10.0.0.1", "203.0.113.7:http"),
            ("a zone id", "10.0.0.1", "fe80::1%eth0"),
            ("an address with a prefix", "10.0.0.1", "203.0.113.0/24"),
        ];
        for &(case, peer, xff) in cases {
            let got = client_ip(ip(peer), Some(xff), &trusted);
            check(case, got, ClientAddr::Unknown);
            check(case, got.ip(), None);
            check(case, got.lockout_bucket(), LockoutBucket::Unknown);
            assert_ne!(got.lockout_bucket(), lockout_bucket(ip(peer)), "{case}");
        }
        // An untrusted peer's header is not read at all, garbage or not.
        check(
            "untrusted peer",
            client_ip(ip("198.51.100.9"), Some("unknown"), &trusted),
            ClientAddr::Ip(ip("198.51.100.9")),
        );
        check(
            "display",
            ClientAddr::Unknown.to_string(),
            "unknown".to_owned(),
        );
        check(
            "bucket display",
            LockoutBucket::Unknown.to_string(),
            "unknown".to_owned(),
        );
    }

    #[test]
    fn normalisation() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("mapped v4", "::ffff:192.0.2.1", "192.0.2.1"),
            ("plain v4", "192.0.2.1", "192.0.2.1"),
            ("plain v6", "2001:db8::1", "2001:db8::1"),
            ("v4-compatible stays v6", "::192.0.2.1", "::192.0.2.1"),
            ("loopback v6 stays v6", "::1", "::1"),
        ];
        for &(case, addr, want) in cases {
            check(case, normalize(ip(addr)), ip(want));
        }
    }

    #[test]
    fn lockout_buckets() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("v4 is its own /32", "203.0.113.7", "203.0.113.7/32"),
            ("mapped v4 is its /32", "::ffff:203.0.113.7", "203.0.113.7/32"),
            ("v6 is its /64", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("same /64, same bucket", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
            ("next /64, next bucket", "2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("v6 loopback", "::1", "::/64"),
        ];
        for &(case, addr, want) in cases {
            check(
                case,
                lockout_bucket(ip(addr)),
                LockoutBucket::Net(want.parse::<IpNet>().unwrap()),
            );
        }
    }
}
