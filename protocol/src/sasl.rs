//! SASL: the PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802, RFC 7677) exchanges, both
//! sides, as Kafka speaks them (docs/SECURITY.md "Users"). Pure functions over byte messages:
//! the broker and the client carry them in their own frames (the native `SaslAuthenticate`,
//! Kafka's `SaslAuthenticate`).
//!
//! Credentials are kept as Kafka keeps them: per user and SCRAM mechanism a random salt, an
//! iteration count, `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
//! `ServerKey = HMAC(SaltedPassword, "Server Key")`; never the password. PLAIN is checked
//! against the same stored keys (the password is salted with the stored salt and iterations).
//! Channel binding is not supported (`n,,` only), as in Kafka.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

/// Fewest and most PBKDF2 iterations a SCRAM credential may have (Kafka's bounds).
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;
/// Iterations of a credential created without a count (Kafka's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Longest SASL message either side accepts; real ones are a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 8192;

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::Plain,
    ];
    /// The SCRAM mechanisms (those a credential is stored for).
    pub const SCRAM: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    /// The IANA name (`SCRAM-SHA-256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of an IANA name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    fn algorithms(
        self,
    ) -> Option<(
        pbkdf2::Algorithm,
        hmac::Algorithm,
        &'static digest::Algorithm,
    )> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some((
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
            )),
            Mechanism::ScramSha512 => Some((
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
            )),
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an exchange failed. The text goes to the client: it never says whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("authentication failed: invalid credentials")]
    InvalidCredentials,
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    #[error("{0} is not a SCRAM mechanism")]
    NotScram(Mechanism),
    #[error("iterations must be {MIN_ITERATIONS}-{MAX_ITERATIONS}, got {0}")]
    Iterations(u32),
    #[error("the server's signature does not match: it does not know the password")]
    ServerSignature,
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("no random source")]
    Random,
}

/// What a broker stores for one user and SCRAM mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

fn random_bytes(len: usize) -> Result<Vec<u8>, SaslError> {
    let mut bytes = vec![0; len];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SaslError::Random)?;
    Ok(bytes)
}

/// A fresh random salt (32 bytes).
pub fn new_salt() -> Result<Vec<u8>, SaslError> {
    random_bytes(32)
}

/// `SaltedPassword = PBKDF2(HMAC-H, password, salt, iterations)`: what a client sends to
/// create a credential (Kafka's AlterUserScramCredentials), so the password itself never
/// leaves it.
pub fn salted_password(
    mechanism: Mechanism,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<Vec<u8>, SaslError> {
    let (pbkdf, _, digest) = mechanism
        .algorithms()
        .ok_or(SaslError::NotScram(mechanism))?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(SaslError::Iterations(iterations));
    }
    let rounds = NonZeroU32::new(iterations).ok_or(SaslError::Iterations(iterations))?;
    let mut out = vec![0; digest.output_len()];
    pbkdf2::derive(pbkdf, rounds, salt, password.as_bytes(), &mut out);
    Ok(out)
}

fn hmac_sign(algorithm: hmac::Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(algorithm, key), data)
        .as_ref()
        .to_vec()
}

/// The stored credential for a salted password.
pub fn credential(
    mechanism: Mechanism,
    salt: &[u8],
    salted_password: &[u8],
    iterations: u32,
) -> Result<ScramCredential, SaslError> {
    let (_, mac, digest) = mechanism
        .algorithms()
        .ok_or(SaslError::NotScram(mechanism))?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(SaslError::Iterations(iterations));
    }
    if salted_password.len() != digest.output_len() || salt.is_empty() {
        return Err(SaslError::Malformed(
            "salted password or salt of the wrong length",
        ));
    }
    let client_key = hmac_sign(mac, salted_password, b"Client Key");
    Ok(ScramCredential {
        salt: salt.to_vec(),
        stored_key: digest::digest(digest, &client_key).as_ref().to_vec(),
        server_key: hmac_sign(mac, salted_password, b"Server Key"),
        iterations,
    })
}

