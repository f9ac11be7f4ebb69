//! ACLs, Kafka's model (docs/SECURITY.md "ACLs"): a binding allows or denies one principal,
//! from one host, one operation on the resources a pattern names. Pure: the bindings live in
//! the replicated metadata (`MetadataState::acls`), [`authorized`] decides.
//!
//! Decision, as Kafka's `StandardAuthorizer`: a matching DENY wins over any ALLOW; without a
//! matching ALLOW the answer is no (there is no "allow if no ACL"). `*` as a literal resource
//! name, `User:*` as principal and `*` as host match everything. READ, WRITE, DELETE and ALTER
//! imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS; ALL is every operation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The one cluster resource's name (Kafka's).
pub const CLUSTER: &str = "kafka-cluster";
/// The principal of a connection that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name as written (`*`: every resource of the type).
    Literal,
    /// Every resource whose name starts with it.
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    pub resource_name: String,
    /// `User:<name>` (`User:*`: everyone).
    pub principal: String,
    /// A client's IP address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// How a filter matches a binding's pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    /// Either pattern; a name must be the binding's name exactly.
    #[default]
    Any,
    /// Every binding that applies to the name: literal with that name or `*`, and prefixed
    /// ones the name starts with.
    Match,
    Literal,
    Prefixed,
}

/// Which bindings a DescribeAcls or DeleteAcls names: `None` is "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub pattern_type: PatternFilter,
    pub resource_name: Option<String>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Whether `acl` is one this filter names.
    pub fn matches(&self, acl: &AclBinding) -> bool {
        let name = |n: &String| match self.pattern_type {
            PatternFilter::Match => match acl.pattern_type {
                PatternType::Literal => acl.resource_name == *n || acl.resource_name == "*",
                PatternType::Prefixed => n.starts_with(&acl.resource_name),
            },
            _ => *n == acl.resource_name,
        };
        self.resource_type.is_none_or(|t| t == acl.resource_type)
            && match self.pattern_type {
                PatternFilter::Any | PatternFilter::Match => true,
                PatternFilter::Literal => acl.pattern_type == PatternType::Literal,
                PatternFilter::Prefixed => acl.pattern_type == PatternType::Prefixed,
            }
            && self.resource_name.as_ref().is_none_or(name)
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

impl Operation {
    pub const NAMES: [(Operation, &'static str); 11] = [
        (Operation::All, "all"),
        (Operation::Read, "read"),
        (Operation::Write, "write"),
        (Operation::Create, "create"),
        (Operation::Delete, "delete"),
        (Operation::Alter, "alter"),
        (Operation::Describe, "describe"),
        (Operation::ClusterAction, "cluster_action"),
        (Operation::DescribeConfigs, "describe_configs"),
        (Operation::AlterConfigs, "alter_configs"),
        (Operation::IdempotentWrite, "idempotent_write"),
    ];

    /// Whether a binding for `self` allows `wanted`.
    fn covers(self, wanted: Operation) -> bool {
        self == wanted
            || self == Operation::All
            || (wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    pub fn name(self) -> &'static str {
        Operation::NAMES
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("unknown", |(_, name)| name)
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        let name = name.to_ascii_lowercase().replace('-', "_");
        Operation::NAMES
            .iter()
            .find(|(_, n)| *n == name || n.replace('_', "") == name)
            .map(|(op, _)| *op)
    }
}

impl ResourceType {
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
        }
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}:{} from {} on {}",
            self.principal,
            match self.permission {
                Permission::Allow => "allow",
                Permission::Deny => "deny",
            },
            self.operation.name(),
            self.resource_type.name(),
            self.resource_name,
            self.host,
            match self.pattern_type {
                PatternType::Literal => "literal",
                PatternType::Prefixed => "prefixed",
            }
        )
    }
}

// ------------------------------------------------------------------ wire codes (Kafka's)

fn resource_type_code(t: ResourceType) -> u8 {
    match t {
        ResourceType::Topic => 2,
        ResourceType::Group => 3,
        ResourceType::Cluster => 4,
    }
}

fn operation_code(o: Operation) -> u8 {
    Operation::NAMES
        .iter()
        .position(|(op, _)| *op == o)
        .map_or(0, |i| i as u8 + 2)
}

fn resource_type_of(code: u8) -> Result<Option<ResourceType>, String> {
    match code {
        1 => Ok(None),
        2 => Ok(Some(ResourceType::Topic)),
        3 => Ok(Some(ResourceType::Group)),
        4 => Ok(Some(ResourceType::Cluster)),
        other => Err(format!("unknown or unsupported resource type {other}")),
    }
}

fn operation_of(code: u8) -> Result<Option<Operation>, String> {
    match code {
        1 => Ok(None),
        2..=12 => Ok(Some(Operation::NAMES[code as usize - 2].0)),
        other => Err(format!("unknown operation {other}")),
    }
}

