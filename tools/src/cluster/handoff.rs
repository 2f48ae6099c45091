//! A job handed to one node of a cluster, which coordinates it across its peers
//! (docs/SCHEDULER.md, "Nodes coordinate"): the host uploads the job's objects to that node,
//! asks it to COORDINATE, waits, and fetches the result's bytes. Should the node die on the
//! way, the job goes to the next node, where the nodes' memos make the rerun cheap.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_object::Handle;
use cairn_proto::ErrorCode;

use super::lifecycle::NodeState;
use crate::client::{Client, Refused};

/// How long the host waits for a coordinating node's answer.
const COORDINATION_PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// What the coordinating node answered, with what only the host knows.
#[derive(Debug)]
pub struct Handed {
    pub result: Handle,
    /// The node's report, `key=value`, nodes named by cluster address (the node's words:
    /// print them escaped).
    pub report: BTreeMap<String, String>,
    /// The result's bytes, checked against its handle.
    pub value: Option<Vec<u8>>,
    /// The node that coordinated the job to its end.
    pub coordinator: usize,
    /// Nodes the job was handed to before, and why each did not finish it.
    pub failed: Vec<(usize, String)>,
    pub wall: Duration,
}

impl Handed {
    /// A number from the report (0 if the node left it out).
    pub fn count(&self, key: &str) -> u64 {
        self.report.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// Why one node did not finish the job: it failed (try the next), or the job itself did.
enum Attempt {
    NodeFailed(anyhow::Error),
    JobFailed(anyhow::Error),
}

/// Hands `root` (with the job's `objects`) to node `first`, then to each other node in turn
/// while the coordinating one dies or is busy with another job.
pub fn run(
    root: Handle,
    objects: &[(Handle, Vec<u8>)],
    nodes: &[NodeState],
    first: usize,
    options: &cairn_sched::Options,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Handed> {
    if first >= nodes.len() {
        bail!("there is no node {first}: the cluster has {} nodes", nodes.len());
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    // `--spread` starts with the job's data spread over the nodes: the host puts it there, as the
    // host coordinator would, rather than have the node it hands the job to send it all again.
    let mut options = *options;
    let mut withheld = HashSet::new();
    if options.spread {
        withheld = spread(root, objects, nodes, first, progress)?;
        options.spread = false;
    } else {
        procedures_ahead(root, objects, nodes, first);
    }
    for node in (first..nodes.len()).chain(0..first) {
        progress(&format!("cairn: job handed to node {node} ({})", nodes[node].api));
        match attempt(&nodes[node], root, objects, &withheld, &options, progress) {
            Ok((result, report, value)) => {
                return Ok(Handed {
                    result,
                    report: parse(&report),
                    value,
                    coordinator: node,
                    failed,
                    wall: started.elapsed(),
                });
            }
            Err(Attempt::JobFailed(e)) => return Err(e.context(format!("node {node} coordinated the job"))),
            Err(Attempt::NodeFailed(e)) => {
                progress(&format!("cairn: node {node} did not finish the job ({e:#}); handing it on"));
                failed.push((node, format!("{e:#}")));
            }
        }
        // The next node gets everything: the share withheld from this one may be its own.
        withheld.clear();
    }
    let why: Vec<String> = failed.iter().map(|(n, e)| format!("node {n}: {e}")).collect();
    bail!("no node finished the job: {}", why.join("; "))
}

/// The job's procedures (the tasks' code), which every node that runs a task needs: put on
/// the other nodes from here, beside the hand-off, rather than by the coordinator after it
/// (host to node, then node to node: a second hop before the first task can start). Nobody
/// waits for these uploads: a node that missed its copy gets one from the coordinator.
fn procedures_ahead(root: Handle, objects: &[(Handle, Vec<u8>)], nodes: &[NodeState], first: usize) {
    let by_handle: std::collections::HashMap<Handle, &Vec<u8>> =
        objects.iter().map(|(h, b)| (*h, b)).collect();
    let Ok(graph) = cairn_sched::Graph::build(root, usize::MAX, |h| by_handle.get(h).map(|b| b.to_vec()))
    else {
        return; // the coordinator names what is wrong with the graph
    };
    let procedures: Vec<(Handle, Vec<u8>)> =
        graph.procedures().into_iter().filter_map(|h| by_handle.get(&h).map(|b| (h, b.to_vec()))).collect();
    if procedures.is_empty() {
        return;
    }
    let procedures = std::sync::Arc::new(procedures);
    for (index, node) in nodes.iter().enumerate().filter(|(i, _)| *i != first) {
        let (api, procedures) = (node.api.clone(), procedures.clone());
        let _ = std::thread::Builder::new()
            .name(format!("procedures to node {index}"))
            .spawn(move || Client::connect(&api).and_then(|mut c| c.upload_missing(&procedures)));
    }
}

/// Puts the job's data (the graph's leaves that are not procedures) on the nodes round robin,
/// from node `first` on, as the scheduler's seeding would; the data now on other nodes, which
/// the coordinator is not given. (Should a node holding the only copy of some be lost or caught
/// lying, the coordinator says which object it lacks, and is then given everything: see
/// [`attempt`].) A share a node did not take stays with the coordinator.
fn spread(
    root: Handle,
    objects: &[(Handle, Vec<u8>)],
    nodes: &[NodeState],
    first: usize,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<HashSet<Handle>> {
    let by_handle: std::collections::HashMap<Handle, &Vec<u8>> =
        objects.iter().map(|(h, b)| (*h, b)).collect();
    let graph = cairn_sched::Graph::build(root, usize::MAX, |h| by_handle.get(h).map(|b| b.to_vec()))
        .map_err(anyhow::Error::msg)?;
    let procedures = graph.procedures();
    let data: Vec<Handle> = graph
        .leaves()
        .into_iter()
        .filter(|h| procedures.binary_search(h).is_err() && by_handle.contains_key(h))
        .collect();
    let mut per_node: Vec<Vec<(Handle, Vec<u8>)>> = vec![Vec::new(); nodes.len()];
    for (i, handle) in data.iter().enumerate() {
        let node = (first + i) % nodes.len();
        if node != first {
            per_node[node].push((*handle, by_handle[handle].clone()));
        }
    }
    // The procedures too, which every node needs (see `procedures_ahead`).
    for procedure in procedures.iter().filter(|h| by_handle.contains_key(h)) {
        for (_, share) in per_node.iter_mut().enumerate().filter(|(n, _)| *n != first) {
            share.push((*procedure, by_handle[procedure].clone()));
        }
    }
    // Every node's share at once, the coordinator's (the rest of the job) among them.
    let elsewhere: HashSet<Handle> =
        per_node.iter().flatten().map(|(h, _)| *h).filter(|h| procedures.binary_search(h).is_err()).collect();
    per_node[first] = objects.iter().filter(|(h, _)| !elsewhere.contains(h)).cloned().collect();
    let uploads: Vec<(usize, anyhow::Result<usize>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = per_node
            .iter()
            .enumerate()
            .filter(|(_, share)| !share.is_empty())
            .map(|(node, share)| {
                let api = &nodes[node].api;
                (node, scope.spawn(move || Client::connect(api).and_then(|mut c| c.upload_missing(share))))
            })
            .collect();
        threads
            .into_iter()
            .map(|(node, t)| {
                (node, t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("its upload thread panicked"))))
            })
            .collect()
    });
    let mut placed = HashSet::new();
    for (node, uploaded) in uploads {
        match uploaded {
            Ok(_) if node != first => placed.extend(
                per_node[node].iter().map(|(h, _)| *h).filter(|h| procedures.binary_search(h).is_err()),
            ),
            Ok(_) => {}
            // A node that cannot take its share now leaves it with the coordinator (which the
            // hand-off then tries, and hands on from, as it would anyway).
            Err(e) => progress(&format!("cairn: node {node} did not take its share of the data ({e:#})")),
        }
    }
    progress(&format!(
        "cairn: {} of the job's {} data objects spread over the other nodes",
        placed.len(),
        data.len()
    ));
    Ok(placed)
}

/// Hands the job to `node`: its objects but the `withheld` (data put on other nodes), then
/// COORDINATE. Should the node lack an object of the job (one withheld whose only other
/// holder was lost, or one it evicted), it is given everything and asked once more; the memos
/// make that rerun cheap.
fn attempt(
    node: &NodeState,
    root: Handle,
    objects: &[(Handle, Vec<u8>)],
    withheld: &HashSet<Handle>,
    options: &cairn_sched::Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(Handle, String, Option<Vec<u8>>), Attempt> {
    let node_failed = Attempt::NodeFailed;
    let mut client = Client::connect(&node.api).map_err(node_failed)?;
    let given: Vec<(Handle, Vec<u8>)> =
        objects.iter().filter(|(h, _)| !withheld.contains(h)).cloned().collect();
    client.upload_missing(&given).map_err(node_failed)?;
    // A job may run for hours; a coordinator that dies breaks the connection long before that.
    client.set_patience(COORDINATION_PATIENCE).map_err(node_failed)?;
    // Once: the node may lack what it was not given, or have lost (evicted) what it was.
    let mut given_again = false;
    let (result, report) = loop {
        match client.coordinate(root, options) {
            Ok(answer) => break answer,
            Err(e) => match e.downcast_ref::<Refused>().map(|r| r.code) {
                Some(ErrorCode::NotFound) if !given_again => {
                    progress(&format!(
                        "cairn: the coordinator lacks an object of the job ({e:#}); giving it all"
                    ));
                    client.upload_missing(objects).map_err(node_failed)?;
                    given_again = true;
                }
                // Busy with another job: another node may take it. Any other answer is the
                // job's.
                Some(code) if code != ErrorCode::Busy => return Err(Attempt::JobFailed(e)),
                _ => return Err(Attempt::NodeFailed(e)),
            },
        }
    };
    let value = match result.literal() {
        Some(bytes) => Some(bytes.to_vec()),
        // The coordinator holds the result (it fetched it, checked, before answering).
        None => Some(client.get(result, |_, _| {}).map_err(node_failed)?),
    };
    Ok((result, report, value))
}

fn parse(report: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in report.lines() {
        if let Some((key, value)) = line.split_once('=') {
            // Repeated keys (one line per mismatch) keep every value, a line each.
            fields
                .entry(key.to_string())
                .and_modify(|v: &mut String| {
                    v.push('\n');
                    v.push_str(value)
                })
                .or_insert_with(|| value.to_string());
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_with_repeated_keys_kept() {
        let fields = parse("tasks=7\nruns=10.1.0.1:3,10.1.0.2:4\nmismatch=a\nmismatch=b\nnonsense\n");
        assert_eq!(fields["tasks"], "7");
        assert_eq!(fields["runs"], "10.1.0.1:3,10.1.0.2:4");
        assert_eq!(fields["mismatch"], "a\nb");
        assert!(!fields.contains_key("nonsense"));
    }

    #[test]
    fn a_node_out_of_range_is_refused_before_anything_is_sent() {
        let options = cairn_sched::Options {
            placement: cairn_sched::Placement::Locality,
            verify: false,
            spread: false,
            recall: true,
            seed: 1,
        };
        let err = run(Handle::blob(b"x"), &[], &[], 0, &options, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("there is no node 0"), "{err}");
    }
}
