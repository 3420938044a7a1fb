//! Fetching `http(s)` images for providers that take only inline bytes (Gemini's
//! `inlineData`), safely: every address a connection goes to is checked (after DNS,
//! on every redirect) against loopback, private, link-local, unique-local, CGNAT and
//! metadata ranges, and the connection goes to the address that was checked, so a name
//! that resolves differently the second time (DNS rebinding) cannot slip through.

use base64::Engine as _;
use futures::StreamExt;
use ipnet::IpNet;
use parlance_core::ir::{ChatRequest, ContentPart, ImageSource};
use parlance_core::Code;
use parlance_core::Error;
use parlance_core::ParamPath;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ImagePolicy {
    /// Ranges allowed although they are private (`[images] allow_private`).
    pub allow_private: Vec<IpNet>,
    pub max_bytes: usize,
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_redirects: usize,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            allow_private: Vec::new(),
            max_bytes: 20 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_redirects: 3,
        }
    }
}

/// `10.0.0.0/8`, `fd00::/8` or a single address, as `[images] allow_private` lists them.
pub fn parse_ranges(ranges: &[String]) -> Result<Vec<IpNet>, String> {
    ranges
        .iter()
        .map(|r| {
            r.parse::<IpNet>()
                .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("[images] allow_private: {r:?} is not an address range like 10.0.0.0/8")
                })
        })
        .collect()
}

/// Why `ip` may not be fetched from, or `None` when it may.
pub fn refused(ip: IpAddr, allow: &[IpNet]) -> Option<&'static str> {
    if allow.iter().any(|n| n.contains(&ip)) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 is that IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused(IpAddr::V4(v4), allow);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a unique-local address (cloud metadata lives at fd00:ec2::254)")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64: the IPv4 address it stands for decides.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                refused(IpAddr::V4(v4), allow)
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if o[0] == 169 && o[1] == 254 {
        Some("a link-local address (cloud metadata lives at 169.254.169.254)")
    } else if ip.is_private() {
        Some("a private address")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("a carrier-grade NAT address")
    } else if o[0] == 0 || ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("a reserved address")
    } else {
        None
    }
}

/// DNS that drops refused addresses, so reqwest can only connect to checked ones.
struct GuardedResolver {
    allow: Vec<IpNet>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let first_refusal = addrs.first().and_then(|a| refused(a.ip(), &allow));
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| refused(a.ip(), &allow).is_none())
                .collect();
            if ok.is_empty() {
                let why = first_refusal.unwrap_or("no address");
                return Err(format!("{host} resolves to {why}").into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An IP-literal host is not resolved, so it is checked here (first URL and redirects).
fn literal_refusal(url: &reqwest::Url, allow: &[IpNet]) -> Option<String> {
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    refused(ip, allow).map(|why| format!("{ip} is {why}"))
}

#[derive(Debug)]
pub struct ImageFetcher {
    client: reqwest::Client,
    policy: ImagePolicy,
}

impl ImageFetcher {
    pub fn new(policy: ImagePolicy) -> Result<Arc<ImageFetcher>, String> {
        let allow = policy.allow_private.clone();
        let max_redirects = policy.max_redirects;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let n = max_redirects;
                attempt.error(format!("more than {n} redirects"))
            } else if let Some(why) = literal_refusal(attempt.url(), &allow) {
                attempt.error(format!("redirected to {why}"))
            } else if !matches!(attempt.url().scheme(), "http" | "https") {
                attempt.error("redirected away from http(s)")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                allow: policy.allow_private.clone(),
            }))
            .redirect(redirect)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.total_timeout)
            // A proxy would connect on our behalf to addresses we never checked.
            .no_proxy()
            .user_agent(concat!("parlance/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("image fetcher: {e}"))?;
        Ok(Arc::new(ImageFetcher { client, policy }))
    }

    /// The image at `url` as (media type, base64), or why not.
    pub async fn fetch(&self, url: &str) -> Result<(String, String), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("only http(s) URLs can be fetched".into());
        }
        if let Some(why) = literal_refusal(&parsed, &self.policy.allow_private) {
            return Err(why);
        }
        let resp = self.client.get(parsed).send().await.map_err(describe)?;
        if !resp.status().is_success() {
            return Err(format!("the server answered {}", resp.status()));
        }
        let max = self.policy.max_bytes;
        if resp.content_length().is_some_and(|n| n as usize > max) {
            return Err(format!("larger than {max} bytes"));
        }
        let declared = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(describe)?;
            if body.len() + chunk.len() > max {
                return Err(format!("larger than {max} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let media_type = match (declared, sniff(&body)) {
            (Some(t), _) if t.starts_with("image/") => t,
            // Servers that label images generically: trust the bytes.
            (_, Some(sniffed)) => sniffed.to_string(),
            (Some(t), None) => return Err(format!("not an image (content type {t})")),
            (None, None) => return Err("not an image".into()),
        };
        let len = body.len();
        let encoded = crate::http::cpu(len, move || {
            base64::engine::general_purpose::STANDARD.encode(&body)
        })
        .await
        .map_err(|e| e.message)?;
        Ok((media_type, encoded))
    }

    /// Replaces every `http(s)` image of `req` by its bytes, fetched concurrently;
    /// a failure is a 400 naming the part and the reason.
    pub async fn inline_images(&self, req: &mut ChatRequest) -> Result<(), Error> {
        let mut wanted = Vec::new();
        for (i, m) in req.messages.iter().enumerate() {
            for (j, p) in m.content.iter().enumerate() {
                if let ContentPart::Image(ImageSource::Url(u)) = p {
                    wanted.push((i, j, u.clone()));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let fetched = futures::future::join_all(wanted.iter().map(|(_, _, u)| self.fetch(u))).await;
        for ((i, j, url), got) in wanted.into_iter().zip(fetched) {
            let (media_type, data) = got.map_err(|why| {
                Error::invalid_param(
                    ParamPath::message_part(i, j),
                    format!("The image at {url} could not be fetched: {why}."),
                )
                .with_code(Code::InvalidImageUrl)
            })?;
            if let Some(part) = req.messages.get_mut(i).and_then(|m| m.content.get_mut(j)) {
                *part = ContentPart::Image(ImageSource::Base64 { media_type, data });
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl parlance_core::InlineImages for ImageFetcher {
    async fn inline_images(&self, request: &mut ChatRequest) -> Result<(), Error> {
        ImageFetcher::inline_images(self, request).await
    }
}

/// The image type of `bytes` by its magic number.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP".as_slice()) {
        Some("image/webp")
    } else {
        None
    }
}

/// A reqwest error with its cause (the resolver's refusal is the interesting part).
fn describe(e: reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text = format!("{text}: {s}");
        src = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_ranges_are_refused_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(refused(ip(bad), &[]).is_some(), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(refused(ip(good), &[]).is_none(), "{good}");
        }
        let allow: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(refused(ip("10.9.9.9"), &allow).is_none());
        assert!(refused(ip("192.168.0.1"), &allow).is_some());
    }

    #[test]
    fn magic_numbers() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<html>"), None);
    }
}