fn permission_of(code: u8) -> Result<Option<Permission>, String> {
    match code {
        1 => Ok(None),
        2 => Ok(Some(Permission::Deny)),
        3 => Ok(Some(Permission::Allow)),
        other => Err(format!("unknown permission {other}")),
    }
}

/// A binding as the wire carries it.
pub fn to_entry(acl: &AclBinding) -> rill_protocol::api::AclEntry {
    rill_protocol::api::AclEntry {
        resource_type: resource_type_code(acl.resource_type),
        resource_name: acl.resource_name.clone(),
        pattern_type: match acl.pattern_type {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        },
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        operation: operation_code(acl.operation),
        permission: match acl.permission {
            Permission::Deny => 2,
            Permission::Allow => 3,
        },
    }
}

/// Checks a principal's form: `User:<name>`.
pub fn check_principal(principal: &str) -> Result<(), String> {
    match principal.split_once(':') {
        Some(("User", name)) if !name.is_empty() => Ok(()),
        _ => Err(format!(
            "principal {principal:?}: expected User:<name> (User:* for everyone)"
        )),
    }
}

/// A binding from the wire; `Err` says what is wrong (any code 1 "any" is refused here).
pub fn from_entry(entry: &rill_protocol::api::AclEntry) -> Result<AclBinding, String> {
    let resource_type =
        resource_type_of(entry.resource_type)?.ok_or("a binding needs a resource type")?;
    let operation = operation_of(entry.operation)?.ok_or("a binding needs an operation")?;
    let permission = permission_of(entry.permission)?.ok_or("a binding needs a permission")?;
    let pattern_type = match entry.pattern_type {
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        other => {
            return Err(format!(
                "a binding's pattern is literal (3) or prefixed (4), not {other}"
            ))
        }
    };
    check_principal(&entry.principal)?;
    if entry.resource_name.is_empty() && pattern_type == PatternType::Literal {
        return Err("a literal binding needs a resource name".into());
    }
    if resource_type == ResourceType::Cluster && entry.resource_name != CLUSTER {
        return Err(format!("the cluster resource is named {CLUSTER}"));
    }
    if entry.host.is_empty() {
        return Err("a binding needs a host (* for any)".into());
    }
    Ok(AclBinding {
        resource_type,
        pattern_type,
        resource_name: entry.resource_name.clone(),
        principal: entry.principal.clone(),
        host: entry.host.clone(),
        operation,
        permission,
    })
}

/// A filter from the wire.
pub fn filter_from_entry(entry: &rill_protocol::api::AclFilterEntry) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: resource_type_of(entry.resource_type)?,
        pattern_type: match entry.pattern_type {
            1 => PatternFilter::Any,
            2 => PatternFilter::Match,
            3 => PatternFilter::Literal,
            4 => PatternFilter::Prefixed,
            other => return Err(format!("unknown pattern type {other}")),
        },
        resource_name: entry.resource_name.clone(),
        principal: entry.principal.clone(),
        host: entry.host.clone(),
        operation: operation_of(entry.operation)?,
        permission: permission_of(entry.permission)?,
    })
}

fn names_resource(acl: &AclBinding, resource_type: ResourceType, name: &str) -> bool {
    acl.resource_type == resource_type
        && match acl.pattern_type {
            PatternType::Literal => acl.resource_name == "*" || acl.resource_name == name,
            PatternType::Prefixed => name.starts_with(&acl.resource_name),
        }
}

/// Whether `principal` at `host` may do `operation` on the resource, by `acls` alone (no
/// super users; the caller checks those).
pub fn authorized<'a>(
    acls: impl IntoIterator<Item = &'a AclBinding>,
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    let mut allowed = false;
    for acl in acls {
        if !names_resource(acl, resource_type, name)
            || !(acl.principal == principal || acl.principal == "User:*")
            || !(acl.host == "*" || acl.host == host)
        {
            continue;
        }
        match acl.permission {
            // A deny of ALL or of this very operation (implications do not widen a deny).
            Permission::Deny if acl.operation == operation || acl.operation == Operation::All => {
                return false
            }
            Permission::Deny => {}
            Permission::Allow => allowed |= acl.operation.covers(operation),
        }
    }
    allowed
}

