//! The ACL codes the wire carries (`api::AclEntry`, `api::AclFilterEntry`): Kafka's numbers,
//! with the names the CLI and docs use.

/// "Any" in a filter.
pub const ANY: u8 = 1;

/// Resource types.
pub const RESOURCE_TYPES: [(u8, &str); 3] = [(2, "topic"), (3, "group"), (4, "cluster")];
/// Pattern types (`any` and `match` only in filters).
pub const PATTERN_TYPES: [(u8, &str); 4] =
    [(1, "any"), (2, "match"), (3, "literal"), (4, "prefixed")];
/// Operations.
pub const OPERATIONS: [(u8, &str); 11] = [
    (2, "all"),
    (3, "read"),
    (4, "write"),
    (5, "create"),
    (6, "delete"),
    (7, "alter"),
    (8, "describe"),
    (9, "cluster_action"),
    (10, "describe_configs"),
    (11, "alter_configs"),
    (12, "idempotent_write"),
];
/// Permissions.
pub const PERMISSIONS: [(u8, &str); 2] = [(2, "deny"), (3, "allow")];

/// The code of `name` in `table` (case-insensitive; `-` and `_` alike).
pub fn code(table: &[(u8, &str)], name: &str) -> Option<u8> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    table.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}

/// The name of `code` in `table` (`"unknown"` if it has none).
pub fn name(table: &[(u8, &'static str)], code: u8) -> &'static str {
    match table.iter().find(|(c, _)| *c == code) {
        Some((_, n)) => n,
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for table in [
            &RESOURCE_TYPES[..],
            &PATTERN_TYPES,
            &OPERATIONS,
            &PERMISSIONS,
        ] {
            for (c, n) in table {
                assert_eq!(code(table, n), Some(*c));
                assert_eq!(name(table, *c), *n);
            }
        }
        assert_eq!(code(&OPERATIONS, "Describe-Configs"), Some(10));
        assert_eq!(name(&OPERATIONS, 99), "unknown");
    }
}
