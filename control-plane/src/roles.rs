//! Roles, the permissions each holds, and what a principal is granted: the vocabulary of the admin
//! API's RBAC ([`crate::identity::rbac`] holds the operation table and enforces it). A module of its
//! own so that tenancy (which checks what a key creator may delegate) does not depend on identity.

use std::fmt;

use crate::http::{Principal, Problem, ProblemKind};

/// A role a principal holds (the `roles` claim of an access token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, every org. The bootstrap admin token is one.
    PlatformAdmin,
    /// Administers one org: its keys, users, billing and notifications.
    OrgAdmin,
    /// Reads one org's objects.
    OrgMember,
    /// Reads one org's billing (balance, ledger, purchases, subscription).
    BillingViewer,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::PlatformAdmin,
        Role::OrgAdmin,
        Role::OrgMember,
        Role::BillingViewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform-admin",
            Role::OrgAdmin => "org-admin",
            Role::OrgMember => "org-member",
            Role::BillingViewer => "billing-viewer",
        }
    }

    /// The role named `name`; unknown names are ignored by callers (a token may carry roles of other
    /// audiences), never mapped to something.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The permissions this role holds.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::PlatformAdmin => &Permission::ALL,
            Role::OrgAdmin => &[
                OrgsRead,
                OrgsWrite,
                KeysRead,
                KeysWrite,
                UsersRead,
                UsersWrite,
                BillingRead,
                BillingWrite,
                NotifyRead,
                NotifyWrite,
            ],
            Role::OrgMember => &[OrgsRead, KeysRead, UsersRead, BillingRead, NotifyRead],
            Role::BillingViewer => &[OrgsRead, BillingRead],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation needs. Org-scoped permissions (`orgs:*`, `keys:*`, `users:*`, `billing:*`,
/// `notify:*`) are granted to org roles; the rest are platform permissions held by `platform-admin`
/// only (a unit test keeps it so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    OrgsRead,
    OrgsWrite,
    KeysRead,
    KeysWrite,
    UsersRead,
    UsersWrite,
    BillingRead,
    BillingWrite,
    NotifyRead,
    NotifyWrite,
    /// Create, list and delete orgs; edit tiers and plans.
    PlatformWrite,
    PlatformRead,
    AuditRead,
    ConfigRead,
    ConfigWrite,
    RegistryRead,
    RegistryWrite,
    FlagsRead,
    FlagsWrite,
    IdentityAdmin,
}

impl Permission {
    pub const ALL: [Permission; 20] = [
        Permission::OrgsRead,
        Permission::OrgsWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::BillingRead,
        Permission::BillingWrite,
        Permission::NotifyRead,
        Permission::NotifyWrite,
        Permission::PlatformWrite,
        Permission::PlatformRead,
        Permission::AuditRead,
        Permission::ConfigRead,
        Permission::ConfigWrite,
        Permission::RegistryRead,
        Permission::RegistryWrite,
        Permission::FlagsRead,
        Permission::FlagsWrite,
        Permission::IdentityAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::OrgsRead => "orgs:read",
            Permission::OrgsWrite => "orgs:write",
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
            Permission::UsersRead => "users:read",
            Permission::UsersWrite => "users:write",
            Permission::BillingRead => "billing:read",
            Permission::BillingWrite => "billing:write",
            Permission::NotifyRead => "notify:read",
            Permission::NotifyWrite => "notify:write",
            Permission::PlatformWrite => "platform:write",
            Permission::PlatformRead => "platform:read",
            Permission::AuditRead => "audit:read",
            Permission::ConfigRead => "config:read",
            Permission::ConfigWrite => "config:write",
            Permission::RegistryRead => "registry:read",
            Permission::RegistryWrite => "registry:write",
            Permission::FlagsRead => "flags:read",
            Permission::FlagsWrite => "flags:write",
            Permission::IdentityAdmin => "identity:admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the caller is, as far as RBAC cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The caller's org; `None` for platform principals (and then only `platform-admin` gets through
    /// org-scoped checks).
    pub org: Option<String>,
    pub roles: Vec<Role>,
}

impl Grant {
    pub fn is_platform_admin(&self) -> bool {
        self.roles.contains(&Role::PlatformAdmin)
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.roles
            .iter()
            .any(|r| r.permissions().contains(&permission))
    }
}

/// Whether `principal` may grant a new key the admin `roles`: only roles whose every permission it
/// holds itself (an org admin may hand out `org-member`, a member nothing), so a key never exceeds
/// its creator. 403 otherwise.
pub fn check_delegation(principal: &Principal, roles: &[String]) -> Result<(), Problem> {
    let g = grant(principal);
    if g.is_platform_admin() {
        return Ok(());
    }
    for name in roles {
        let held = Role::parse(name).is_some_and(|r| r.permissions().iter().all(|p| g.has(*p)));
        if !held {
            return Err(Problem::new(
                ProblemKind::Forbidden,
                format!("cannot grant `{name}`: the caller does not hold all of its permissions"),
            ));
        }
    }
    Ok(())
}

/// What RBAC checks `principal` against: its org and the roles of its names this table knows.
pub fn grant(principal: &Principal) -> Grant {
    Grant {
        org: principal.org.clone(),
        roles: principal
            .roles
            .iter()
            .filter_map(|r| Role::parse(r))
            .collect(),
    }
}
