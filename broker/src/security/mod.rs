//! Identities and permissions (docs/SECURITY.md): who a connection is ([`Session`]: its
//! principal, from SASL or a client certificate) and what it may do ([`acl`], decided by
//! [`Session::authorize`] over the ACLs in the replicated metadata).
//!
//! Invariants: on a listener in `sasl_listeners` nothing but ApiVersions, SaslHandshake and
//! SaslAuthenticate is served before the exchange succeeded, and a failed exchange closes the
//! connection; a password or credential is never logged; with `authorization` on, an
//! operation no ACL allows is refused (deny wins), except for super users and the broker's
//! own internal calls.

pub mod acl;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use rill_protocol::sasl::{self, Mechanism, SaslError, ScramCredential, ScramServer};
use rill_protocol::ErrorCode;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::server::BrokerState;
use crate::tls::Listener;
use acl::{Operation, ResourceType};

/// How long a failed authentication's answer is held back (Kafka's
/// `connection.failed.authentication.delay.ms`): slows password guessing.
const FAILED_AUTHENTICATION_DELAY: Duration = Duration::from_millis(100);

/// The security settings, parsed once.
#[derive(Debug, Clone)]
pub struct Security {
    /// Listeners whose clients must authenticate with SASL.
    pub sasl_listeners: BTreeSet<Listener>,
    /// Mechanisms offered, in the order the handshake lists them.
    pub mechanisms: Vec<Mechanism>,
    /// Check ACLs.
    pub authorization: bool,
    pub super_users: BTreeSet<String>,
    /// How a client certificate becomes a principal.
    pub tls_principal: TlsPrincipal,
}

/// `tls_principal`: a client certificate's principal is `User:` + its whole subject
/// (`dn`, Kafka's default: `User:CN=alice,O=Example`) or + its common name (`cn`: `User:alice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPrincipal {
    Dn,
    Cn,
}

impl Security {
    pub fn from_config(config: &BrokerConfig) -> Result<Security> {
        let sasl_listeners: BTreeSet<Listener> =
            Listener::parse_list("sasl_listeners", &config.sasl_listeners)?
                .into_iter()
                .collect();
        if let Some(other) = sasl_listeners
            .iter()
            .find(|l| !matches!(l, Listener::Client | Listener::Kafka))
        {
            return Err(Error::InvalidConfig(format!(
                "sasl_listeners: {} cannot require SASL (only client and kafka)",
                other.name()
            )));
        }
        let mut mechanisms = Vec::new();
        for name in listed(&config.sasl_mechanisms) {
            let mechanism = Mechanism::from_name(name).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "sasl_mechanisms: unknown mechanism {name:?} (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN)"
                ))
            })?;
            if !mechanisms.contains(&mechanism) {
                mechanisms.push(mechanism);
            }
        }
        if !sasl_listeners.is_empty() && mechanisms.is_empty() {
            return Err(Error::InvalidConfig(
                "sasl_listeners needs at least one of sasl_mechanisms".into(),
            ));
        }
        let mut super_users = BTreeSet::new();
        for principal in listed(&config.super_users) {
            acl::check_principal(principal)
                .map_err(|e| Error::InvalidConfig(format!("super_users: {e}")))?;
            super_users.insert(principal.to_string());
        }
        let tls_principal = match config.tls_principal.as_str() {
            "dn" => TlsPrincipal::Dn,
            "cn" => TlsPrincipal::Cn,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "tls_principal {other:?}: dn or cn"
                )))
            }
        };
        Ok(Security {
            sasl_listeners,
            mechanisms,
            authorization: config.authorization,
            super_users,
            tls_principal,
        })
    }

    /// The principal of a client certificate (DER), or `None` if it cannot be parsed.
    pub fn certificate_principal(&self, der: &[u8]) -> Option<String> {
        use x509_parser::objects::oid_registry;
        use x509_parser::prelude::*;
        let (_, certificate) = X509Certificate::from_der(der).ok()?;
        let subject = certificate.subject();
        let name = match self.tls_principal {
            TlsPrincipal::Cn => subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())?
                .to_string(),
            TlsPrincipal::Dn => {
                // RFC 4514 order (most specific first), as Kafka prints a subject.
                let rdns: Vec<String> = subject
                    .iter_rdn()
                    .map(|rdn| {
                        rdn.iter()
                            .map(|attribute| {
                                let oid = attribute.attr_type();
                                let key = oid_registry()
                                    .get(oid)
                                    .map(|entry| entry.sn().to_string())
                                    .unwrap_or_else(|| oid.to_id_string());
                                let value = attribute.as_str().unwrap_or("");
                                format!("{key}={value}")
                            })
                            .collect::<Vec<_>>()
                            .join("+")
                    })
                    .collect();
                rdns.into_iter().rev().collect::<Vec<_>>().join(",")
            }
        };
        (!name.is_empty()).then(|| format!("User:{name}"))
    }
}

