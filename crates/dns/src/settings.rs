//! What an operator changes while the server runs: the cluster domain, the TTL, the
//! upstream resolvers and who may use them. The flags give the starting values; a
//! config directory (a ConfigMap mounted as a volume: one file per key) overrides them,
//! and is read again when it changes. A change that does not parse is refused whole:
//! the server goes on with what it had, and says why.

use flatnet_model::dns::ZoneConfig;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The keys of the config directory, each a file.
pub const KEYS: [&str; 4] = ["domain", "ttl", "upstream", "allow-forwarding"];

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub zone: ZoneConfig,
    pub upstreams: Vec<SocketAddr>,
    pub allow_forwarding: Vec<IpNet>,
}

/// The flags: what holds where the config directory says nothing.
#[derive(Debug, Clone)]
pub struct Base {
    pub zone: ZoneConfig,
    /// The resolv.conf whose nameservers are the upstreams by default.
    pub resolv_conf: PathBuf,
    pub allow_forwarding: Vec<IpNet>,
    /// Where this server listens: never an upstream of its own (that would loop).
    pub listen: SocketAddr,
}

/// The config directory's values, by key (a key without a file is absent).
pub type Overrides = std::collections::BTreeMap<String, String>;

/// Reads the config directory's keys; an unreadable directory is an error (a ConfigMap
/// volume that is not mounted), a missing key is not.
pub fn read_dir(dir: &Path) -> Result<Overrides, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory (mount the DNS ConfigMap there)", dir.display()));
    }
    let mut o = Overrides::new();
    for key in KEYS {
        match std::fs::read_to_string(dir.join(key)) {
            Ok(v) => {
                o.insert(key.to_string(), v.trim().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("read {}: {e}", dir.join(key).display())),
        }
    }
    Ok(o)
}

/// A ConfigMap's data as overrides: the keys the server reads (none when it is absent).
pub fn from_config_map(data: Option<&std::collections::BTreeMap<String, String>>) -> Overrides {
    data.into_iter()
        .flatten()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.trim().to_string()))
        .collect()
}

/// The settings from the flags and the overrides; `read` reads a resolv.conf.
pub fn resolve(
    base: &Base,
    o: &Overrides,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Settings, String> {
    let mut zone = base.zone.clone();
    if let Some(d) = o.get("domain").filter(|d| !d.is_empty()) {
        zone.domain = d.trim_end_matches('.').to_string();
    }
    if let Some(t) = o.get("ttl").filter(|t| !t.is_empty()) {
        zone.ttl = t.parse().map_err(|_| format!("ttl {t:?}: a number of seconds"))?;
    }
    zone.check().map_err(|e| format!("domain {:?}: {e} (names under it must fit in 255 bytes)", zone.domain))?;
    let mut upstreams = match o.get("upstream").map(String::as_str).filter(|u| !u.is_empty()) {
        None => resolv_conf(&base.resolv_conf, &read)?,
        Some(path) if path.starts_with('/') => resolv_conf(Path::new(path), &read)?,
        Some(list) => list.split([',', ' ', '\n']).filter(|s| !s.is_empty()).map(upstream).collect::<Result<_, _>>()?,
    };
    // Forwarding to ourselves would loop.
    upstreams.retain(|u| Some(u.ip()) != zone.nameserver && *u != base.listen);
    let allow_forwarding = match o.get("allow-forwarding").filter(|a| !a.is_empty()) {
        None => base.allow_forwarding.clone(),
        Some(list) => list
            .split([',', ' ', '\n'])
            .filter(|s| !s.is_empty())
            .map(|n| n.parse().map_err(|_| format!("allow-forwarding {n:?}: not a CIDR such as 10.244.0.0/16")))
            .collect::<Result<_, _>>()?,
    };
    Ok(Settings { zone, upstreams, allow_forwarding })
}

fn resolv_conf(path: &Path, read: &impl Fn(&Path) -> std::io::Result<String>) -> Result<Vec<SocketAddr>, String> {
    let text = read(path).map_err(|e| format!("read the upstream resolvers from {}: {e}", path.display()))?;
    Ok(crate::forward::upstreams_from_resolv_conf(&text))
}

/// `IP` (port 53) or `IP:PORT`.
fn upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("upstream {s:?}: an address (1.1.1.1, 1.1.1.1:53) or a resolv.conf path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base {
        Base {
            zone: ZoneConfig {
                domain: "cluster.local".into(),
                ttl: 5,
                nameserver: Some("10.96.0.10".parse().unwrap()),
            },
            resolv_conf: "/etc/resolv.conf".into(),
            allow_forwarding: vec!["10.244.0.0/16".parse().unwrap()],
            listen: "0.0.0.0:53".parse().unwrap(),
        }
    }

    fn read(p: &Path) -> std::io::Result<String> {
        match p.to_str() {
            Some("/etc/resolv.conf") => Ok("nameserver 192.0.2.53\nnameserver 10.96.0.10\n".into()),
            Some("/other/resolv.conf") => Ok("nameserver 198.51.100.1\n".into()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    fn o(pairs: &[(&str, &str)]) -> Overrides {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn without_overrides_the_flags_hold_and_we_are_never_our_own_upstream() {
        let s = resolve(&base(), &Overrides::new(), read).unwrap();
        assert_eq!(s.zone.domain, "cluster.local");
        assert_eq!(s.upstreams, ["192.0.2.53:53".parse().unwrap()]);
        assert_eq!(s.allow_forwarding, base().allow_forwarding);
    }

    #[test]
    fn each_key_overrides_its_setting() {
        let s = resolve(
            &base(),
            &o(&[
                ("domain", "corp.example."),
                ("ttl", "30"),
                ("upstream", "198.51.100.7, 198.51.100.8:5353"),
                ("allow-forwarding", "10.244.0.0/16,192.168.0.0/16"),
            ]),
            read,
        )
        .unwrap();
        assert_eq!((s.zone.domain.as_str(), s.zone.ttl), ("corp.example", 30));
        assert_eq!(s.upstreams, ["198.51.100.7:53".parse().unwrap(), "198.51.100.8:5353".parse().unwrap()]);
        assert_eq!(s.allow_forwarding.len(), 2);
        let s = resolve(&base(), &o(&[("upstream", "/other/resolv.conf")]), read).unwrap();
        assert_eq!(s.upstreams, ["198.51.100.1:53".parse().unwrap()]);
    }

    #[test]
    fn a_bad_value_is_refused_with_what_is_wrong() {
        for (k, v, says) in [
            ("ttl", "soon", "a number of seconds"),
            ("upstream", "dns.google", "an address"),
            ("upstream", "/missing/resolv.conf", "/missing/resolv.conf"),
            ("allow-forwarding", "everyone", "not a CIDR"),
            ("domain", &"x".repeat(300), "255 bytes"),
        ] {
            let e = resolve(&base(), &o(&[(k, v)]), read).unwrap_err();
            assert!(e.contains(says), "{k}={v}: {e}");
        }
    }

    #[test]
    fn a_config_maps_keys_are_the_overrides_and_its_absence_is_none() {
        let data: std::collections::BTreeMap<String, String> =
            [("ttl", "9\n"), ("Corefile", "ignored")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(from_config_map(Some(&data)), o(&[("ttl", "9")]));
        assert!(from_config_map(None).is_empty());
    }

    #[test]
    fn the_directory_is_read_key_by_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ttl"), "10\n").unwrap();
        assert_eq!(read_dir(d.path()).unwrap(), o(&[("ttl", "10")]));
        assert!(read_dir(&d.path().join("nope")).unwrap_err().contains("mount the DNS ConfigMap"));
    }
}
