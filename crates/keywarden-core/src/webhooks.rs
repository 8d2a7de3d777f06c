//! Webhooks without I/O (`docs/webhooks.md`): the Standard Webhooks signature, the signing
//! secrets, which events an endpoint receives, the retry delay, and which addresses an
//! endpoint may not reach.

use crate::model::Mode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;

/// What a signing secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` + base64 of 32 random bytes from the OS.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// The `v1,<base64>` signature of `body` sent as message `id` at `timestamp` (Unix seconds):
/// HMAC-SHA256 of `id.timestamp.body` keyed by the decoded base64 part of `secret`. `None`
/// when the secret is not a `whsec_` secret with valid base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = B64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: one signature per secret, space-separated (the current
/// secret first, then the previous one during a rotation's overlap).
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .filter_map(|s| sign(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether an event of type `kind` matches an endpoint's subscription: `None` is every
/// type; otherwise an exact type or a family ending in `.*` (`key.*`).
pub fn subscribed(events: Option<&[String]>, kind: &str) -> bool {
    let Some(events) = events else {
        return true;
    };
    events.iter().any(|e| match e.strip_suffix('*') {
        Some(family) if family.ends_with('.') => kind.starts_with(family),
        _ => e == kind,
    })
}

/// Whether an endpoint bound to `account` and `mode` (each `None` for any) receives an
/// event of `event_account` and `event_mode`. An event without a mode (an account's own
/// events) reaches endpoints of either mode.
pub fn reaches(
    account: Option<&str>,
    mode: Option<Mode>,
    event_account: Option<&str>,
    event_mode: Option<Mode>,
) -> bool {
    let account_ok = account.is_none() || account == event_account;
    let mode_ok = match (mode, event_mode) {
        (Some(m), Some(e)) => m == e,
        _ => true,
    };
    account_ok && mode_ok
}

/// The delay before the retry following failed attempt number `failed` (1 for the first
/// attempt), from the schedule of delays in seconds, stretched or shrunk by `jitter` (a
/// fraction in `[-0.2, 0.2]` or so, drawn by the caller); `None` when the schedule is
/// spent and the delivery gives up.
pub fn retry_delay_ms(schedule: &[u64], failed: u32, jitter: f64) -> Option<i64> {
    let idx = usize::try_from(failed.checked_sub(1)?).ok()?;
    let base = *schedule.get(idx)? as f64 * 1000.0;
    let jittered = base * (1.0 + jitter.clamp(-0.5, 0.5));
    Some(jittered.round().max(0.0) as i64)
}

/// A uniformly drawn jitter fraction in `[-0.2, 0.2]`.
pub fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.0;
    }
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    (unit - 0.5) * 0.4
}

/// Whether an endpoint may not be sent to at this address unless private networks are
/// allowed: loopback, private (RFC 1918, unique-local), link-local (which holds the cloud
/// metadata address 169.254.169.254), carrier-grade NAT, unspecified, broadcast,
/// multicast, documentation and benchmarking ranges, and IPv4 reached through IPv6
/// (mapped, NAT64, 6to4) to any of those.
pub fn forbidden_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach IPv4 addresses.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return forbidden_address(IpAddr::V4(v4));
            }
            // IPv4-translated (::ffff:0:a.b.c.d) reaches an IPv4 address too.
            if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return forbidden_address(IpAddr::V4(v4));
            }
            if s[0] == 0x2002 {
                let v4 = std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                );
                return forbidden_address(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo: an IPv4 tunnel endpoint
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64
                || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign("nope", "m", 1, b"").is_none());
        let both = signature_header([secret, secret], "m", 1, b"x");
        assert_eq!(both.split(' ').count(), 2);
    }

    #[test]
    fn new_secrets_sign() {
        let s = new_secret();
        assert!(s.starts_with(SECRET_PREFIX));
        assert!(sign(&s, "m", 1, b"x").is_some());
        assert_ne!(s, new_secret());
    }

    #[test]
    fn subscriptions_match_types_and_families() {
        let ev = vec!["key.*".to_string(), "account.erased".to_string()];
        assert!(subscribed(None, "anything"));
        assert!(subscribed(Some(&ev), "key.created"));
        assert!(subscribed(Some(&ev), "account.erased"));
        assert!(!subscribed(Some(&ev), "account.created"));
        assert!(!subscribed(Some(&ev), "keys.x"));
    }

    #[test]
    fn endpoints_reach_their_account_and_mode() {
        assert!(reaches(None, None, Some("a"), Some(Mode::Live)));
        assert!(reaches(
            Some("a"),
            Some(Mode::Test),
            Some("a"),
            Some(Mode::Test)
        ));
        assert!(reaches(Some("a"), Some(Mode::Test), Some("a"), None));
        assert!(!reaches(
            Some("a"),
            Some(Mode::Test),
            Some("a"),
            Some(Mode::Live)
        ));
        assert!(!reaches(Some("a"), None, Some("b"), None));
        assert!(!reaches(Some("a"), None, None, None));
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let s = [5, 300];
        assert_eq!(retry_delay_ms(&s, 1, 0.0), Some(5_000));
        assert_eq!(retry_delay_ms(&s, 2, 0.0), Some(300_000));
        assert_eq!(retry_delay_ms(&s, 3, 0.0), None);
        assert_eq!(retry_delay_ms(&s, 0, 0.0), None);
        assert_eq!(retry_delay_ms(&s, 1, 0.2), Some(6_000));
        for _ in 0..100 {
            let j = jitter();
            assert!((-0.2..=0.2).contains(&j));
        }
    }

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
        ] {
            assert!(forbidden_address(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(!forbidden_address(good.parse().unwrap()), "{good}");
        }
    }
}
