//! `--web.config.file`: TLS and basic auth in the YAML schema of prometheus/exporter-toolkit.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _, Result};
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    ServerConfig,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
    /// User name -> bcrypt hash of the password.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
    #[serde(default)]
    pub max_version: Option<TlsVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

impl WebConfig {
    /// Reads and checks a web config file. A file that others than its owner may write is
    /// refused: they could turn authentication off.
    pub fn load(path: &Path) -> Result<WebConfig> {
        let what = || format!("--web.config.file {}", path.display());
        let mode = fs::metadata(path).with_context(what)?.permissions().mode();
        if mode & 0o022 != 0 {
            let who = if mode & 0o002 != 0 { "world" } else { "group" };
            bail!(
                "{} is {who}-writable (mode {:o}); run chmod go-w on it",
                what(),
                mode & 0o777
            );
        }
        let text = fs::read_to_string(path).with_context(what)?;
        let config = WebConfig::parse(&text).with_context(what)?;
        config.tls_config().with_context(what)?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<WebConfig> {
        let config: WebConfig = if text.trim().is_empty() {
            WebConfig::default()
        } else {
            serde_norway::from_str(text).context("invalid YAML for the exporter-toolkit web config schema")?
        };
        for (user, hash) in &config.basic_auth_users {
            if let Err(e) = hash.parse::<bcrypt::HashParts>() {
                bail!(
                    "basic_auth_users.{user}: the password must be a bcrypt hash, as htpasswd -nBC 10 \"\" | tr -d ':\\n' \
                     prints ({e})"
                );
            }
        }
        if let Some(tls) = &config.tls_server_config {
            for (field, version) in [("min_version", tls.min_version), ("max_version", tls.max_version)] {
                if matches!(version, Some(TlsVersion::TLS10 | TlsVersion::TLS11)) {
                    bail!("tls_server_config.{field}: {version:?} is not supported; zctrace speaks TLS12 and TLS13", version = version.unwrap());
                }
            }
            if let (Some(min), Some(max)) = (tls.min_version, tls.max_version) {
                if min > max {
                    bail!("tls_server_config: min_version {min:?} is above max_version {max:?}");
                }
            }
        }
        Ok(config)
    }

    /// The rustls server configuration, when TLS is asked for.
    pub fn tls_config(&self) -> Result<Option<Arc<ServerConfig>>> {
        let Some(tls) = &self.tls_server_config else {
            return Ok(None);
        };
        let certs = CertificateDer::pem_file_iter(&tls.cert_file)
            .with_context(|| format!("tls_server_config.cert_file {}", tls.cert_file.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!(
                    "tls_server_config.cert_file {}: not PEM certificates",
                    tls.cert_file.display()
                )
            })?;
        if certs.is_empty() {
            bail!(
                "tls_server_config.cert_file {}: no certificate in it",
                tls.cert_file.display()
            );
        }
        let key = PrivateKeyDer::from_pem_file(&tls.key_file).with_context(|| {
            format!(
                "tls_server_config.key_file {}: no PEM private key in it",
                tls.key_file.display()
            )
        })?;
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (TlsVersion::TLS12, &rustls::version::TLS12),
            (TlsVersion::TLS13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| {
            tls.min_version.is_none_or(|min| *v >= min) && tls.max_version.is_none_or(|max| *v <= max)
        })
        .map(|(_, protocol)| protocol)
        .collect();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("tls_server_config: the key does not match the certificate")?;
        Ok(Some(Arc::new(config)))
    }
}

/// Checks basic auth credentials against the bcrypt hashes, remembering pairs already verified
/// (bcrypt is slow on purpose; a scrape every few seconds should not pay it each time). Only
/// correct pairs are remembered, so the cache grows no larger than the users' passwords.
#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked for unknown users, so that they cost the same time as a wrong password and the
    /// timing tells no one which users exist.
    decoy: String,
    verified: Mutex<HashSet<(String, String)>>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Result<Option<Arc<BasicAuth>>> {
        let Some(cost) = users
            .values()
            .filter_map(|hash| hash.parse::<bcrypt::HashParts>().ok())
            .map(|parts| parts.get_cost())
            .max()
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(BasicAuth {
            users,
            decoy: bcrypt::hash("zctrace decoy", cost).context("hashing the decoy password")?,
            verified: Mutex::default(),
        })))
    }

    /// True when an `Authorization` header value carries credentials already verified: no
    /// bcrypt check needed.
    pub fn remembers(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(decode_basic)
            .is_some_and(|pair| self.verified.lock().expect("auth cache").contains(&pair))
    }

    /// Checks an `Authorization` header value; slow (bcrypt) unless remembered.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(pair) = authorization.and_then(decode_basic) else {
            return false;
        };
        if self.verified.lock().expect("auth cache").contains(&pair) {
            return true;
        }
        let ok = match self.users.get(&pair.0) {
            Some(hash) => bcrypt::verify(&pair.1, hash).unwrap_or(false),
            None => {
                // Spend the time a known user's check costs, then refuse whatever it says.
                let _ = std::hint::black_box(bcrypt::verify(&pair.1, &self.decoy));
                false
            }
        };
        if ok {
            self.verified.lock().expect("auth cache").insert(pair);
        }
        ok
    }
}

