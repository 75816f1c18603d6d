//! `cargo xtask bench remote_failover`: how fast a link failure reaches every gateway.
//!
//! Today the simulation part: 50 regions of a synthetic topology, one gateway each, running
//! the real link-state state machines, back-off and routing engine on a simulated clock
//! (`dwcp_lab::flood_sim`); every single-link failure is cut in turn and measured against its
//! bound. The lab part (loss window of a flow two hops from a cut in a network-namespace
//! mesh, against flooding turned off, and packets looped) needs the agent's integration of
//! the link state and is not measured yet. Writes `target/bench/remote_failover.json` and
//! prints the Markdown report.
use anyhow::{Context, Result};
use dwcp_control::topology::synthetic::SyntheticSpec;
use dwcp_lab::flood_sim::{FailureOutcome, SimConfig, Simulation};

const REGIONS: usize = 50;
/// Links from each region to its 3 nearest (the default 4 makes 172 links; 3 makes the 148
/// of the "about 150"), plus the default regions / 5 long-haul links.
const NEAREST: usize = 3;

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() -> Result<()> {
    let spec = SyntheticSpec {
        nearest: NEAREST,
        ..SyntheticSpec::new(REGIONS, 0)
    };
    let config = SimConfig::agent_defaults(spec);
    let sim = Simulation::new(config.clone()).context("warming up the simulated network")?;
    let links: Vec<_> = sim.topology().links().iter().map(|l| l.id).collect();
    let mut outcomes: Vec<FailureOutcome> = links
        .iter()
        .map(|&l| sim.fail(l).with_context(|| format!("failure of link {l}")))
        .collect::<Result<_>>()?;
    outcomes.sort_by(|a, b| a.converge_ms.total_cmp(&b.converge_ms));

    let converge: Vec<f64> = outcomes.iter().map(|o| o.converge_ms).collect();
    let p50 = percentile(&converge, 0.50);
    let p99 = percentile(&converge, 0.99);
    // The failure whose converge time is the p99: its own bound is the like-for-like one.
    let p99_failure = outcomes
        .iter()
        .find(|o| o.converge_ms == p99)
        .expect("the p99 is one of the values");
    let min_bound = outcomes
        .iter()
        .map(|o| o.bound_ms)
        .fold(f64::INFINITY, f64::min);
    let over_bound = outcomes
        .iter()
        .filter(|o| o.converge_ms > o.bound_ms)
        .count();
    let n = outcomes.len() as f64;
    let messages_per_change = outcomes.iter().map(|o| o.messages() as f64).sum::<f64>() / n;
    let updates_per_change = outcomes.iter().map(|o| o.updates as f64).sum::<f64>() / n;
    let acks_per_change = outcomes.iter().map(|o| o.acks as f64).sum::<f64>() / n;
    let computations = outcomes.iter().map(|o| o.computations as f64).sum::<f64>() / n;
    let compute_max = outcomes
        .iter()
        .map(|o| o.compute_max_ms)
        .fold(0.0, f64::max);
    let worst_slack = outcomes
        .iter()
        .map(|o| o.converge_ms / o.bound_ms)
        .fold(0.0, f64::max);

    let json = serde_json::json!({
        "metrics": {
            "sim_50r_converge_p99_ms": p99,
            "sim_50r_converge_bound_ms": p99_failure.bound_ms,
            "sim_50r_messages_per_change": messages_per_change,
            "sim_50r_links": links.len(),
            "sim_50r_failures": outcomes.len(),
            "sim_50r_failures_over_bound": over_bound,
        },
        "sim_50r_converge_p50_ms": p50,
        "sim_50r_min_bound_ms": min_bound,
        "sim_50r_p99_failure": p99_failure,
        "detection_ms": config.detection.as_secs_f64() * 1e3,
        "failures": outcomes,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("remote_failover.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let detection_ms = config.detection.as_secs_f64() * 1e3;
    println!(
        "Every single-link failure of a {REGIONS}-region synthetic mesh ({} links), simulated: time from the cut until every gateway has both ends' new records and has recomputed its routes from them, against that failure's bound.\n",
        links.len()
    );
    println!("| failures | converge p50 ms | converge p99 ms | bound of the p99 failure ms | smallest bound ms | failures over their own bound | largest converge ÷ own bound | messages per failure (updates + acks) | route computations per failure | slowest computation ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {p50:.1} | {p99:.1} | {:.1} | {min_bound:.1} | {over_bound} | {worst_slack:.2} | {messages_per_change:.0} ({updates_per_change:.0} + {acks_per_change:.0}) | {computations:.1} | {compute_max:.2} |",
        outcomes.len(),
        p99_failure.bound_ms,
    );
    println!("\nLab (`trials`, `p50_ms`, `p99_ms`, `baseline_p50_ms`, `looped_packets`): not measured yet; it needs the agent to run the link state (issue 16's next steps).");
    println!(
        "\nMethod: `dwcp_lab::flood_sim`, one process, simulated clock. One gateway per region (`SyntheticSpec::new({REGIONS}, 0)` with {NEAREST} nearest neighbours per region), each running the real `dwcp_control::link_state::Flooder` (origination with damping, flooding, acknowledgements, the database), the state owner's RFC 8405 back-off (`Debounce`, the updater's defaults: initial {} ms, short {} ms, long {} ms) and the routing engine's incremental table update on the topology with the database's view applied (minimum latency). Every datagram is encoded, carried for the link's one-way delay (half the great-circle RTT prior) plus {} ms of processing, and decoded; route computations advance the gateway's clock by the wall time they take here. At the cut both ends detect the link down after {detection_ms:.0} ms (the agent's defaults: 3 unanswered probes 10 ms apart, read by the monitor's next 10 ms poll) and announce it at once. A gateway has converged when both ends' records in its database say the link is down and its routes were computed from its current view (a record that changes nothing routing sees triggers no computation). Bound of a failure = detection + the largest, over every gateway and both ends, of the one-way delays along the shortest-delay path over the surviving links + {} ms per hop; the bound reported is the one of the failure whose converge time is the p99 (the same failure on both sides of the comparison), and every failure is also checked against its own. Messages per failure: datagrams sent from the cut until the network is quiet (two records, each over every link at most once each way, and their acknowledgements). Percentiles are nearest-rank. Per-failure figures are in `target/bench/remote_failover.json`.",
        config.delays.initial.as_millis(),
        config.delays.short.as_millis(),
        config.delays.long.as_millis(),
        config.processing.as_millis(),
        config.hop_allowance.as_millis(),
    );
    Ok(())
}
