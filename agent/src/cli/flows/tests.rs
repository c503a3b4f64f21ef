//! Rendering of records as tables.

use super::render::render_connections;
use crate::test_support::egress_view as egress;

/// Cells of a rendered line (columns are separated by at least two spaces) and where
/// each column starts.
fn cells(line: &str) -> (Vec<&str>, Vec<usize>) {
    let mut starts = vec![0];
    let b = line.as_bytes();
    for i in 2..b.len() {
        if b[i] != b' ' && b[i - 1] == b' ' && b[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let v = starts
        .iter()
        .enumerate()
        .map(|(n, &s)| line[s..starts.get(n + 1).copied().unwrap_or(line.len())].trim_end())
        .collect();
    (v, starts)
}

#[test]
fn a_connection_row_shows_who_the_verdicts_both_nat_sides_and_counts_in_columns() {
    let mut v = egress();
    v.outcome = Some(crate::flow::Outcome::Established);
    let text = render_connections(&[&v]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (head, head_at) = cells(lines[0]);
    let (row, row_at) = cells(lines[1]);
    assert_eq!(
        head,
        [
            "PROTO",
            "SOURCE",
            "FROM",
            "DESTINATION",
            "TO",
            "CLASS",
            "OUTCOME",
            "VERDICTS",
            "NAT",
            "FWD PKTS/BYTES",
            "REPLY PKTS/BYTES"
        ]
    );
    assert_eq!(
        row,
        [
            "tcp",
            "10.244.1.10:40000",
            "alpha:alpha-web/web-1",
            "203.0.113.10:443",
            "internet",
            "pod_to_egress/internet",
            "established",
            "egress=unmediated",
            "snat 10.224.0.4:40001",
            "3/300",
            "2/150"
        ]
    );
    assert_eq!(head_at, row_at, "columns line up:\n{text}");
}

#[test]
fn a_node_process_names_itself_and_rows_go_largest_first() {
    let mut big = egress();
    big.forward.bytes = 9_000;
    big.process = Some(crate::process::ProcessInfo {
        pid: 42,
        command: "curl".into(),
        cgroup_id: 7,
        cgroup: None,
        pod: Some("alpha-jobs/jobs-1".into()),
    });
    let small = egress();
    let text = render_connections(&[&small, &big]);
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| cells(l).0).collect();
    assert_eq!(
        rows[0][2],
        "alpha:alpha-web/web-1 (curl[42] pod alpha-jobs/jobs-1)"
    );
    assert_eq!(rows[0][9], "3/9000");
    assert_eq!(rows[1][9], "3/300");
    assert_eq!(rows[1][6], "-", "no outcome known yet");
}