/// User and password of a basic auth header; the scheme name is case-insensitive (RFC 9110).
fn decode_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let (scheme, encoded) = header.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_toolkit_schema_parses() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = WebConfig::parse(&format!(
            "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: TLS12\nbasic_auth_users:\n  alice: {hash}\n"
        ))
        .unwrap();
        assert_eq!(
            config.tls_server_config.unwrap().min_version,
            Some(TlsVersion::TLS12)
        );
        assert!(config.basic_auth_users.contains_key("alice"));
        assert!(WebConfig::parse("").unwrap().tls_server_config.is_none());
    }

    #[test]
    fn bad_configs_are_rejected_with_a_reason() {
        let reason = |text: &str| format!("{:#}", WebConfig::parse(text).unwrap_err());
        assert!(reason("junk_key: 1").contains("unknown field `junk_key`"));
        assert!(
            reason("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10")
                .contains("TLS10 is not supported")
        );
        assert!(
            reason("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS9")
                .contains("unknown variant")
        );
        assert!(reason(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12"
        )
        .contains("above max_version"));
        assert!(
            reason("basic_auth_users:\n  bob: hunter2").contains("bob: the password must be a bcrypt hash")
        );
        assert!(reason("basic_auth_users:\n  carol: $2y$10$short")
            .contains("carol: the password must be a bcrypt hash"));
        assert!(reason(": : :").contains("invalid YAML"));
    }

    #[test]
    fn basic_auth_checks_bcrypt_and_rejects_the_rest() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_string(), hash)]))
            .unwrap()
            .unwrap();
        use base64::Engine as _;
        let header = |creds: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            )
        };
        assert!(!auth.remembers(Some(&header("alice:s3cret"))));
        assert!(auth.allows(Some(&header("alice:s3cret"))));
        assert!(auth.remembers(Some(&header("alice:s3cret"))), "cached");
        let lower = header("alice:s3cret").replacen("Basic", "basic", 1);
        assert!(auth.allows(Some(&lower)), "schemes are case-insensitive");
        assert!(!auth.allows(Some(&header("alice:wrong"))));
        assert!(!auth.allows(Some(&header("mallory:s3cret"))));
        assert!(
            !auth.allows(Some(&header("mallory:zctrace decoy"))),
            "the decoy opens nothing"
        );
        assert!(!auth.allows(Some("Bearer x")));
        assert!(!auth.allows(None));
    }

    #[test]
    fn world_writable_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(format!("{:#}", WebConfig::load(&path).unwrap_err()).contains("world-writable"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
        assert!(format!("{:#}", WebConfig::load(&path).unwrap_err()).contains("group-writable"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(WebConfig::load(&path).is_ok());
        assert!(format!(
            "{:#}",
            WebConfig::load(&dir.path().join("missing.yml")).unwrap_err()
        )
        .contains("No such file"));
    }
}