/// The non-empty items of a comma-separated setting.
fn listed(setting: &str) -> impl Iterator<Item = &str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Where a SASL exchange stands on one connection.
#[derive(Debug, Clone)]
enum Exchange {
    /// No handshake yet.
    Start,
    /// The mechanism is chosen; its first message is next.
    Chosen(Mechanism),
    /// SCRAM: server-first was sent; client-final is next.
    Scram(Box<ScramServer>),
    /// Authenticated.
    Done,
    /// Failed: the connection closes once the answer is sent.
    Failed,
}

/// Who is on the other end of a connection, and where it stands in authentication. Cloned
/// for requests answered after the next one is read (JoinGroup, SyncGroup, OffsetCommit).
#[derive(Debug, Clone)]
pub struct Session {
    /// `User:<name>`; `User:ANONYMOUS` before (or without) authentication.
    pub principal: String,
    /// The client's address, as ACL hosts name it.
    pub host: String,
    /// The broker itself (internal calls): allowed everything.
    internal: bool,
    listener: &'static str,
    requires_sasl: bool,
    exchange: Exchange,
    /// Kafka's SaslHandshake v0: the exchange's tokens come as bare frames, not requests.
    pub bare_tokens: bool,
    /// The client id of the connection's latest request (quotas are per client id).
    pub client_id: String,
    /// Set while the connection is throttled by a quota (`crate::quota`).
    pub mute: crate::quota::Mute,
}

impl Session {
    /// A connection accepted on `listener` from `host`; `certificate` is the principal of
    /// its client certificate (mutual TLS), if it presented one.
    pub fn new(
        state: &BrokerState,
        listener: Listener,
        host: IpAddr,
        certificate: Option<String>,
    ) -> Session {
        Session {
            principal: certificate.unwrap_or_else(|| acl::ANONYMOUS.to_string()),
            host: host.to_string(),
            internal: false,
            listener: listener.name(),
            requires_sasl: state.security.sasl_listeners.contains(&listener),
            exchange: Exchange::Start,
            bare_tokens: false,
            client_id: String::new(),
            mute: Default::default(),
        }
    }

    /// The broker's own calls (the admin HTTP API reading configs): allowed everything.
    pub fn internal() -> Session {
        Session {
            principal: "User:__broker".into(),
            host: "127.0.0.1".into(),
            internal: true,
            listener: "internal",
            requires_sasl: false,
            exchange: Exchange::Done,
            bare_tokens: false,
            client_id: String::new(),
            mute: Default::default(),
        }
    }

    /// Records the client id a request names (kept without allocating while it stays).
    pub fn set_client_id(&mut self, client_id: &str) {
        if self.client_id != client_id {
            self.client_id = client_id.to_string();
        }
    }

    /// The quota this session's requests in `direction` count against, if any: clients
    /// only (never the inter-broker listener or the broker's own calls), and only client ids
    /// with a rate.
    pub fn charge(
        &self,
        state: &BrokerState,
        direction: crate::quota::Direction,
    ) -> Option<crate::quota::Charge> {
        if self.internal || self.listener == Listener::Replication.name() {
            return None;
        }
        let metadata = state.controller.metadata();
        if !state.quotas.any(&metadata.client_quotas) {
            return None;
        }
        state
            .quotas
            .rate(direction, &self.client_id, &metadata.client_quotas)
            .map(|rate| crate::quota::Charge {
                direction,
                client_id: self.client_id.clone(),
                rate,
                mute: self.mute.clone(),
            })
    }

