//! Priority tiers: the nodes grouped by priority, highest first, as ranges of one flat array.
//!
//! Every algorithm picks inside a tier and falls through to the next one only when a tier has no
//! usable node, so the grouping is done once per config version rather than on every pick.

use crate::NodeSpec;

#[derive(Debug, Clone)]
pub(crate) struct Tiers {
    /// Node indices, highest priority first and in list order within a priority. Weight-0 nodes
    /// are left out: they can never be picked, so no pick should have to skip them.
    nodes: Box<[usize]>,
    /// Where each tier ends in `nodes`; tier `t` is `nodes[ends[t - 1]..ends[t]]`.
    ends: Box<[usize]>,
}

impl Tiers {
    pub(crate) fn new(specs: &[NodeSpec]) -> Self {
        let mut nodes: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].weight > 0).collect();
        // Stable, so list order survives within a tier: round robin's interleaving depends on it.
        nodes.sort_by_key(|&i| std::cmp::Reverse(specs[i].priority));

        let mut ends = Vec::new();
        for (pos, pair) in nodes.windows(2).enumerate() {
            if specs[pair[0]].priority != specs[pair[1]].priority {
                ends.push(pos + 1);
            }
        }
        if !nodes.is_empty() {
            ends.push(nodes.len());
        }
        Self {
            nodes: nodes.into(),
            ends: ends.into(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The tiers, highest priority first, each a non-empty slice of node indices.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[usize]> + '_ {
        self.ends.iter().scan(0, move |start, &end| {
            let tier = &self.nodes[*start..end];
            *start = end;
            Some(tier)
        })
    }

    /// The first `Some` that `pick` returns for a tier, trying tiers from the highest priority
    /// down; `pick` gets the tier's position and its nodes.
    pub(crate) fn first<T>(&self, mut pick: impl FnMut(usize, &[usize]) -> Option<T>) -> Option<T> {
        self.iter()
            .enumerate()
            .find_map(|(tier, nodes)| pick(tier, nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, weight: u32, priority: i32) -> NodeSpec {
        NodeSpec::new(id, weight).with_priority(priority)
    }

    fn tiers(specs: &[NodeSpec]) -> Vec<Vec<usize>> {
        Tiers::new(specs).iter().map(<[usize]>::to_vec).collect()
    }

    #[test]
    fn groups_by_priority_highest_first_keeping_list_order() {
        let specs = [
            node("a", 1, 0),
            node("b", 1, 5),
            node("c", 1, -1),
            node("d", 1, 0),
            node("e", 1, 5),
        ];
        assert_eq!(tiers(&specs), vec![vec![1, 4], vec![0, 3], vec![2]]);
    }

    #[test]
    fn leaves_out_weight_zero_nodes_and_the_tiers_they_empty() {
        let specs = [node("a", 0, 1), node("b", 2, 0), node("c", 0, 0)];
        assert_eq!(tiers(&specs), vec![vec![1]]);
    }

    #[test]
    fn no_nodes_no_tiers() {
        assert_eq!(Tiers::new(&[]).len(), 0);
        assert_eq!(Tiers::new(&[node("a", 0, 0)]).len(), 0);
    }

    #[test]
    fn first_falls_through_to_lower_tiers() {
        let t = Tiers::new(&[node("a", 1, 1), node("b", 1, 0)]);
        assert_eq!(
            t.first(|tier, nodes| (tier == 1).then(|| nodes[0])),
            Some(1)
        );
        assert_eq!(t.first(|_, _| None::<usize>), None);
    }
}