/// Whether `password` is the one `stored` was made from (PLAIN's check).
pub fn verify_password(mechanism: Mechanism, stored: &ScramCredential, password: &str) -> bool {
    let Ok(salted) = salted_password(mechanism, password, &stored.salt, stored.iterations) else {
        return false;
    };
    match credential(mechanism, &stored.salt, &salted, stored.iterations) {
        Ok(derived) => constant_time_eq(&derived.stored_key, &stored.stored_key),
        Err(_) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ------------------------------------------------------------------ PLAIN

/// PLAIN's one message: `authzid NUL authcid NUL password` (no authzid).
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

/// PLAIN's user and password. An authzid, if given, must name the same user (as Kafka).
pub fn parse_plain(message: &[u8]) -> Result<(String, String), SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed("not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN takes authzid NUL user NUL password",
        ));
    };
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed(
            "PLAIN user and password must not be empty",
        ));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::InvalidCredentials);
    }
    Ok((user.to_string(), password.to_string()))
}

// ------------------------------------------------------------------ SCRAM messages

/// `saslname` escaping of a user name (`,` -> `=2C`, `=` -> `=3D`).
pub fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The inverse of [`escape_name`]; any other `=` sequence is malformed.
pub fn unescape_name(escaped: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError::Malformed("bad escape in user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `key=value` attributes of a SCRAM message, in order.
fn attributes(message: &str) -> Result<Vec<(char, &str)>, SaslError> {
    message
        .split(',')
        .map(|part| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(key), Some('=')) if key.is_ascii_alphabetic() => Ok((key, &part[2..])),
                _ => Err(SaslError::Malformed("expected key=value attributes")),
            }
        })
        .collect()
}

fn text(message: &[u8]) -> Result<&str, SaslError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(SaslError::Malformed("message too long"));
    }
    std::str::from_utf8(message).map_err(|_| SaslError::Malformed("not UTF-8"))
}

fn nonce() -> Result<String, SaslError> {
    Ok(BASE64.encode(random_bytes(24)?))
}

/// The client-first message's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    pub nonce: String,
}

impl ClientFirst {
    /// `n,,n=<user>,r=<nonce>`.
    pub fn encode(&self) -> String {
        format!("n,,{}", self.bare())
    }

    fn bare(&self) -> String {
        format!("n={},r={}", escape_name(&self.user), self.nonce)
    }

    /// Parses a client-first message; only `n,,` (no channel binding, no authzid other than
    /// the user) and no extensions (Kafka's delegation tokens are not supported).
    pub fn decode(message: &[u8]) -> Result<ClientFirst, SaslError> {
        let message = text(message)?;
        let rest = if let Some(rest) = message.strip_prefix("n,,") {
            rest
        } else if let Some(rest) = message.strip_prefix("n,a=") {
            let (_, rest) = rest
                .split_once(',')
                .ok_or(SaslError::Malformed("bad GS2 header"))?;
            rest
        } else {
            return Err(SaslError::Malformed(
                "channel binding is not supported (use n,,)",
            ));
        };
        match attributes(rest)?.as_slice() {
            [('n', user), ('r', nonce)] if !nonce.is_empty() && nonce.is_ascii() => {
                let user = unescape_name(user)?;
                if user.is_empty() {
                    return Err(SaslError::Malformed("empty user name"));
                }
                Ok(ClientFirst {
                    user,
                    nonce: nonce.to_string(),
                })
            }
            _ => Err(SaslError::Malformed("expected n=<user>,r=<nonce>")),
        }
    }
}