    /// Whether requests other than ApiVersions and SASL may be served.
    pub fn may_serve(&self) -> bool {
        !self.requires_sasl || matches!(self.exchange, Exchange::Done)
    }

    /// Whether the next frame is a bare SASL token (after a SaslHandshake v0 that chose a
    /// mechanism, until the exchange ends).
    pub fn awaits_bare_token(&self) -> bool {
        self.bare_tokens && matches!(self.exchange, Exchange::Chosen(_) | Exchange::Scram(_))
    }

    /// Whether the connection is to close (a failed authentication was answered).
    pub fn failed(&self) -> bool {
        matches!(self.exchange, Exchange::Failed)
    }

    /// Marks the session failed: the connection closes once the pending answers are sent.
    pub fn refuse(&mut self) {
        self.exchange = Exchange::Failed;
    }

    /// SaslHandshake: chooses `mechanism`. The answer lists the offered mechanisms.
    pub fn handshake(&mut self, state: &BrokerState, mechanism: &str) -> (ErrorCode, Vec<String>) {
        let offered: Vec<String> = state
            .security
            .mechanisms
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        if !self.requires_sasl {
            // As Kafka answers on a listener without SASL.
            return (ErrorCode::ILLEGAL_SASL_STATE, Vec::new());
        }
        if !matches!(self.exchange, Exchange::Start) {
            return (ErrorCode::ILLEGAL_SASL_STATE, offered);
        }
        match Mechanism::from_name(mechanism) {
            Some(m) if state.security.mechanisms.contains(&m) => {
                self.exchange = Exchange::Chosen(m);
                (ErrorCode::NONE, offered)
            }
            _ => (ErrorCode::UNSUPPORTED_SASL_MECHANISM, offered),
        }
    }

    /// SaslAuthenticate: one message of the exchange. `Ok` is the server's answer (the
    /// exchange may go on); `Err` is the refusal to send (the connection then closes).
    pub async fn authenticate(
        &mut self,
        state: &BrokerState,
        message: Bytes,
    ) -> std::result::Result<Bytes, (ErrorCode, String)> {
        let exchange = std::mem::replace(&mut self.exchange, Exchange::Failed);
        let (mechanism, outcome) = match exchange {
            Exchange::Chosen(Mechanism::Plain) => {
                (Mechanism::Plain, self.plain(state, &message).await)
            }
            Exchange::Chosen(mechanism) => {
                let users = state.controller.metadata();
                let started = ScramServer::start(mechanism, &message, |user| {
                    credential(&users, user, mechanism)
                });
                match started {
                    Ok((server, server_first)) => {
                        self.exchange = Exchange::Scram(Box::new(server));
                        return Ok(Bytes::from(server_first));
                    }
                    Err(e) => (mechanism, Err(e)),
                }
            }
            Exchange::Scram(server) => {
                let mechanism = server.mechanism();
                (
                    mechanism,
                    server
                        .finish(&message)
                        .map(|(user, last)| (user, Bytes::from(last))),
                )
            }
            Exchange::Start | Exchange::Done | Exchange::Failed => {
                return Err((
                    ErrorCode::ILLEGAL_SASL_STATE,
                    "SaslAuthenticate before SaslHandshake, or after the exchange ended".into(),
                ))
            }
        };
        match outcome {
            Ok((user, last)) => {
                self.principal = format!("User:{user}");
                self.exchange = Exchange::Done;
                state
                    .metrics
                    .authentication(self.listener, mechanism.name(), true);
                tracing::info!(principal = %self.principal, host = %self.host, listener = self.listener, %mechanism, "authenticated");
                Ok(last)
            }
            Err(e) => {
                state
                    .metrics
                    .authentication(self.listener, mechanism.name(), false);
                tracing::warn!(host = %self.host, listener = self.listener, %mechanism, "authentication failed: {e}");
                tokio::time::sleep(FAILED_AUTHENTICATION_DELAY).await;
                Err((ErrorCode::SASL_AUTHENTICATION_FAILED, e.to_string()))
            }
        }
    }

