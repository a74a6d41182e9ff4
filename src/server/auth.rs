//! Who may connect: `--auth trust` (the role must exist and may log in;
//! no password) or `--auth password` (SCRAM-SHA-256 against the role's
//! verifier, through pgwire's SASL exchange). Roles live in the catalog
//! (`catalog::roles`); the role a client authenticated as is its session's
//! `current_user`.
//!
//! A failed login says no more than PostgreSQL does: an unknown role, a
//! role without LOGIN or without a password, and a wrong password all
//! answer "password authentication failed" under `password`.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{ClientInfo, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::catalog::Catalog;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Any client that names a role that may log in.
    Trust,
    /// SCRAM-SHA-256 with the role's password.
    Password,
}

impl AuthMode {
    pub fn is_password(self) -> bool {
        self == AuthMode::Password
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "trust" => Ok(AuthMode::Trust),
            "password" | "scram" | "scram-sha-256" => Ok(AuthMode::Password),
            other => Err(format!("unknown --auth {other}: trust or password")),
        }
    }
}

/// The server's parameters for every session: PostgreSQL's names, eddy's
/// values.
fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = "15.0".into();
    parameters.is_superuser = false;
    parameters
}

/// The startup handler: authentication by the server's [`AuthMode`].
pub struct Startup {
    mode: AuthMode,
    catalog: Arc<Catalog>,
    parameters: Arc<DefaultServerParameterProvider>,
    pids: RandomPidSecretKeyGenerator,
    sasl: SASLAuthStartupHandler<DefaultServerParameterProvider>,
}

impl Startup {
    pub fn new(mode: AuthMode, catalog: Arc<Catalog>) -> Self {
        let parameters = Arc::new(server_parameters());
        let source = Arc::new(RoleVerifiers {
            catalog: catalog.clone(),
        });
        let sasl =
            SASLAuthStartupHandler::new(parameters.clone()).with_scram(ScramAuth::new(source));
        Self {
            mode,
            catalog,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
            sasl,
        }
    }
}

fn fatal(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        sqlstate.into(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.mode == AuthMode::Password {
            return self.sasl.on_startup(client, message).await;
        }
        let PgWireFrontendMessage::Startup(startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, &startup).await?;
        save_startup_parameters_to_metadata(client, &startup);
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .ok_or_else(|| {
                fatal(
                    "28000",
                    "no user name specified in the startup packet".into(),
                )
            })?;
        match self.catalog.role(&user) {
            Some(role) if role.login => {}
            Some(_) => {
                return Err(fatal(
                    "28000",
                    format!("role \"{user}\" is not permitted to log in"),
                ))
            }
            None => return Err(fatal("28000", format!("role \"{user}\" does not exist"))),
        }
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret);
        finish_authentication(client, self.parameters.as_ref()).await
    }
}

/// The roles' verifiers, for pgwire's SCRAM exchange.
#[derive(Debug)]
struct RoleVerifiers {
    catalog: Arc<Catalog>,
}

#[async_trait]
impl AuthSource for RoleVerifiers {
    /// Never called: SCRAM asks [`Self::get_scram_secret`], and no other
    /// mechanism is offered.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let refused = || PgWireError::InvalidPassword(user.to_owned());
        let role = self.catalog.role(user).ok_or_else(refused)?;
        if !role.login {
            return Err(refused());
        }
        let verifier = role.password.ok_or_else(refused)?;
        Ok((verifier.secret(), None))
    }
}