/// A SCRAM exchange, broker side: built from the client-first message and the user's stored
/// credential, it answers server-first, then checks client-final.
#[derive(Debug, Clone)]
pub struct ScramServer {
    mechanism: Mechanism,
    user: String,
    credential: Option<ScramCredential>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Starts an exchange. `lookup` gives the user's credential for this mechanism; an
    /// unknown user gets a made-up salt and fails at the proof, so the answer never says
    /// whether a user exists.
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(ScramServer, Vec<u8>), SaslError> {
        if mechanism.algorithms().is_none() {
            return Err(SaslError::NotScram(mechanism));
        }
        let first = ClientFirst::decode(client_first)?;
        let credential = lookup(&first.user);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (
                digest::digest(&digest::SHA256, first.user.as_bytes())
                    .as_ref()
                    .to_vec(),
                DEFAULT_ITERATIONS,
            ),
        };
        let nonce = format!("{}{}", first.nonce, nonce()?);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        Ok((
            ScramServer {
                mechanism,
                client_first_bare: first.bare(),
                user: first.user,
                credential,
                server_first: server_first.clone(),
                nonce,
            },
            server_first.into_bytes(),
        ))
    }

    /// The user this exchange is for.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The exchange's mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Checks client-final; `Ok` carries the authenticated user and server-final.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
        let message = text(client_final)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(SaslError::Malformed("client-final has no proof"))?;
        match attributes(without_proof)?.as_slice() {
            [('c', binding), ('r', nonce)] => {
                if *binding != "biws" && BASE64.decode(binding).ok().as_deref() != Some(b"n,,") {
                    // "biws" is base64("n,,"); an authzid header is accepted too.
                    let decoded = BASE64
                        .decode(binding)
                        .map_err(|_| SaslError::Malformed("bad channel binding"))?;
                    if !decoded.starts_with(b"n,a=") {
                        return Err(SaslError::Malformed("channel binding is not supported"));
                    }
                }
                // librdkafka sends its own nonce before the whole server nonce (which already
                // starts with it); Kafka accepts that (it checks `endsWith`), so do we. The
                // proof covers the message as sent either way.
                let doubled = nonce
                    .strip_suffix(self.nonce.as_str())
                    .is_some_and(|head| self.nonce.starts_with(head) && !head.is_empty());
                if *nonce != self.nonce && !doubled {
                    return Err(SaslError::InvalidCredentials);
                }
            }
            _ => return Err(SaslError::Malformed("expected c=...,r=...,p=...")),
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| SaslError::Malformed("proof is not base64"))?;
        let credential = self.credential.ok_or(SaslError::InvalidCredentials)?;
        let (_, mac, digest) = self
            .mechanism
            .algorithms()
            .ok_or(SaslError::NotScram(self.mechanism))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac_sign(mac, &credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(SaslError::InvalidCredentials);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = digest::digest(digest, &client_key);
        if !constant_time_eq(stored.as_ref(), &credential.stored_key) {
            return Err(SaslError::InvalidCredentials);
        }
        let server_signature = hmac_sign(mac, &credential.server_key, auth_message.as_bytes());
        Ok((
            self.user,
            format!("v={}", BASE64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// A SCRAM exchange, client side.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    first: ClientFirst,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange; the returned bytes are client-first.
    pub fn start(
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> Result<(ScramClient, Vec<u8>), SaslError> {
        if mechanism.algorithms().is_none() {
            return Err(SaslError::NotScram(mechanism));
        }
        let first = ClientFirst {
            user: user.to_string(),
            nonce: nonce()?,
        };
        let message = first.encode().into_bytes();
        Ok((
            ScramClient {
                mechanism,
                password: password.to_string(),
                first,
                server_signature: None,
            },
            message,
        ))
    }

    /// Answers server-first with client-final.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let message = text(server_first)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(SaslError::Refused(error.to_string()));
        }
        let attrs = attributes(message)?;
        let [('r', nonce), ('s', salt), ('i', iterations), ..] = attrs.as_slice() else {
            return Err(SaslError::Malformed("expected r=...,s=...,i=..."));
        };
        if !nonce.starts_with(&self.first.nonce) || nonce.len() == self.first.nonce.len() {
            return Err(SaslError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| SaslError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| SaslError::Malformed("iterations is not a number"))?;
        let salted = salted_password(self.mechanism, &self.password, &salt, iterations)?;
        let (_, mac, digest) = self
            .mechanism
            .algorithms()
            .ok_or(SaslError::NotScram(self.mechanism))?;
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{message},{without_proof}", self.first.bare());
        let client_key = hmac_sign(mac, &salted, b"Client Key");
        let stored_key = digest::digest(digest, &client_key);
        let client_signature = hmac_sign(mac, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac_sign(mac, &salted, b"Server Key");
        self.server_signature = Some(hmac_sign(mac, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks server-final: the server proves it knows the credential.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let message = text(server_final)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(SaslError::Refused(error.to_string()));
        }
        let signature = message
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or(SaslError::Malformed("expected v=<signature>"))?;
        match &self.server_signature {
            Some(expected) if constant_time_eq(expected, &signature) => Ok(()),
            _ => Err(SaslError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stored(mechanism: Mechanism, password: &str) -> ScramCredential {
        let salt = new_salt().unwrap();
        let salted = salted_password(mechanism, password, &salt, MIN_ITERATIONS).unwrap();
        credential(mechanism, &salt, &salted, MIN_ITERATIONS).unwrap()
    }

    fn exchange(
        mechanism: Mechanism,
        user: &str,
        password: &str,
        known: Option<ScramCredential>,
    ) -> Result<String, SaslError> {
        let (mut client, first) = ScramClient::start(mechanism, user, password)?;
        let (server, server_first) = ScramServer::start(mechanism, &first, |_| known)?;
        let last = client.respond(&server_first)?;
        let (user, server_final) = server.finish(&last)?;
        client.verify(&server_final)?;
        Ok(user)
    }

    #[test]
    fn rfc7677_test_vector_is_reproduced() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(Mechanism::ScramSha256, "pencil", &salt, 4096).unwrap();
        let credential = credential(Mechanism::ScramSha256, &salt, &salted, 4096).unwrap();
        let client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (mut server, _) =
            ScramServer::start(Mechanism::ScramSha256, client_first, |_| Some(credential)).unwrap();
        // Replace the random part of the server's nonce by the RFC's.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let (user, server_final) = server.finish(client_final).unwrap();
        assert_eq!(user, "user");
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn scram_accepts_the_password_and_refuses_others() {
        for mechanism in Mechanism::SCRAM {
            let known = stored(mechanism, "s3cret");
            assert_eq!(
                exchange(mechanism, "alice", "s3cret", Some(known.clone())).unwrap(),
                "alice"
            );
            assert_eq!(
                exchange(mechanism, "alice", "wrong", Some(known)),
                Err(SaslError::InvalidCredentials)
            );
            assert_eq!(
                exchange(mechanism, "nobody", "s3cret", None),
                Err(SaslError::InvalidCredentials)
            );
        }
    }

    /// client-final as librdkafka writes it: `r=` its nonce, then the whole server nonce.
    fn librdkafka_final(server_first: &[u8], client_nonce: &str, salted: &[u8]) -> String {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let server_nonce = server_first[2..].split(',').next().unwrap();
        let without_proof = format!("c=biws,r={client_nonce}{server_nonce}");
        let auth = format!("n=a,r=abc,{server_first},{without_proof}");
        let (_, mac, digest) = Mechanism::ScramSha256.algorithms().unwrap();
        let client_key = hmac_sign(mac, salted, b"Client Key");
        let stored_key = digest::digest(digest, &client_key);
        let signature = hmac_sign(mac, stored_key.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn librdkafkas_doubled_nonce_is_accepted_and_a_foreign_prefix_is_not() {
        let salted = salted_password(Mechanism::ScramSha256, "pw", b"salt", 4096).unwrap();
        let known = credential(Mechanism::ScramSha256, b"salt", &salted, 4096).unwrap();
        for (client_nonce, accepted) in [("abc", true), ("xyz", false)] {
            let (server, server_first) =
                ScramServer::start(Mechanism::ScramSha256, b"n,,n=a,r=abc", |_| {
                    Some(known.clone())
                })
                .unwrap();
            let last = librdkafka_final(&server_first, client_nonce, &salted);
            assert_eq!(
                server.finish(last.as_bytes()).is_ok(),
                accepted,
                "{client_nonce}"
            );
        }
    }

    #[test]
    fn a_credential_of_the_other_hash_does_not_authenticate() {
        let sha512 = stored(Mechanism::ScramSha512, "pw");
        assert!(exchange(Mechanism::ScramSha256, "a", "pw", Some(sha512)).is_err());
    }

    #[test]
    fn a_server_without_the_credential_is_caught_by_the_client() {
        let (mut client, first) = ScramClient::start(Mechanism::ScramSha256, "a", "pw").unwrap();
        let known = stored(Mechanism::ScramSha256, "pw");
        let (server, server_first) =
            ScramServer::start(Mechanism::ScramSha256, &first, |_| Some(known)).unwrap();
        let last = client.respond(&server_first).unwrap();
        server.finish(&last).unwrap();
        assert_eq!(
            client.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(SaslError::ServerSignature)
        );
    }

    #[test]
    fn plain_is_checked_against_the_stored_keys() {
        for mechanism in Mechanism::SCRAM {
            let known = stored(mechanism, "pw");
            assert!(verify_password(mechanism, &known, "pw"));
            assert!(!verify_password(mechanism, &known, "pW"));
        }
        assert_eq!(
            parse_plain(&plain_message("bob", "x\u{e9}y")).unwrap(),
            ("bob".to_string(), "x\u{e9}y".to_string())
        );
        assert_eq!(
            parse_plain(b"bob\0bob\0pw").unwrap(),
            ("bob".into(), "pw".into())
        );
        assert_eq!(
            parse_plain(b"eve\0bob\0pw"),
            Err(SaslError::InvalidCredentials)
        );
        assert!(parse_plain(b"\0bob").is_err());
        assert!(parse_plain(b"\0bob\0").is_err());
        assert!(parse_plain(b"\0bob\0pw\0more").is_err());
    }

    #[test]
    fn bad_messages_are_errors() {
        for bad in [
            &b""[..],
            b"p=tls-unique,,n=a,r=x",
            b"y,,n=a,r=x",
            b"n,,n=a",
            b"n,,r=x,n=a",
            b"n,,n=a=ZZ,r=x",
            b"n,,n=,r=x",
            b"n,,n=a,r=x,t=tokenauth",
            b"\xff",
        ] {
            assert!(ClientFirst::decode(bad).is_err(), "{bad:?}");
        }
        let (server, _) =
            ScramServer::start(Mechanism::ScramSha256, b"n,,n=a,r=x", |_| None).unwrap();
        assert!(server.finish(b"c=biws,r=x").is_err());
        assert!(salted_password(Mechanism::ScramSha256, "p", b"s", 100).is_err());
        assert!(salted_password(Mechanism::Plain, "p", b"s", 4096).is_err());
        assert!(credential(Mechanism::ScramSha256, b"s", &[0; 3], 4096).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn names_round_trip_through_escaping(name in "\\PC{0,20}") {
            prop_assert_eq!(unescape_name(&escape_name(&name)).unwrap(), name);
        }

        #[test]
        fn client_first_round_trips(user in "[^\u{0}]{1,20}", nonce in "[!-+--~]{1,32}") {
            let first = ClientFirst { user, nonce };
            prop_assert_eq!(ClientFirst::decode(first.encode().as_bytes()).unwrap(), first);
        }

        #[test]
        fn any_user_and_password_authenticate(user in "\\PC{1,16}", password in "\\PC{1,16}") {
            let known = stored(Mechanism::ScramSha256, &password);
            prop_assert_eq!(exchange(Mechanism::ScramSha256, &user, &password, Some(known)).unwrap(), user);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_server(first in proptest::collection::vec(any::<u8>(), 0..64),
                                                  last in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((server, _)) = ScramServer::start(Mechanism::ScramSha512, &first, |_| None) {
                prop_assert!(server.finish(&last).is_err());
            }
            let _ = parse_plain(&first);
        }
    }
}