    /// PLAIN: the password checked against the user's stored SCRAM keys (PBKDF2 on the
    /// blocking pool).
    async fn plain(
        &self,
        state: &BrokerState,
        message: &[u8],
    ) -> std::result::Result<(String, Bytes), SaslError> {
        let (user, password) = sasl::parse_plain(message)?;
        let metadata = state.controller.metadata();
        let stored: Vec<(Mechanism, ScramCredential)> = Mechanism::SCRAM
            .into_iter()
            .filter_map(|m| credential(&metadata, &user, m).map(|c| (m, c)))
            .collect();
        let ok = tokio::task::spawn_blocking(move || {
            // The first stored mechanism decides (they were made from one password).
            stored
                .first()
                .is_some_and(|(m, c)| sasl::verify_password(*m, c, &password))
        })
        .await
        .unwrap_or(false);
        if ok {
            Ok((user, Bytes::new()))
        } else {
            Err(SaslError::InvalidCredentials)
        }
    }

    /// Whether ACL checks apply to this session (authorization on, not the broker itself,
    /// not a super user).
    fn checked(&self, state: &BrokerState) -> bool {
        let security = &state.security;
        security.authorization && !self.internal && !security.super_users.contains(&self.principal)
    }

    /// Whether this session may do `operation` on the resource, without logging: for
    /// filtering lists (Metadata of all topics, ListGroups), where what is left out is not a
    /// refusal.
    pub fn allowed(
        &self,
        state: &BrokerState,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        !self.checked(state)
            || acl::authorized(
                &state.controller.metadata().acls,
                &self.principal,
                &self.host,
                operation,
                resource_type,
                name,
            )
    }

    /// Whether this session may do `operation` on the resource. With `authorization` off,
    /// always. A refusal is counted and written to the audit log (target `rill::audit`).
    pub fn authorize(
        &self,
        state: &BrokerState,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if !self.checked(state) {
            return true;
        }
        let allowed = self.allowed(state, operation, resource_type, name);
        if !allowed {
            state.metrics.authorization_denied(resource_type.name());
            tracing::info!(target: "rill::audit", principal = %self.principal, host = %self.host, operation = operation.name(), resource_type = resource_type.name(), resource = name, "denied");
        } else {
            tracing::debug!(target: "rill::audit", principal = %self.principal, host = %self.host, operation = operation.name(), resource_type = resource_type.name(), resource = name, "allowed");
        }
        allowed
    }

    /// The topics among `names` this session may not do `operation` on (each refusal
    /// logged once); empty when nothing is checked.
    pub fn refused_topics<'a>(
        &self,
        state: &BrokerState,
        operation: Operation,
        names: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::HashSet<String> {
        let mut refused = std::collections::HashSet::new();
        if !self.checked(state) {
            return refused;
        }
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if seen.insert(name) && !self.authorize(state, operation, ResourceType::Topic, name) {
                refused.insert(name.to_string());
            }
        }
        refused
    }

    /// Creating topic `name` (explicitly or by auto-creation): `Create` on the cluster or on
    /// the topic, as Kafka.
    pub fn may_create_topic(&self, state: &BrokerState, name: &str) -> bool {
        self.allowed(
            state,
            Operation::Create,
            ResourceType::Cluster,
            acl::CLUSTER,
        ) || self.authorize(state, Operation::Create, ResourceType::Topic, name)
    }

    /// InitProducerId without a transactional id: `IdempotentWrite` on the cluster, or
    /// `Write` on some topic (Kafka 3's rule).
    pub fn may_produce_idempotently(&self, state: &BrokerState) -> bool {
        if !self.checked(state)
            || self.allowed(
                state,
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                acl::CLUSTER,
            )
        {
            return true;
        }
        let metadata = state.controller.metadata();
        let allowed = acl::allows_some(
            &metadata.acls,
            &self.principal,
            &self.host,
            Operation::Write,
            ResourceType::Topic,
        );
        if !allowed {
            // Counted and logged as the cluster refusal Kafka reports.
            self.authorize(
                state,
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                acl::CLUSTER,
            );
        }
        allowed
    }

    /// Like [`Session::authorize`], with the resource type's refusal as the error.
    pub fn check(
        &self,
        state: &BrokerState,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> std::result::Result<(), ErrorCode> {
        if self.authorize(state, operation, resource_type, name) {
            Ok(())
        } else {
            Err(denied(resource_type))
        }
    }

    /// Whether this session may do a cluster operation.
    pub fn check_cluster(
        &self,
        state: &BrokerState,
        operation: Operation,
    ) -> std::result::Result<(), ErrorCode> {
        self.check(state, operation, ResourceType::Cluster, acl::CLUSTER)
    }
}

