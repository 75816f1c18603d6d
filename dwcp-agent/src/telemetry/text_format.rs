//! The classic Prometheus text format (0.0.4) from the OpenMetrics text that prometheus-client
//! writes. Prometheus itself asks for OpenMetrics; `curl`, `promtool check metrics` and older
//! scrapers read the classic format, which differs in three ways that matter here:
//!
//! - a counter family is named with its `_total` suffix (OpenMetrics names it without);
//! - there is no `# UNIT` line and no `# EOF` marker;
//! - `info` is not a type (we only write gauges and counters, so any other type is untyped).
//!
//! HELP text escapes only `\\` and `\n` in the classic format; OpenMetrics also escapes `"`.

/// Converts an OpenMetrics exposition of gauges and counters to the classic text format.
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The TYPE line of the same family follows its HELP line.
            let kind = lines
                .peek()
                .and_then(|l| l.strip_prefix("# TYPE "))
                .and_then(|t| t.split_once(' '))
                .filter(|(n, _)| *n == name)
                .map(|(_, k)| k.to_string());
            let (name, kind) = classic_family(name, kind.as_deref());
            out.push_str(&format!("# HELP {name} {}\n", help.replace("\\\"", "\"")));
            if let Some(kind) = kind {
                lines.next();
                out.push_str(&format!("# TYPE {name} {kind}\n"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            // A TYPE line without HELP.
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = classic_family(name, Some(kind));
            out.push_str(&format!("# TYPE {name} {}\n", kind.unwrap_or("untyped")));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The classic family name and type for an OpenMetrics family.
fn classic_family(name: &str, kind: Option<&str>) -> (String, Option<&'static str>) {
    match kind {
        Some("counter") => (format!("{name}_total"), Some("counter")),
        Some("gauge") => (name.to_string(), Some("gauge")),
        Some("info") => (format!("{name}_info"), Some("gauge")),
        Some("histogram") => (name.to_string(), Some("histogram")),
        Some("summary") => (name.to_string(), Some("summary")),
        Some(_) => (name.to_string(), Some("untyped")),
        None => (name.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_suffix_and_units_and_eof_go() {
        let om = "# HELP dwcp_failovers Failovers.\n# TYPE dwcp_failovers counter\n\
                  dwcp_failovers_total 3\n\
                  # HELP dwcp_link_rtt_seconds Smoothed \\\"RTT\\\".\n\
                  # TYPE dwcp_link_rtt_seconds gauge\n# UNIT dwcp_link_rtt_seconds seconds\n\
                  dwcp_link_rtt_seconds{link=\"a\"} 0.08\n\
                  # HELP dwcp_build Build.\n# TYPE dwcp_build info\n\
                  dwcp_build_info{version=\"1\"} 1\n# EOF\n";
        let text = openmetrics_to_prometheus(om);
        assert_eq!(
            text,
            "# HELP dwcp_failovers_total Failovers.\n# TYPE dwcp_failovers_total counter\n\
             dwcp_failovers_total 3\n\
             # HELP dwcp_link_rtt_seconds Smoothed \"RTT\".\n\
             # TYPE dwcp_link_rtt_seconds gauge\n\
             dwcp_link_rtt_seconds{link=\"a\"} 0.08\n\
             # HELP dwcp_build_info Build.\n# TYPE dwcp_build_info gauge\n\
             dwcp_build_info{version=\"1\"} 1\n"
        );
    }

    #[test]
    fn a_type_line_without_help_is_converted_too() {
        let text = openmetrics_to_prometheus("# TYPE x counter\nx_total 1\n# EOF\n");
        assert_eq!(text, "# TYPE x_total counter\nx_total 1\n");
    }
}
