//! A streaming graph: the operators of one materialized view, as a tree whose
//! leaves are scans (or constants) and whose root produces the view's changelog.
//!
//! Nodes are stored in topological order (every node after its inputs), so the
//! root is the last node. Each node has a stable id derived from what it does
//! and the ids of its inputs: the same query planned again gets the same ids,
//! which is how a restore finds each operator's checkpointed state, also
//! after an upgrade moved other operators (and what will let an ALTER
//! MATERIALIZED VIEW, not built yet, keep the state of the operators it did
//! not change). An id depends on the operator and its inputs, never on what
//! consumes it.

use std::collections::BTreeMap;

use super::{Operator, OperatorStats};
use crate::common::ChangeBatch;
use crate::common::RelationId;
use crate::error::Result;
use crate::state::checkpoint::{CaptureRequest, RestoredState, StateDelta};
use crate::state::codec::Decoder;
use crate::state::windowed::SpillStats;

pub type NodeIndex = usize;

struct GraphNode {
    id: u64,
    /// Whether the operator keeps state (asked once, when it is added and
    /// still empty: [`Operator::state_keys`] counts what it holds).
    stateful: bool,
    /// The id the operator this one replaced had (`Operator::replaces`).
    replaced_id: Option<u64>,
    op: Box<dyn Operator>,
    inputs: Vec<NodeIndex>,
    /// The node this one feeds, and which of its inputs it is.
    parent: Option<(NodeIndex, usize)>,
    rows_in: u64,
    rows_out: u64,
    /// Rows the operator failed and dropped as late before eddy last
    /// started (restored from the checkpoint; its own counters start at
    /// zero).
    failed_before: u64,
    late_before: u64,
    /// The last watermark this node passed on (µs), if any.
    watermark: Option<i64>,
}

/// One operator's place in the graph and its figures.
#[derive(Debug, Clone)]
pub struct OperatorStatus {
    /// The stable id.
    pub id: u64,
    /// The stable id of the operator this one feeds; `None` at the root.
    pub parent: Option<u64>,
    pub description: String,
    pub stats: OperatorStats,
    /// The last event-time watermark the operator passed on (µs).
    pub watermark: Option<i64>,
    /// What its spillable state holds in memory and on disk (`None`: its
    /// state, if any, cannot spill).
    pub spill: Option<SpillStats>,
}

/// Per-operator figures, root first.
pub type GraphStats = Vec<OperatorStatus>;

#[derive(Default)]
pub struct StreamGraph {
    nodes: Vec<GraphNode>,
    scans: Vec<ScanLeaf>,
}

/// A scan leaf and the relation it reads.
struct ScanLeaf {
    node: NodeIndex,
    relation: RelationId,
    /// The relation's columns the scan and the operators above it read;
    /// `None`: all of them.
    columns: Option<Vec<usize>>,
}

