//! TLS on the broker's listeners and on its connections to other brokers (docs/SECURITY.md
//! "TLS"), with rustls.
//!
//! One identity (`tls_cert_file` + `tls_key_file`) serves every listener named in
//! `tls_listeners`; listeners in `tls_client_auth` also require a client certificate signed by
//! a CA of `tls_ca_file` (mutual TLS). A broker connecting to another broker's inter-broker or
//! controller port uses TLS when that listener is a TLS one here (the cluster shares one
//! configuration), trusts `tls_ca_file` and presents its own certificate.
//!
//! Invariants: a listener not named is plain TCP; the files are read at start (an error stops
//! the broker, naming the file) and again on `reload` (SIGHUP): a reload that fails keeps the
//! configuration in use and says why; connections already open keep the certificate they
//! started with, new ones get the new one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rill_client::tls::{client_config_from, load_certs, load_key, load_roots, provider};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};

/// The broker's listeners, as `tls_listeners` and `tls_client_auth` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Listener {
    /// `listen`: the native protocol.
    Client,
    /// `kafka_listen`.
    Kafka,
    /// `admin_listen` (HTTPS).
    Admin,
    /// `replication_listen`: other brokers' follower fetches.
    Replication,
    /// The controller (Raft) port of `controller_voters`.
    Controller,
}

impl Listener {
    pub const ALL: [Listener; 5] = [
        Listener::Client,
        Listener::Kafka,
        Listener::Admin,
        Listener::Replication,
        Listener::Controller,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Listener::Client => "client",
            Listener::Kafka => "kafka",
            Listener::Admin => "admin",
            Listener::Replication => "replication",
            Listener::Controller => "controller",
        }
    }

    /// Parses a comma-separated list of listener names (`setting` names it in errors).
    pub fn parse_list(setting: &str, text: &str) -> Result<BTreeSet<Listener>> {
        let mut out = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let listener = Listener::ALL
                .into_iter()
                .find(|l| l.name() == name)
                .ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "{setting}: unknown listener {name:?}; expected any of client, kafka, admin, replication, controller"
                    ))
                })?;
            out.insert(listener);
        }
        Ok(out)
    }
}

/// The broker's TLS settings and the configurations built from its files.
pub struct Tls {
    files: Files,
    listeners: BTreeSet<Listener>,
    client_auth: BTreeSet<Listener>,
    loaded: RwLock<Loaded>,
}

/// The PEM files (read at start and on each reload).
struct Files {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: Option<PathBuf>,
}

struct Loaded {
    /// Listeners without client certificates.
    server: Arc<ServerConfig>,
    /// Listeners that require one (`None` without a CA file).
    server_mutual: Option<Arc<ServerConfig>>,
    /// Connections to other brokers (and to this broker's own client listener).
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.files.cert_file)
            .field("listeners", &self.listeners)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

impl Tls {
    /// The TLS of `config`, `None` when no listener uses it. Reads and checks the files.
    pub fn from_config(config: &BrokerConfig) -> Result<Option<Arc<Tls>>> {
        let listeners = Listener::parse_list("tls_listeners", &config.tls_listeners)?;
        let client_auth = Listener::parse_list("tls_client_auth", &config.tls_client_auth)?;
        if let Some(l) = client_auth.difference(&listeners).next() {
            return Err(Error::InvalidConfig(format!(
                "tls_client_auth names {}, which is not in tls_listeners",
                l.name()
            )));
        }
        if listeners.is_empty() {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&config.tls_cert_file, &config.tls_key_file)
        else {
            return Err(Error::InvalidConfig(
                "tls_listeners needs tls_cert_file and tls_key_file (PEM)".into(),
            ));
        };
        let needs_ca = !client_auth.is_empty()
            || listeners.contains(&Listener::Replication)
            || listeners.contains(&Listener::Controller);
        if needs_ca && config.tls_ca_file.is_none() {
            return Err(Error::InvalidConfig(
                "tls_ca_file is needed to check client certificates (tls_client_auth) and other brokers' certificates (replication, controller)".into(),
            ));
        }
        let files = Files {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            ca_file: config.tls_ca_file.clone(),
        };
        let loaded = files.load().map_err(Error::InvalidConfig)?;
        Ok(Some(Arc::new(Tls {
            files,
            listeners,
            client_auth,
            loaded: RwLock::new(loaded),
        })))
    }