/// Whether some ACL allows `principal` `operation` on some resource of `resource_type`, and
/// no deny of it covers every such resource (`*`): Kafka's `authorizeByResourceType`, which
/// lets an idempotent producer with Write on any topic get a producer id.
pub fn allows_some<'a>(
    acls: impl IntoIterator<Item = &'a AclBinding> + Clone,
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
) -> bool {
    let applies = |acl: &AclBinding| {
        acl.resource_type == resource_type
            && (acl.principal == principal || acl.principal == "User:*")
            && (acl.host == "*" || acl.host == host)
    };
    let denied_everywhere = acls.clone().into_iter().any(|acl| {
        applies(acl)
            && acl.permission == Permission::Deny
            && (acl.operation == operation || acl.operation == Operation::All)
            && ((acl.pattern_type == PatternType::Literal && acl.resource_name == "*")
                || (acl.pattern_type == PatternType::Prefixed && acl.resource_name.is_empty()))
    });
    !denied_everywhere
        && acls.into_iter().any(|acl| {
            applies(acl) && acl.permission == Permission::Allow && acl.operation.covers(operation)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        resource_type: ResourceType,
        pattern_type: PatternType,
        name: &str,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            pattern_type,
            resource_name: name.into(),
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn nothing_is_allowed_without_an_acl() {
        assert!(!authorized(&[], "User:a", "h", Read, Topic, "t"));
    }

    #[test]
    fn literal_prefixed_and_wildcard_names() {
        let acls = [
            acl(Topic, Literal, "orders", "User:a", Write, Allow),
            acl(Topic, Prefixed, "logs.", "User:a", Read, Allow),
            acl(Group, Literal, "*", "User:a", Read, Allow),
        ];
        assert!(authorized(&acls, "User:a", "h", Write, Topic, "orders"));
        assert!(!authorized(&acls, "User:a", "h", Read, Topic, "orders"));
        assert!(!authorized(&acls, "User:a", "h", Write, Topic, "orders2"));
        assert!(!authorized(&acls, "User:b", "h", Write, Topic, "orders"));
        assert!(authorized(&acls, "User:a", "h", Read, Topic, "logs.app"));
        assert!(!authorized(&acls, "User:a", "h", Read, Topic, "logs"));
        assert!(authorized(&acls, "User:a", "h", Read, Group, "any"));
        assert!(!authorized(&acls, "User:a", "h", Read, Topic, "*"));
    }

    #[test]
    fn deny_wins_and_implications_widen_only_allows() {
        let acls = [
            acl(Topic, Prefixed, "", "User:*", All, Allow),
            acl(Topic, Literal, "secret", "User:a", Read, Deny),
        ];
        assert!(!authorized(&acls, "User:a", "h", Read, Topic, "secret"));
        assert!(authorized(&acls, "User:a", "h", Describe, Topic, "secret"));
        assert!(authorized(&acls, "User:b", "h", Read, Topic, "secret"));
        let acls = [acl(Topic, Literal, "t", "User:a", Write, Allow)];
        assert!(authorized(&acls, "User:a", "h", Describe, Topic, "t"));
        assert!(!authorized(&acls, "User:a", "h", Delete, Topic, "t"));
        let acls = [
            acl(Topic, Literal, "t", "User:a", Write, Allow),
            acl(Topic, Literal, "t", "User:a", All, Deny),
        ];
        assert!(!authorized(&acls, "User:a", "h", Describe, Topic, "t"));
    }

    #[test]
    fn hosts_are_matched() {
        let mut only = acl(Cluster, Literal, CLUSTER, "User:a", Alter, Allow);
        only.host = "10.0.0.1".into();
        assert!(authorized(
            [&only],
            "User:a",
            "10.0.0.1",
            Alter,
            Cluster,
            CLUSTER
        ));
        assert!(!authorized(
            [&only],
            "User:a",
            "10.0.0.2",
            Alter,
            Cluster,
            CLUSTER
        ));
    }

    #[test]
    fn filters_name_bindings() {
        let a = acl(Topic, Prefixed, "x", "User:a", Read, Allow);
        assert!(AclFilter::default().matches(&a));
        let by_name = AclFilter {
            resource_name: Some("x".into()),
            ..Default::default()
        };
        assert!(by_name.matches(&a));
        let literal = AclFilter {
            pattern_type: PatternFilter::Literal,
            ..Default::default()
        };
        assert!(!literal.matches(&a));
        let applying = AclFilter {
            pattern_type: PatternFilter::Match,
            resource_name: Some("xyz".into()),
            ..Default::default()
        };
        assert!(applying.matches(&a));
        assert!(!by_name.matches(&acl(Topic, Prefixed, "xy", "User:a", Read, Allow)));
        assert!(applying.matches(&acl(Topic, Literal, "*", "User:a", Read, Allow)));
        assert!(!applying.matches(&acl(Topic, Literal, "x", "User:a", Read, Allow)));
        for entry in [
            acl(Topic, Prefixed, "x", "User:a", Read, Allow),
            acl(Cluster, Literal, CLUSTER, "User:b", IdempotentWrite, Deny),
        ] {
            assert_eq!(from_entry(&to_entry(&entry)).unwrap(), entry);
        }
        let mut bad = to_entry(&a);
        bad.operation = 1;
        assert!(from_entry(&bad).is_err());
        bad.operation = 3;
        bad.principal = "alice".into();
        assert!(from_entry(&bad).is_err());
        assert_eq!(
            Operation::from_name("DescribeConfigs"),
            Some(DescribeConfigs)
        );
        assert_eq!(
            Operation::from_name("describe_configs"),
            Some(DescribeConfigs)
        );
        assert_eq!(Operation::from_name("WRITE"), Some(Write));
        assert_eq!(Operation::from_name("nope"), None);
    }
}
