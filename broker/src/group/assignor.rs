//! Partition assignment strategies, computed by the group coordinator (server side, as in
//! Kafka's KIP-848). Pure functions of (members with their subscriptions and current
//! partitions, topic partition counts) -> target assignment. Deterministic: the same input
//! always gives the same output, whichever broker computes it.

use std::collections::{BTreeMap, BTreeSet};

use crate::log::TopicPartition;

/// An assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// Per topic, contiguous ranges of partitions to members in member-id order (Kafka's range).
    Range,
    /// All partitions, in order, dealt to subscribed members in turn.
    RoundRobin,
    /// Balanced like round-robin, but members keep what they already own when balance allows,
    /// so a rebalance moves as few partitions as possible. The default.
    #[default]
    Sticky,
}

impl Strategy {
    /// The strategy's name on the wire and in the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::Sticky => "sticky",
        }
    }

    /// Parses a strategy name; `None` if unknown.
    pub fn from_name(name: &str) -> Option<Strategy> {
        match name {
            "range" => Some(Strategy::Range),
            "roundrobin" | "round-robin" => Some(Strategy::RoundRobin),
            "sticky" | "" => Some(Strategy::Sticky),
            _ => None,
        }
    }
}

/// What the assignor knows about a member.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub member_id: String,
    pub subscriptions: BTreeSet<String>,
    /// Partitions in the member's current target assignment (stickiness).
    pub current: BTreeSet<TopicPartition>,
}

/// Member id -> assigned partitions; every member appears, possibly with nothing.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Computes the target assignment. `topics` maps subscribed topic names to partition counts;
/// topics that do not exist are simply not assigned.
pub fn assign(
    strategy: Strategy,
    members: &[MemberSpec],
    topics: &BTreeMap<String, u32>,
) -> Assignment {
    let mut members: Vec<&MemberSpec> = members.iter().collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut out: Assignment = members
        .iter()
        .map(|m| (m.member_id.clone(), BTreeSet::new()))
        .collect();
    match strategy {
        Strategy::Range => range(&members, topics, &mut out),
        Strategy::RoundRobin => round_robin(&members, topics, &mut out),
        Strategy::Sticky => sticky(&members, topics, &mut out),
    }
    out
}

/// Every (topic, partition) some member subscribes to, in order.
fn subscribed_partitions(
    members: &[&MemberSpec],
    topics: &BTreeMap<String, u32>,
) -> Vec<TopicPartition> {
    let wanted: BTreeSet<&String> = members
        .iter()
        .flat_map(|m| m.subscriptions.iter())
        .collect();
    topics
        .iter()
        .filter(|(t, _)| wanted.contains(t))
        .flat_map(|(t, n)| (0..*n).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect()
}

fn range(members: &[&MemberSpec], topics: &BTreeMap<String, u32>, out: &mut Assignment) {
    for (topic, &count) in topics {
        let subscribers: Vec<&&MemberSpec> = members
            .iter()
            .filter(|m| m.subscriptions.contains(topic))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as u32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let take = base + u32::from((i as u32) < extra);
            let set = out.entry(member.member_id.clone()).or_default();
            set.extend((next..next + take).map(|p| TopicPartition::new(topic.clone(), p)));
            next += take;
        }
    }
}

fn round_robin(members: &[&MemberSpec], topics: &BTreeMap<String, u32>, out: &mut Assignment) {
    let mut turn = 0usize;
    for tp in subscribed_partitions(members, topics) {
        // The next member in turn that subscribes to this topic.
        for step in 0..members.len() {
            let member = members[(turn + step) % members.len()];
            if member.subscriptions.contains(&tp.topic) {
                out.entry(member.member_id.clone()).or_default().insert(tp);
                turn = (turn + step + 1) % members.len();
                break;
            }
        }
    }
}