    /// Reads the files again (SIGHUP). On an error the configuration in use stays.
    pub fn reload(&self) -> std::result::Result<(), String> {
        let loaded = self.files.load()?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Whether `listener` uses TLS.
    pub fn is_on(&self, listener: Listener) -> bool {
        self.listeners.contains(&listener)
    }

    /// The acceptor of a TLS `listener` (the current certificate), `None` for a plain one.
    pub fn acceptor(&self, listener: Listener) -> Option<TlsAcceptor> {
        if !self.is_on(listener) {
            return None;
        }
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        let config = match (&loaded.server_mutual, self.client_auth.contains(&listener)) {
            (Some(mutual), true) => mutual.clone(),
            _ => loaded.server.clone(),
        };
        Some(TlsAcceptor::from(config))
    }

    /// The client configuration for connecting to a TLS `listener` of a broker (this one's
    /// settings stand for the cluster's), `None` when that listener is plain.
    pub fn connector(&self, listener: Listener) -> Option<Arc<ClientConfig>> {
        self.is_on(listener).then(|| {
            self.loaded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .client
                .clone()
        })
    }
}

impl Files {
    fn load(&self) -> std::result::Result<Loaded, String> {
        let certs = load_certs(&self.cert_file)?;
        let key = load_key(&self.key_file)?;
        let roots = self.ca_file.as_deref().map(load_roots).transpose()?;
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())
        };
        let bad_pair = |e: rustls::Error| {
            format!(
                "{} and {}: {e}",
                self.cert_file.display(),
                self.key_file.display()
            )
        };
        let server = builder()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(bad_pair)?;
        let server_mutual = match &roots {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots.clone()),
                    provider(),
                )
                .build()
                .map_err(|e| format!("tls_ca_file: {e}"))?;
                Some(Arc::new(
                    builder()?
                        .with_client_cert_verifier(verifier)
                        .with_single_cert(certs.clone(), key.clone_key())
                        .map_err(bad_pair)?,
                ))
            }
            None => None,
        };
        let client = match roots {
            Some(roots) => client_config_from(roots, Some((certs, key)))?,
            None => rill_client::TlsOptions::default().client_config()?,
        };
        Ok(Loaded {
            server: Arc::new(server),
            server_mutual,
            client,
        })
    }
}

/// `tls`'s client configuration for connecting to `listener` (plain without TLS).
pub fn connector(tls: &Option<Arc<Tls>>, listener: Listener) -> Option<Arc<ClientConfig>> {
    tls.as_ref().and_then(|t| t.connector(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_lists_are_parsed_and_unknown_names_refused() {
        let parsed = Listener::parse_list("tls_listeners", "client, kafka,replication").unwrap();
        assert_eq!(
            parsed.into_iter().collect::<Vec<_>>(),
            vec![Listener::Client, Listener::Kafka, Listener::Replication]
        );
        assert!(Listener::parse_list("x", "").unwrap().is_empty());
        let err = Listener::parse_list("tls_listeners", "client,raft").unwrap_err();
        assert!(err.to_string().contains("raft"), "{err}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let config = |listeners: &str, auth: &str, files: bool, ca: bool| BrokerConfig {
            tls_listeners: listeners.into(),
            tls_client_auth: auth.into(),
            tls_cert_file: files.then(|| "cert.pem".into()),
            tls_key_file: files.then(|| "key.pem".into()),
            tls_ca_file: ca.then(|| "ca.pem".into()),
            ..BrokerConfig::default()
        };
        assert!(Tls::from_config(&config("", "", false, false))
            .unwrap()
            .is_none());
        let err = |c| {
            Tls::from_config(&c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(config("client", "", false, false)).contains("tls_cert_file"));
        assert!(err(config("client", "kafka", true, true)).contains("not in tls_listeners"));
        assert!(err(config("client", "client", true, false)).contains("tls_ca_file"));
        assert!(err(config("replication", "", true, false)).contains("tls_ca_file"));
        // Missing files are named.
        assert!(err(config("client", "", true, false)).contains("cert.pem"));
    }
}
