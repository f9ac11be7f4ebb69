//! SASL authentication of a connection (docs/SECURITY.md "Users"): SCRAM-SHA-256,
//! SCRAM-SHA-512 (the password never crosses the wire, and the broker proves it knows the
//! credential) or PLAIN (the password is sent: use it only over TLS). Run once per
//! connection, right after it opened (and after TLS), before any other request.

use std::time::Duration;

use bytes::Bytes;
use rill_protocol::api::{
    RequestBody, ResponseBody, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use rill_protocol::sasl::{self, Mechanism, ScramClient};
use rill_protocol::ErrorCode;

use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// Who to authenticate as.
#[derive(Clone)]
pub struct SaslOptions {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The user name.
    pub user: String,
    /// The password (never printed: `Debug` hides it).
    pub password: String,
}

impl std::fmt::Debug for SaslOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslOptions")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl SaslOptions {
    /// Options for a mechanism by name (`SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`).
    pub fn new(mechanism: &str, user: &str, password: &str) -> Result<SaslOptions> {
        let mechanism = Mechanism::from_name(mechanism).ok_or_else(|| {
            ClientError::Invalid(format!(
                "SASL mechanism {mechanism:?}: SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN"
            ))
        })?;
        if user.is_empty() {
            return Err(ClientError::Invalid("SASL needs a user name".into()));
        }
        Ok(SaslOptions {
            mechanism,
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

fn refused(address: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Authentication {
        address: address.to_string(),
        reason: reason.into(),
    }
}

/// One SaslAuthenticate round: the broker's answer, or why it refused.
async fn round(
    connection: &Connection,
    address: &str,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes> {
    let response = connection
        .request(
            RequestBody::SaslAuthenticate(SaslAuthenticateRequest {
                auth_bytes: Bytes::from(message),
            }),
            timeout,
        )
        .await?;
    let ResponseBody::SaslAuthenticate(response) = response else {
        return Err(refused(address, "unexpected answer to SaslAuthenticate"));
    };
    if response.error_code != ErrorCode::NONE {
        return Err(refused(
            address,
            response
                .error_message
                .unwrap_or_else(|| response.error_code.to_string()),
        ));
    }
    Ok(response.auth_bytes)
}

/// Authenticates `connection` (to `address`) as `options` say.
pub(crate) async fn authenticate(
    connection: &Connection,
    address: &str,
    options: &SaslOptions,
    timeout: Duration,
) -> Result<()> {
    let response = connection
        .request(
            RequestBody::SaslHandshake(SaslHandshakeRequest {
                mechanism: options.mechanism.name().to_string(),
            }),
            timeout,
        )
        .await?;
    let ResponseBody::SaslHandshake(handshake) = response else {
        return Err(refused(address, "unexpected answer to SaslHandshake"));
    };
    if handshake.error_code != ErrorCode::NONE {
        return Err(refused(
            address,
            format!(
                "{}: the broker offers {}",
                handshake.error_code,
                handshake.mechanisms.join(", ")
            ),
        ));
    }
    let invalid = |e: sasl::SaslError| refused(address, e.to_string());
    match options.mechanism {
        Mechanism::Plain => {
            round(
                connection,
                address,
                sasl::plain_message(&options.user, &options.password),
                timeout,
            )
            .await?;
        }
        mechanism => {
            let (mut scram, first) =
                ScramClient::start(mechanism, &options.user, &options.password).map_err(invalid)?;
            let server_first = round(connection, address, first, timeout).await?;
            let last = scram.respond(&server_first).map_err(invalid)?;
            let server_final = round(connection, address, last, timeout).await?;
            scram.verify(&server_final).map_err(invalid)?;
        }
    }
    Ok(())
}