fn sticky(members: &[&MemberSpec], topics: &BTreeMap<String, u32>, out: &mut Assignment) {
    let all = subscribed_partitions(members, topics);
    if members.is_empty() {
        return;
    }
    // Balanced quotas: every member gets `base`, `extra` of them one more.
    let (base, extra) = (all.len() / members.len(), all.len() % members.len());
    let valid: BTreeSet<&TopicPartition> = all.iter().collect();
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    let mut extras_left = extra;
    // 1. Keep current partitions up to the quota (members with the most current keep the extras).
    let mut by_current: Vec<&&MemberSpec> = members.iter().collect();
    by_current.sort_by(|a, b| {
        b.current
            .len()
            .cmp(&a.current.len())
            .then(a.member_id.cmp(&b.member_id))
    });
    for member in by_current {
        let quota = if extras_left > 0 && member.current.len() > base {
            extras_left -= 1;
            base + 1
        } else {
            base
        };
        let keep: Vec<TopicPartition> = member
            .current
            .iter()
            .filter(|tp| {
                valid.contains(tp)
                    && member.subscriptions.contains(&tp.topic)
                    && !taken.contains(*tp)
            })
            .take(quota)
            .cloned()
            .collect();
        taken.extend(keep.iter().cloned());
        out.entry(member.member_id.clone())
            .or_default()
            .extend(keep);
    }
    // 2. Hand out the rest, each to the subscribed member with the fewest partitions.
    for tp in all.into_iter().filter(|tp| !taken.contains(tp)) {
        let least = members
            .iter()
            .filter(|m| m.subscriptions.contains(&tp.topic))
            .min_by(|a, b| {
                out[&a.member_id]
                    .len()
                    .cmp(&out[&b.member_id].len())
                    .then(a.member_id.cmp(&b.member_id))
            });
        if let Some(member) = least {
            out.entry(member.member_id.clone()).or_default().insert(tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str], current: &[(&str, u32)]) -> MemberSpec {
        MemberSpec {
            member_id: id.into(),
            subscriptions: topics.iter().map(|t| t.to_string()).collect(),
            current: current
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    fn topics(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn check_exactly_once(assignment: &Assignment, total: usize) {
        let mut seen = BTreeSet::new();
        for tps in assignment.values() {
            for tp in tps {
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        assert_eq!(seen.len(), total, "every partition assigned");
    }

    #[test]
    fn every_strategy_assigns_each_partition_exactly_once_and_balances() {
        let members = [
            member("a", &["t"], &[]),
            member("b", &["t"], &[]),
            member("c", &["t"], &[]),
        ];
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let a = assign(strategy, &members, &topics(&[("t", 12), ("other", 3)]));
            check_exactly_once(&a, 12);
            assert!(a.values().all(|s| s.len() == 4), "{strategy:?}: {a:?}");
        }
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let a = assign(
            Strategy::Range,
            &[member("a", &["t"], &[]), member("b", &["t"], &[])],
            &topics(&[("t", 5)]),
        );
        let a_parts: Vec<u32> = a["a"].iter().map(|tp| tp.partition).collect();
        assert_eq!(a_parts, vec![0, 1, 2]);
    }

    #[test]
    fn sticky_moves_only_what_it_must_when_a_member_joins_or_leaves() {
        let t = topics(&[("t", 12)]);
        let three = assign(
            Strategy::Sticky,
            &[
                member("a", &["t"], &[]),
                member("b", &["t"], &[]),
                member("c", &["t"], &[]),
            ],
            &t,
        );
        let with_current = |id: &str, a: &Assignment| MemberSpec {
            member_id: id.into(),
            subscriptions: ["t".to_string()].into(),
            current: a.get(id).cloned().unwrap_or_default(),
        };
        let four = assign(
            Strategy::Sticky,
            &[
                with_current("a", &three),
                with_current("b", &three),
                with_current("c", &three),
                with_current("d", &three),
            ],
            &t,
        );
        check_exactly_once(&four, 12);
        assert!(four.values().all(|s| s.len() == 3));
        let moved: usize = ["a", "b", "c"]
            .iter()
            .map(|m| three[*m].difference(&four[*m]).count())
            .sum();
        assert_eq!(moved, 3, "a fourth member takes exactly its 3 partitions");
        let two = assign(
            Strategy::Sticky,
            &[with_current("a", &four), with_current("b", &four)],
            &t,
        );
        check_exactly_once(&two, 12);
        assert!(
            four["a"].is_subset(&two["a"]) && four["b"].is_subset(&two["b"]),
            "survivors keep what they had"
        );
    }

    #[test]
    fn members_only_get_subscribed_topics() {
        let members = [member("a", &["x"], &[]), member("b", &["x", "y"], &[])];
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let a = assign(strategy, &members, &topics(&[("x", 2), ("y", 2)]));
            check_exactly_once(&a, 4);
            assert!(a["a"].iter().all(|tp| tp.topic == "x"), "{strategy:?}");
        }
    }
}
