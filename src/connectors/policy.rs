//! What a connector's options may reach on the server: files only inside
//! the directories the operator allowed (`--allow-path`, none by default)
//! and network peers only among the hosts allowed (`--allow-connect`, any
//! by default). SQL comes from clients; these options must not let a
//! client read the server's files, load code into it, or probe hosts the
//! operator did not mean it to.
//!
//! Checked when a source or sink is created (and again on recovery).
//! A refusal never says whether a file outside the allowed directories
//! exists: the path is judged by its text first, before the file system is
//! asked anything.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use crate::error::{EddyError, Result};

/// The operator's rules for connector options (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ConnectorPolicy {
    /// Directories whose files connector options may name (absolute,
    /// symlinks resolved). Empty: no option may name a file.
    allowed_paths: Vec<PathBuf>,
    /// Hosts sources and sinks may connect to; `None`: any.
    allowed_connect: Option<Vec<HostPattern>>,
}

/// One `--allow-connect` entry: a host name (`kafka.internal`, `*.corp`
/// for every name under `corp`), an address or a CIDR block, each with an
/// optional `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Name(String),
    /// `*.suffix`: names ending in `.suffix`.
    Suffix(String),
    Network {
        address: IpAddr,
        prefix: u8,
    },
}

impl ConnectorPolicy {
    /// A policy allowing files under `paths` (each must exist: it is
    /// resolved now) and connections to `connect` (`None`: anywhere).
    pub fn new(paths: &[PathBuf], connect: Option<Vec<HostPattern>>) -> Result<Self> {
        let mut allowed_paths = Vec::with_capacity(paths.len());
        for path in paths {
            let resolved = std::fs::canonicalize(path).map_err(|e| {
                EddyError::InvalidParameter(format!(
                    "--allow-path {}: {e} (it must be an existing directory)",
                    path.display()
                ))
            })?;
            if !resolved.is_dir() {
                return Err(EddyError::InvalidParameter(format!(
                    "--allow-path {}: not a directory",
                    path.display()
                )));
            }
            allowed_paths.push(resolved);
        }
        Ok(Self {
            allowed_paths,
            allowed_connect: connect,
        })
    }

    /// The file `path` that option `option` names, if it lies inside an
    /// allowed directory (also once symlinks are followed).
    pub fn check_file(&self, option: &str, path: &str) -> Result<PathBuf> {
        let refuse = || {
            let allowed = if self.allowed_paths.is_empty() {
                "none is allowed; start eddy with --allow-path DIR to allow the files in DIR"
                    .to_string()
            } else {
                let dirs: Vec<String> = self
                    .allowed_paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!("allowed: files under {}", dirs.join(", "))
            };
            EddyError::InsufficientPrivilege(format!(
                "option {option} names a file outside the directories eddy may read ({allowed})"
            ))
        };
        // By the text alone first: nothing about the file system is
        // revealed for a path outside.
        let lexical = normalize(Path::new(path)).ok_or_else(refuse)?;
        if !self
            .allowed_paths
            .iter()
            .any(|dir| lexical.starts_with(dir))
        {
            return Err(refuse());
        }
        // Then where symlinks lead, so that a link inside cannot point out.
        let resolved = std::fs::canonicalize(&lexical).map_err(|e| {
            EddyError::InvalidParameter(format!("option {option}: cannot read {path}: {e}"))
        })?;
        if !self
            .allowed_paths
            .iter()
            .any(|dir| resolved.starts_with(dir))
        {
            return Err(refuse());
        }
        Ok(resolved)
    }

    /// Refuses a connection of `what` to `host:port` that `--allow-connect`
    /// does not allow. A host name is allowed when a name pattern matches
    /// it, or when every address it resolves to is in an allowed network.
    pub async fn check_connect(&self, what: &str, host: &str, port: u16) -> Result<()> {
        let Some(patterns) = &self.allowed_connect else {
            return Ok(());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port_ok = |p: &HostPattern| p.port.is_none_or(|allowed| allowed == port);
        let by_name = patterns.iter().any(|p| port_ok(p) && p.matches_name(host));
        if by_name {
            return Ok(());
        }
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(resolved) => resolved.map(|a| a.ip()).collect(),
                Err(_) => vec![],
            },
        };
        let by_address = !addresses.is_empty()
            && addresses
                .iter()
                .all(|a| patterns.iter().any(|p| port_ok(p) && p.matches_address(*a)));
        if by_address {
            return Ok(());
        }
        Err(EddyError::InsufficientPrivilege(format!(
            "{what} may not connect to {host}:{port}: it is not among the hosts eddy may \
             connect to (--allow-connect)"
        )))
    }
}

