//! Two regions in network namespaces, traffic across dwcp's fast path, and its counters.
use dwcp_common::Reason;
use dwcp_lab::lab::TwoRegionLab;

fn main() -> anyhow::Result<()> {
    let mut lab = TwoRegionLab::build("demo")?;
    lab.start_dataplanes()?;
    for (from, to) in [(&lab.a, &lab.b), (&lab.b, &lab.a)] {
        let out = from
            .host
            .exec(&["ping", "-c3", "-i0.2", "-W1", &to.host_ip.to_string()]);
        match out {
            Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
            Err(e) => println!("ping failed: {e}"),
        }
    }
    for (name, r) in [("A", &lab.a), ("B", &lab.b)] {
        let dp = r.dataplane.as_ref().unwrap();
        println!("gateway {name} ({:?}):", r.attach_mode.unwrap());
        for (reason, n) in dp.reason_counts()? {
            if n > 0 {
                println!("  {:<28} {n}", reason.name());
            }
        }
        let _ = Reason::LanForwarded;
    }
    Ok(())
}
