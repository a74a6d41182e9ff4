//! Roles and privileges: who may log in and how they prove it, who may
//! change the catalog, and who may read or write which relations.
//!
//! - A role may log in (`LOGIN`) and may be a superuser (`SUPERUSER`:
//!   every statement, including all DDL and the `eddy_catalog` tables).
//!   The bootstrap superuser `eddy` always exists.
//! - A password is kept only as a SCRAM-SHA-256 verifier
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as
//!   PostgreSQL stores it): enough to check a client's proof, never enough
//!   to recover the password. `CREATE ROLE ... PASSWORD` given a verifier
//!   keeps it as is (that is how checkpoints replay roles).
//! - A privilege is granted on one relation to one role: SELECT (read it,
//!   SUBSCRIBE to it), INSERT, UPDATE, DELETE (tables). Grants go with the
//!   relation when it is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret};

use crate::common::RelationId;
use crate::error::{EddyError, Result};

/// The superuser that always exists.
pub const BOOTSTRAP_SUPERUSER: &str = "eddy";
/// PBKDF2 iterations of new verifiers (PostgreSQL's default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// A role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub login: bool,
    pub password: Option<ScramVerifier>,
}

impl Role {
    /// The statement that makes this role as it is now (what the DDL log
    /// keeps: the verifier, never a password): CREATE ROLE, or for the
    /// bootstrap superuser, which always exists, ALTER ROLE.
    pub fn defining_statement(&self) -> String {
        let verb = if self.name == BOOTSTRAP_SUPERUSER {
            "ALTER"
        } else {
            "CREATE"
        };
        let mut sql = format!("{verb} ROLE {} WITH", quote_ident(&self.name));
        sql.push_str(if self.superuser {
            " SUPERUSER"
        } else {
            " NOSUPERUSER"
        });
        sql.push_str(if self.login { " LOGIN" } else { " NOLOGIN" });
        match &self.password {
            Some(verifier) => sql.push_str(&format!(" PASSWORD '{verifier}'")),
            None => sql.push_str(" PASSWORD NULL"),
        }
        sql
    }
}

/// A SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramVerifier(<redacted>)")
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(&self.stored_key),
            BASE64.encode(&self.server_key)
        )
    }
}

impl ScramVerifier {
    /// The verifier of `password` with a fresh random salt.
    pub fn from_password(password: &str) -> Result<Self> {
        let mut salt = vec![0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| crate::internal!("no randomness for a password salt"))?;
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS as usize);
        match ScramSecret::verifier_from_salted_password(salt, salted, SCRAM_ITERATIONS as usize) {
            ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            } => Ok(Self {
                iterations: iterations as u32,
                salt,
                stored_key,
                server_key,
            }),
            ScramSecret::SaltedPassword { .. } => Err(crate::internal!("no SCRAM verifier")),
        }
    }

    /// A verifier written as PostgreSQL writes it, if `text` is one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (head, keys) = rest.split_once('$')?;
        let (iterations, salt) = head.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let verifier = Self {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: BASE64.decode(salt).ok()?,
            stored_key: BASE64.decode(stored).ok()?,
            server_key: BASE64.decode(server).ok()?,
        };
        (verifier.stored_key.len() == 32 && verifier.server_key.len() == 32).then_some(verifier)
    }

    /// What pgwire's SCRAM exchange checks a client against.
    pub fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations as usize,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// A privilege on a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
}

impl Privilege {
    pub const ALL: [Privilege; 4] = [
        Privilege::Select,
        Privilege::Insert,
        Privilege::Update,
        Privilege::Delete,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }

    /// The letter of PostgreSQL's `aclitem` (`r`ead, `a`ppend, `w`rite,
    /// `d`elete), for `pg_class.relacl` and psql's `\dp`.
    pub fn acl_letter(self) -> char {
        match self {
            Privilege::Select => 'r',
            Privilege::Insert => 'a',
            Privilege::Update => 'w',
            Privilege::Delete => 'd',
        }
    }
}

/// Every role and every grant.
#[derive(Debug, Clone)]
pub struct Roles {
    roles: BTreeMap<String, Role>,
    /// `(relation, role) -> privileges`.
    grants: BTreeMap<(RelationId, String), BTreeSet<Privilege>>,
}

impl Default for Roles {
    fn default() -> Self {
        let mut roles = BTreeMap::new();
        roles.insert(
            BOOTSTRAP_SUPERUSER.to_string(),
            Role {
                name: BOOTSTRAP_SUPERUSER.to_string(),
                superuser: true,
                login: true,
                password: None,
            },
        );
        Self {
            roles,
            grants: BTreeMap::new(),
        }
    }
}

impl Roles {
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// Adds a role; the name must be free.
    pub fn create(&mut self, role: Role) -> Result<()> {
        if self.roles.contains_key(&role.name) {
            return Err(EddyError::Planning {
                sqlstate: "42710",
                message: format!("role \"{}\" already exists", role.name),
            });
        }
        self.roles.insert(role.name.clone(), role);
        Ok(())
    }

    /// Replaces an existing role (ALTER ROLE).
    pub fn replace(&mut self, role: Role) -> Result<()> {
        match self.roles.get_mut(&role.name) {
            Some(slot) => {
                *slot = role;
                Ok(())
            }
            None => Err(undefined_role(&role.name)),
        }
    }