impl HostPattern {
    fn matches_name(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Name(name) => name.eq_ignore_ascii_case(host),
            HostMatch::Suffix(suffix) => {
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            HostMatch::Network { .. } => false,
        }
    }

    fn matches_address(&self, address: IpAddr) -> bool {
        let HostMatch::Network {
            address: network,
            prefix,
        } = self.host
        else {
            return false;
        };
        match (network, address) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            (IpAddr::V4(n), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl std::str::FromStr for HostPattern {
    type Err = EddyError;

    /// `host`, `host:port`, `*.suffix[:port]`, `10.0.0.0/8`, `[::1]:5432`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            EddyError::InvalidParameter(format!("--allow-connect entry '{text}': {why}"))
        };
        let text = text.trim();
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = after.strip_prefix(':').map(str::parse).transpose();
                (host, port.map_err(|_| bad("the port is not a number"))?)
            }
            None => match text.rsplit_once(':') {
                // An IPv6 address without brackets has several colons.
                Some((host, port)) if !host.contains(':') => (
                    host,
                    Some(port.parse().map_err(|_| bad("the port is not a number"))?),
                ),
                _ => (text, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = if let Some((address, prefix)) = host.split_once('/') {
            let address: IpAddr = address.parse().map_err(|_| bad("not an address"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("the prefix length is out of range"))?;
            HostMatch::Network { address, prefix }
        } else if let Ok(address) = host.parse::<IpAddr>() {
            let prefix = if address.is_ipv4() { 32 } else { 128 };
            HostMatch::Network { address, prefix }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostMatch::Suffix(suffix.to_ascii_lowercase())
        } else {
            HostMatch::Name(host.to_ascii_lowercase())
        };
        Ok(Self { host, port })
    }
}

/// `path` made absolute (against the working directory) with `.` and `..`
/// taken out by their text; `None` when `..` would leave the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Option<Vec<HostPattern>> {
        Some(list.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[tokio::test]
    async fn connections_are_allowed_by_name_address_network_and_port() {
        let policy = ConnectorPolicy::new(
            &[],
            patterns(&["kafka.internal:9092", "*.corp", "10.1.0.0/16", "[::1]:5432"]),
        )
        .unwrap();
        for (host, port, allowed) in [
            ("kafka.internal", 9092, true),
            ("KAFKA.internal", 9092, true),
            ("kafka.internal", 9093, false),
            ("db.corp", 1, true),
            ("corp", 1, false),
            ("evilcorp", 1, false),
            ("10.1.200.3", 5432, true),
            ("10.2.0.1", 5432, false),
            ("::1", 5432, true),
            ("[::1]", 5432, true),
            ("::1", 5433, false),
            ("127.0.0.1", 5432, false),
        ] {
            let outcome = policy.check_connect("a sink", host, port).await;
            assert_eq!(outcome.is_ok(), allowed, "{host}:{port}: {outcome:?}");
            if let Err(e) = outcome {
                assert_eq!(e.sqlstate(), "42501");
            }
        }
        let open = ConnectorPolicy::default();
        assert!(open.check_connect("a sink", "anything", 1).await.is_ok());
        for bad in ["", ":80", "10.0.0.0/40", "host:port", "[::1"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_allowed_only_inside_the_allowed_directories() {
        let root = std::env::temp_dir().join(format!("eddy-policy-{}", std::process::id()));
        let inside = root.join("inside");
        let outside = root.join("outside");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inside.join("schema.avsc"), "{}").unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), inside.join("link")).unwrap();

        let none = ConnectorPolicy::default();
        let e = none.check_file("schema.file", "/etc/passwd").unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.to_string().contains("--allow-path"), "{e}");

        let policy = ConnectorPolicy::new(std::slice::from_ref(&inside), None).unwrap();
        let path = |p: &Path| p.display().to_string();
        assert!(policy
            .check_file("schema.file", &path(&inside.join("schema.avsc")))
            .is_ok());
        // Outside, by `..`, or through a symlink: the same refusal, whether
        // or not the file exists.
        for escape in [
            path(&outside.join("secret")),
            path(&outside.join("missing")),
            format!("{}/../outside/secret", path(&inside)),
            path(&inside.join("link")),
            "/etc/passwd".into(),
        ] {
            let e = policy.check_file("schema.file", &escape).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{escape}: {e}");
        }
        // Inside but missing: an ordinary error naming the file.
        let e = policy
            .check_file("schema.file", &path(&inside.join("missing.avsc")))
            .unwrap_err();
        assert_eq!(e.sqlstate(), "22023", "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