/// Creates the bootstrap user (`sasl_bootstrap_user`, its password in the environment
/// variable `RILL_SASL_BOOTSTRAP_PASSWORD`) once this broker is registered, if the metadata
/// has no user of that name: the first operator account of a cluster whose listeners all
/// require SASL (Kafka's `kafka-storage format --add-scram`). An existing user is never
/// changed, so a restart with an old password does not undo a password change.
pub async fn bootstrap_user(state: std::sync::Arc<BrokerState>) {
    let (Some(user), Some(password)) = (
        state.config.sasl_bootstrap_user.clone(),
        state.config.sasl_bootstrap_password.clone(),
    ) else {
        return;
    };
    let mut metadata = state.controller.subscribe();
    loop {
        let (registered, exists) = {
            let current = metadata.borrow_and_update();
            (
                state.is_registered(&current),
                current.users.contains_key(&user),
            )
        };
        if exists {
            return;
        }
        if registered {
            match propose_bootstrap_user(&state, &user, &password.0).await {
                Ok(()) => {
                    tracing::info!(%user, "created the bootstrap user (sasl_bootstrap_user)");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%user, "creating the bootstrap user failed, retrying: {e}")
                }
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            changed = metadata.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn propose_bootstrap_user(state: &BrokerState, user: &str, password: &str) -> Result<()> {
    let invalid = |e: SaslError| Error::InvalidConfig(format!("sasl_bootstrap_user: {e}"));
    for mechanism in Mechanism::SCRAM {
        let salt = sasl::new_salt().map_err(invalid)?;
        let salted = sasl::salted_password(mechanism, password, &salt, sasl::DEFAULT_ITERATIONS)
            .map_err(invalid)?;
        let c = sasl::credential(mechanism, &salt, &salted, sasl::DEFAULT_ITERATIONS)
            .map_err(invalid)?;
        let command = crate::controller::Command::UpsertScramCredential {
            user: user.to_string(),
            mechanism: mechanism.name().to_string(),
            credential: crate::controller::metadata::StoredCredential {
                salt: c.salt,
                stored_key: c.stored_key,
                server_key: c.server_key,
                iterations: c.iterations,
            },
        };
        match state.controller.propose(command).await? {
            crate::controller::CommandResult::Ok => {}
            other => {
                return Err(Error::InvalidConfig(format!(
                    "sasl_bootstrap_user refused: {other:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The error code of a refusal on a resource of `resource_type`.
pub fn denied(resource_type: ResourceType) -> ErrorCode {
    match resource_type {
        ResourceType::Topic => ErrorCode::TOPIC_AUTHORIZATION_FAILED,
        ResourceType::Group => ErrorCode::GROUP_AUTHORIZATION_FAILED,
        ResourceType::Cluster => ErrorCode::CLUSTER_AUTHORIZATION_FAILED,
    }
}

/// `user`'s stored credential for a SCRAM mechanism.
fn credential(
    metadata: &crate::controller::MetadataState,
    user: &str,
    mechanism: Mechanism,
) -> Option<ScramCredential> {
    let stored = metadata.users.get(user)?.get(mechanism.name())?;
    Some(ScramCredential {
        salt: stored.salt.clone(),
        stored_key: stored.stored_key.clone(),
        server_key: stored.server_key.clone(),
        iterations: stored.iterations,
    })
}