impl StreamGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operator reading from `inputs` (already in the graph).
    pub fn add(&mut self, op: Box<dyn Operator>, inputs: Vec<NodeIndex>) -> NodeIndex {
        let index = self.nodes.len();
        let mut input_ids = String::new();
        for (position, &input) in inputs.iter().enumerate() {
            debug_assert!(
                self.nodes[input].parent.is_none(),
                "a node feeds one parent"
            );
            self.nodes[input].parent = Some((index, position));
            input_ids.push_str(&format!("|{:016x}", self.nodes[input].id));
        }
        let identity = format!("{}{input_ids}", op.describe());
        let replaced_id = op
            .replaces()
            .map(|replaced| fnv1a64(format!("{replaced}{input_ids}").as_bytes()));
        // Identical subtrees (a table scanned twice) get distinct ids by
        // their order of appearance, which is deterministic for a plan.
        let mut id = fnv1a64(identity.as_bytes());
        let mut occurrence = 1;
        while self.nodes.iter().any(|n| n.id == id) {
            occurrence += 1;
            id = fnv1a64(format!("{identity}#{occurrence}").as_bytes());
        }
        self.nodes.push(GraphNode {
            id,
            stateful: op.state_keys().is_some(),
            replaced_id,
            op,
            inputs,
            parent: None,
            rows_in: 0,
            rows_out: 0,
            failed_before: 0,
            late_before: 0,
            watermark: None,
        });
        index
    }

    /// Adds a scan leaf of `relation`.
    pub fn add_scan(&mut self, relation: RelationId, op: Box<dyn Operator>) -> NodeIndex {
        self.add_scan_reading(relation, None, op)
    }

    /// Adds a scan leaf of `relation` above which only `columns` of the
    /// relation are read (`None`: all). A source's reader may then leave
    /// the other columns unbuilt (see [`Self::columns_read`]).
    pub fn add_scan_reading(
        &mut self,
        relation: RelationId,
        columns: Option<Vec<usize>>,
        op: Box<dyn Operator>,
    ) -> NodeIndex {
        let index = self.add(op, vec![]);
        self.scans.push(ScanLeaf {
            node: index,
            relation,
            columns,
        });
        index
    }

    /// The columns of `relation` that this graph reads, ascending (`None`:
    /// all, or it does not read the relation).
    pub fn columns_read(&self, relation: RelationId) -> Option<Vec<usize>> {
        let mut read = Vec::new();
        let mut scanned = false;
        for scan in self.scans.iter().filter(|s| s.relation == relation) {
            scanned = true;
            read.extend(scan.columns.as_ref()?);
        }
        read.sort_unstable();
        read.dedup();
        scanned.then_some(read)
    }

    /// The scan leaves that read `relation`.
    fn scans_of(&self, relation: RelationId) -> Vec<NodeIndex> {
        self.scans
            .iter()
            .filter(|s| s.relation == relation)
            .map(|s| s.node)
            .collect()
    }

    /// Makes the scans of `from` read `to` instead (a source's per-view reader).
    pub fn rebind(&mut self, from: RelationId, to: RelationId) {
        for scan in self.scans.iter_mut().filter(|s| s.relation == from) {
            scan.relation = to;
        }
    }

    /// The relations this graph reads, without repeats.
    pub fn input_relations(&self) -> Vec<RelationId> {
        let mut relations: Vec<RelationId> = self.scans.iter().map(|s| s.relation).collect();
        relations.sort_unstable();
        relations.dedup();
        relations
    }

    /// Runs every operator's `start` hook, leaves first, and returns what
    /// reaches the root.
    pub fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        let mut output = Vec::new();
        for index in 0..self.nodes.len() {
            for batch in self.nodes[index].op.start()? {
                self.emit(index, batch, &mut output)?;
            }
        }
        Ok(output)
    }

    /// Pushes a change of `relation` into every scan of it and returns the
    /// changes that reach the root.
    pub fn push_relation(
        &mut self,
        relation: RelationId,
        batch: &ChangeBatch,
    ) -> Result<Vec<ChangeBatch>> {
        let mut output = Vec::new();
        let leaves = self.scans_of(relation);
        for leaf in leaves {
            self.push(leaf, 0, batch.clone(), &mut output)?;
        }
        Ok(output)
    }

    /// Lets every operator see processing time `now`; returns what reaches
    /// the root, and the root's watermark if it moved.
    pub fn tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let mut output = Vec::new();
        let mut root_watermark = None;
        for index in 0..self.nodes.len() {
            let (changes, watermark) = self.nodes[index].op.on_tick(now)?;
            for batch in changes {
                self.emit(index, batch, &mut output)?;
            }
            if watermark.is_some() {
                self.nodes[index].watermark = watermark;
            }
            let reached = match (watermark, self.nodes[index].parent) {
                (Some(w), Some((parent, position))) => {
                    self.watermark(parent, position, w, &mut output)?
                }
                (watermark, _) => watermark,
            };
            if let Some(w) = reached {
                root_watermark = Some(root_watermark.map_or(w, |r: i64| r.max(w)));
            }
        }
        Ok((output, root_watermark))
    }

    /// Passes a watermark of `relation` into every scan of it; returns the
    /// changes it releases at the root and the root's watermark, if it moved.
    pub fn push_watermark(
        &mut self,
        relation: RelationId,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let mut output = Vec::new();
        let mut root_watermark = None;
        let leaves = self.scans_of(relation);
        for leaf in leaves {
            if let Some(w) = self.watermark(leaf, 0, watermark, &mut output)? {
                root_watermark = Some(root_watermark.map_or(w, |r: i64| r.max(w)));
            }
        }
        Ok((output, root_watermark))
    }

    fn watermark(
        &mut self,
        index: NodeIndex,
        input: usize,
        watermark: i64,
        output: &mut Vec<ChangeBatch>,
    ) -> Result<Option<i64>> {
        let (released, forward) = self.nodes[index].op.on_watermark(input, watermark)?;
        for batch in released {
            self.emit(index, batch, output)?;
        }
        if forward.is_some() {
            self.nodes[index].watermark = forward;
        }
        match (forward, self.nodes[index].parent) {
            (Some(w), Some((parent, position))) => self.watermark(parent, position, w, output),
            (forward, _) => Ok(forward),
        }
    }

    fn push(
        &mut self,
        index: NodeIndex,
        input: usize,
        batch: ChangeBatch,
        output: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let node = &mut self.nodes[index];
        node.rows_in += batch.num_rows() as u64;
        for out in node.op.process(input, batch)? {
            self.emit(index, out, output)?;
        }
        Ok(())
    }

    fn emit(
        &mut self,
        index: NodeIndex,
        batch: ChangeBatch,
        output: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let node = &mut self.nodes[index];
        node.rows_out += batch.num_rows() as u64;
        match node.parent {
            Some((parent, position)) => self.push(parent, position, batch, output),
            None => {
                output.push(batch);
                Ok(())
            }
        }
    }

    /// The operator tree, root first, one operator a line.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(root) = self.nodes.len().checked_sub(1) {
            self.explain_node(root, 0, &mut lines);
        }
        lines
    }

    fn explain_node(&self, index: NodeIndex, depth: usize, lines: &mut Vec<String>) {
        let node = &self.nodes[index];
        lines.push(format!(
            "{}{} [id={:016x}]",
            "  ".repeat(depth),
            node.op.describe(),
            node.id
        ));
        for &input in &node.inputs {
            self.explain_node(input, depth + 1, lines);
        }
    }

    pub fn stats(&self) -> GraphStats {
        self.nodes
            .iter()
            .rev()
            .map(|n| {
                let counters = n.op.counters();
                let stats = OperatorStats {
                    rows_in: n.rows_in,
                    rows_out: n.rows_out,
                    rows_failed: n.failed_before + counters.rows_failed,
                    state_keys: n.op.state_keys().unwrap_or(0),
                    late_rows: n.late_before + counters.late_rows,
                };
                OperatorStatus {
                    id: n.id,
                    parent: n.parent.map(|(parent, _)| self.nodes[parent].id),
                    description: n.op.describe(),
                    stats,
                    watermark: n.watermark,
                    spill: n.op.spill_stats(),
                }
            })
            .collect()
    }

    /// What each spillable operator holds, by operator id.
    pub fn spill_stats(&self) -> Vec<(u64, SpillStats)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.id, n.op.spill_stats()?)))
            .collect()
    }

    /// Has operator `id` keep about `target_bytes` in memory.
    pub fn shrink(&mut self, id: u64, target_bytes: usize) -> Result<()> {
        match self.nodes.iter_mut().find(|n| n.id == id) {
            Some(node) => node.op.shrink(target_bytes),
            None => Ok(()),
        }
    }

    /// Captures the state of every stateful operator as
    /// `<prefix>/op/<position>-<stable id>` (position among the stateful
    /// operators), whole when `request` asks for it.
    pub fn checkpoint(
        &mut self,
        prefix: &str,
        request: &CaptureRequest,
        out: &mut BTreeMap<String, StateDelta>,
    ) -> Result<()> {
        for (position, node) in self.nodes.iter_mut().filter(|n| n.stateful).enumerate() {
            let name = format!("{prefix}/op/{position:03}-{:016x}", node.id);
            let mut delta = StateDelta::new(request.wants_full(&name));
            node.op.checkpoint(&mut delta)?;
            out.insert(name, delta);
        }
        // The figures users read (rows in and out, failed, late) survive a
        // restart: a few numbers per operator, written whole each time.
        let mut counters = StateDelta::new(true);
        for node in &self.nodes {
            let op = node.op.counters();
            counters.put_with(
                |k| {
                    k.u64(node.id);
                },
                |v| {
                    v.u64(node.rows_in)
                        .u64(node.rows_out)
                        .u64(node.failed_before + op.rows_failed)
                        .u64(node.late_before + op.late_rows);
                },
            );
        }
        out.insert(format!("{prefix}/counters"), counters);
        Ok(())
    }

    /// Takes back the figures [`Self::checkpoint`] wrote, by operator id
    /// (an operator new since then starts at zero).
    fn restore_counters(&mut self, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        for (key, value) in entries {
            let id = Decoder::new(&key).u64()?;
            let mut value = Decoder::new(&value);
            if let Some(node) = self.nodes.iter_mut().find(|n| n.id == id) {
                node.rows_in = value.u64()?;
                node.rows_out = value.u64()?;
                node.failed_before = value.u64()?;
                node.late_before = value.u64()?;
            }
        }
        Ok(())
    }

    /// Restores every stateful operator from its state table: the one with
    /// its stable id (wherever it stands: a changed operator before it moves
    /// its position), else the one of the operator it replaced
    /// (`Operator::replaces`), or else, when the checkpoint has as many
    /// stateful operators, the one at its position (an eddy whose operator
    /// descriptions changed gives the same plan other ids).
    ///
    /// Each operator may hold `memory_budget` bytes of state as it restores
    /// (one at a time); past that, one that can spill does.
    pub fn restore(
        &mut self,
        prefix: &str,
        restored: &mut RestoredState,
        memory_budget: Option<usize>,
    ) -> Result<()> {
        // Checkpoints from before the figures were kept have none: zeros.
        if let Some(counters) = restored.remove(&format!("{prefix}/counters")) {
            self.restore_counters(counters.into_map()?)?;
        }
        let operators = format!("{prefix}/op/");
        let checkpointed = restored
            .names()
            .filter(|k| k.starts_with(&operators))
            .count();
        let stateful = self.nodes.iter().filter(|n| n.stateful).count();
        for (position, node) in self.nodes.iter_mut().filter(|n| n.stateful).enumerate() {
            let own = state_named_by_id(restored.names(), &operators, node.id);
            let replaced = node
                .replaced_id
                .filter(|_| own.is_none())
                .and_then(|id| state_named_by_id(restored.names(), &operators, id));
            if let Some(name) = replaced {
                let entries = restored.take(&name).with_memory_budget(memory_budget);
                node.op.restore_replaced(entries)?;
                continue;
            }
            let by_position = format!("{operators}{position:03}-");
            let name = own.or_else(|| {
                (checkpointed == stateful)
                    .then(|| {
                        restored
                            .names()
                            .find(|k| k.starts_with(&by_position))
                            .cloned()
                    })
                    .flatten()
            });
            let entries = name
                .and_then(|name| restored.remove(&name))
                .ok_or_else(|| {
                    crate::error::EddyError::Checkpoint(format!(
                        "the checkpoint has no state for operator {:016x} ({}) of {prefix}: \
                         it holds {checkpointed} stateful operators, the view now plans {stateful}",
                        node.id,
                        node.op.describe()
                    ))
                })?;
            node.op.restore(entries.with_memory_budget(memory_budget))?;
        }
        Ok(())
    }

    /// The most recent evaluation error of any operator.
    pub fn last_error(&self) -> Option<String> {
        self.nodes
            .iter()
            .rev()
            .find_map(|n| n.op.counters().last_error)
    }
}

/// The name of the state table under `operators` (`<prefix>/op/`) of the
/// operator with stable id `id`, at whatever position.
fn state_named_by_id<'a>(
    mut names: impl Iterator<Item = &'a String>,
    operators: &str,
    id: u64,
) -> Option<String> {
    let suffix = format!("-{id:016x}");
    names
        .find(|k| k.starts_with(operators) && k.ends_with(&suffix))
        .cloned()
}

/// FNV-1a: a small hash that is stable across builds and platforms, unlike
/// `std`'s `DefaultHasher`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