    /// Drops a role: not the bootstrap superuser, nor one holding grants.
    pub fn drop_role(
        &mut self,
        name: &str,
        relation_name: impl Fn(RelationId) -> String,
    ) -> Result<()> {
        if name == BOOTSTRAP_SUPERUSER {
            return Err(EddyError::Planning {
                sqlstate: "55006",
                message: format!("cannot drop role {name}: it is the bootstrap superuser"),
            });
        }
        if !self.roles.contains_key(name) {
            return Err(undefined_role(name));
        }
        let held: Vec<String> = self
            .grants
            .keys()
            .filter(|(_, role)| role == name)
            .map(|(relation, _)| format!("privileges for {}", relation_name(*relation)))
            .collect();
        if !held.is_empty() {
            return Err(EddyError::DependentObjects {
                message: format!(
                    "role \"{name}\" cannot be dropped because some objects depend on it"
                ),
                detail: held.join("\n"),
            });
        }
        self.roles.remove(name);
        Ok(())
    }

    /// Adds `privileges` on `relation` for `role`.
    pub fn grant(&mut self, relation: RelationId, role: &str, privileges: &[Privilege]) {
        self.grants
            .entry((relation, role.to_string()))
            .or_default()
            .extend(privileges);
    }

    /// Takes `privileges` on `relation` away from `role`.
    pub fn revoke(&mut self, relation: RelationId, role: &str, privileges: &[Privilege]) {
        let key = (relation, role.to_string());
        if let Some(held) = self.grants.get_mut(&key) {
            for privilege in privileges {
                held.remove(privilege);
            }
            if held.is_empty() {
                self.grants.remove(&key);
            }
        }
    }

    /// Forgets every grant on `relation` (it was dropped).
    pub fn forget_relation(&mut self, relation: RelationId) {
        self.grants.retain(|(r, _), _| *r != relation);
    }

    /// The privileges `role` holds on `relation` (a superuser holds all).
    pub fn holds(&self, role: &str, relation: RelationId, privilege: Privilege) -> bool {
        self.roles.get(role).is_some_and(|r| r.superuser)
            || self
                .grants
                .get(&(relation, role.to_string()))
                .is_some_and(|held| held.contains(&privilege))
    }

    /// The grants on `relation`: `(role, privileges)`.
    pub fn grants_on(&self, relation: RelationId) -> Vec<(String, BTreeSet<Privilege>)> {
        self.grants
            .iter()
            .filter(|((r, _), _)| *r == relation)
            .map(|((_, role), privileges)| (role.clone(), privileges.clone()))
            .collect()
    }
}

pub fn undefined_role(name: &str) -> EddyError {
    EddyError::Planning {
        sqlstate: "42704",
        message: format!("role \"{name}\" does not exist"),
    }
}

/// `name` as an SQL identifier (quoted when it is not a plain lower-case
/// name).
pub fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_never_show_the_password() {
        let verifier = ScramVerifier::from_password("s3cret").unwrap();
        let text = verifier.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert!(!text.contains("s3cret"));
        assert_eq!(ScramVerifier::parse(&text), Some(verifier.clone()));
        assert_eq!(format!("{verifier:?}"), "ScramVerifier(<redacted>)");
        // Two verifiers of one password differ (salts are random).
        assert_ne!(ScramVerifier::from_password("s3cret").unwrap(), verifier);
        for bad in [
            "s3cret",
            "SCRAM-SHA-256$x:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
        ] {
            assert!(ScramVerifier::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn grants_are_per_relation_and_role() {
        let mut roles = Roles::default();
        roles
            .create(Role {
                name: "dash".into(),
                superuser: false,
                login: true,
                password: None,
            })
            .unwrap();
        assert!(
            roles.holds("eddy", 1, Privilege::Delete),
            "a superuser holds all"
        );
        assert!(!roles.holds("dash", 1, Privilege::Select));
        roles.grant(1, "dash", &[Privilege::Select]);
        assert!(roles.holds("dash", 1, Privilege::Select));
        assert!(!roles.holds("dash", 2, Privilege::Select));
        assert!(!roles.holds("dash", 1, Privilege::Insert));
        let e = roles
            .drop_role("dash", |r| format!("relation {r}"))
            .unwrap_err();
        assert_eq!(e.sqlstate(), "2BP01");
        roles.revoke(1, "dash", &[Privilege::Select]);
        assert!(!roles.holds("dash", 1, Privilege::Select));
        roles
            .drop_role("dash", |r| format!("relation {r}"))
            .unwrap();
        assert_eq!(
            roles
                .drop_role("eddy", |_| String::new())
                .unwrap_err()
                .sqlstate(),
            "55006"
        );
        assert_eq!(
            roles
                .create(Role {
                    name: "eddy".into(),
                    superuser: false,
                    login: false,
                    password: None
                })
                .unwrap_err()
                .sqlstate(),
            "42710"
        );
    }

    #[test]
    fn a_role_recreates_itself_without_its_password() {
        let role = Role {
            name: "Dash Board".into(),
            superuser: false,
            login: true,
            password: Some(ScramVerifier::from_password("pw").unwrap()),
        };
        let sql = role.defining_statement();
        assert!(
            sql.starts_with(
                "CREATE ROLE \"Dash Board\" WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$"
            ),
            "{sql}"
        );
        assert!(!sql.contains("'pw'"));
    }
}
