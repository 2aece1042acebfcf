//! `parliament status`: one table of the whole parliament, read from the
//! HTTP port of any member and, through the addresses it knows, of all the
//! others.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use node::api::{MemberStatus, StatusReport};
use node::http::client;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The HTTP address of any member.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8379")]
    http: String,
    /// Time each member has to answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
}

/// One member as the node asked first knows it, and its own report if it
/// answered.
pub type Row = (MemberStatus, Option<StatusReport>);

/// Exits 0 when every member answered, 1 when some did not.
pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let rows = gather(&args.http, Duration::from_millis(args.timeout_ms))?;
    print!("{}", render_table(&rows));
    Ok(if rows.iter().all(|(_, report)| report.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Asks the node at `addr` for its status, then every other member it knows
/// (at once, each within `timeout`). Fails only if `addr` does not answer.
pub fn gather(addr: &str, timeout: Duration) -> Result<Vec<Row>> {
    let first = client::fetch_status(addr, timeout).map_err(|error| {
        anyhow!(
            "{:#}; is a parliament node serving HTTP there? Pass --http IP:PORT to ask another member",
            anyhow::Error::from(error)
        )
    })?;
    let mut members = first.members.clone();
    if !members.iter().any(|m| m.id == first.id) {
        members.push(MemberStatus {
            id: first.id,
            role: String::new(),
            peer_addr: String::new(),
            client_addr: Some(first.client_addr.clone()),
            http_addr: Some(first.http_addr.clone()),
            connected: true,
            match_slot: None,
        });
    }
    members.sort_by_key(|m| m.id);

    let reports: Vec<Option<StatusReport>> = std::thread::scope(|scope| {
        let asks: Vec<_> = members
            .iter()
            .map(|member| {
                let first = &first;
                scope.spawn(move || {
                    if member.id == first.id {
                        return Some(first.clone());
                    }
                    let http = reachable(member.http_addr.as_deref()?, addr);
                    let report = client::fetch_status(&http, timeout).ok()?;
                    // An address that leads to another node is no answer.
                    (report.id == member.id).then_some(report)
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().unwrap_or(None))
            .collect()
    });
    Ok(members.into_iter().zip(reports).collect())
}

/// A member's HTTP address as this machine can reach it: a wildcard host
/// (the member listens on every interface) becomes the host of `via`, the
/// address that answered first.
pub fn reachable(http_addr: &str, via: &str) -> String {
    let Some((host, port)) = http_addr.rsplit_once(':') else {
        return http_addr.to_owned();
    };
    if !matches!(host, "" | "0.0.0.0" | "[::]" | "::") {
        return http_addr.to_owned();
    }
    match via.rsplit_once(':') {
        Some((via_host, _)) => format!("{via_host}:{port}"),
        None => http_addr.to_owned(),
    }
}

/// The table `parliament status` prints, one line per member, then a line
/// naming the leader.
///
/// Lag is the highest commit slot any member reported minus the member's
/// applied slot: how far its state machine is behind the parliament.
pub fn render_table(rows: &[Row]) -> String {
    const HEADER: [&str; 8] = [
        "ID", "ROLE", "BALLOT", "COMMIT", "APPLIED", "LAG", "LEADER", "HTTP",
    ];
    /// Columns aligned to the right (numbers).
    const RIGHT: [bool; 8] = [true, false, false, true, true, true, false, false];

    let max_commit = rows
        .iter()
        .filter_map(|(_, report)| report.as_ref().map(|r| r.commit_slot))
        .max()
        .unwrap_or(0);
    let dash = || "-".to_owned();
    let mut lines: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    let mut leaders = Vec::new();
    for (member, report) in rows {
        let http = report
            .as_ref()
            .map(|r| r.http_addr.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| member.http_addr.clone())
            .unwrap_or_else(dash);
        lines.push(match report {
            Some(r) => {
                let leads = r.role == "leader";
                if leads {
                    leaders.push(member.id);
                }
                [
                    member.id.to_string(),
                    r.role.clone(),
                    r.ballot.clone(),
                    r.commit_slot.to_string(),
                    r.applied_slot.to_string(),
                    max_commit.saturating_sub(r.applied_slot).to_string(),
                    if leads { "*".to_owned() } else { String::new() },
                    http,
                ]
            }
            None => [
                member.id.to_string(),
                "unreachable".to_owned(),
                dash(),
                dash(),
                dash(),
                dash(),
                String::new(),
                http,
            ],
        });
    }

    let mut widths = [0usize; 8];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if RIGHT[i] {
                let _ = write!(text, "{cell:>width$}", width = widths[i]);
            } else {
                let _ = write!(text, "{cell:<width$}", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }

    let answered = rows.iter().filter(|(_, report)| report.is_some()).count();
    let leader = match leaders.as_slice() {
        [] => "no member reports leading".to_owned(),
        [one] => format!("leader {one}"),
        many => {
            let ids: Vec<String> = many.iter().map(u64::to_string).collect();
            format!(
                "{} members report leading: {} (all but the highest ballot are stale)",
                many.len(),
                ids.join(", ")
            )
        }
    };
    let _ = writeln!(
        out,
        "{leader}; {answered} of {} members answered",
        rows.len()
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use node::api::NodeHandle;
    use node::http::serve_http;
    use node::metrics::Metrics;
    use tokio::sync::{mpsc, watch};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn member(id: u64, http_addr: Option<&str>) -> MemberStatus {
        MemberStatus {
            id,
            role: "voter".to_owned(),
            peer_addr: format!("127.0.0.1:{}", 7000 + id),
            client_addr: None,
            http_addr: http_addr.map(str::to_owned),
            connected: true,
            match_slot: None,
        }
    }

    fn report(
        id: u64,
        role: &str,
        commit: u64,
        applied: u64,
        members: &[MemberStatus],
    ) -> StatusReport {
        StatusReport {
            id,
            role: role.to_owned(),
            leader_id: Some(1),
            ballot: "2.1".to_owned(),
            commit_slot: commit,
            applied_slot: applied,
            http_addr: members
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.http_addr.clone())
                .unwrap_or_default(),
            members: members.to_vec(),
            ..StatusReport::default()
        }
    }

    /// HTTP servers on loopback ports, stopped when dropped.
    struct Servers {
        runtime: Option<tokio::runtime::Runtime>,
        _keep: Vec<(mpsc::Receiver<node::api::Op>, watch::Sender<StatusReport>)>,
    }

    impl Servers {
        fn new() -> Servers {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            Servers {
                runtime: Some(runtime),
                _keep: Vec::new(),
            }
        }

        fn serve(&mut self, listener: std::net::TcpListener, report: StatusReport) {
            let (ops, ops_rx) = mpsc::channel(1);
            let (status, status_rx) = watch::channel(report);
            let (_, stats_rx) = watch::channel(host::HostStats::default());
            let metrics = Arc::new(Metrics::new(status_rx.clone(), stats_rx.clone()));
            let node = NodeHandle::new(ops, status_rx, stats_rx, metrics);
            listener.set_nonblocking(true).unwrap();
            if let Some(runtime) = &self.runtime {
                runtime.spawn(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    serve_http(listener, node).await
                });
            }
            self._keep.push((ops_rx, status));
        }
    }

    impl Drop for Servers {
        fn drop(&mut self) {
            if let Some(runtime) = self.runtime.take() {
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }

    fn bind() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    /// An address on which nothing listens (bound, then closed).
    fn silent_addr() -> String {
        bind().1
    }

    #[test]
    fn gather_asks_every_member_and_marks_the_silent_one() {
        let (l1, a1) = bind();
        let (l2, a2) = bind();
        let a3 = silent_addr();
        // Member 2 advertises a wildcard host: reached on the host of the
        // address asked first.
        let wild2 = format!("0.0.0.0:{}", a2.rsplit_once(':').unwrap().1);
        let members = [
            member(1, Some(&a1)),
            member(2, Some(&wild2)),
            member(3, Some(&a3)),
            member(4, None),
        ];
        let mut servers = Servers::new();
        let leader = report(1, "leader", 30, 29, &members);
        let follower = report(2, "follower", 27, 25, &members);
        servers.serve(l1, leader.clone());
        servers.serve(l2, follower.clone());

        let rows = gather(&a1, TIMEOUT).unwrap();
        let ids: Vec<u64> = rows.iter().map(|(m, _)| m.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(rows[0].1.as_ref(), Some(&leader));
        assert_eq!(rows[1].1.as_ref(), Some(&follower));
        assert_eq!(rows[2].1, None);
        assert_eq!(rows[3].1, None);

        // Asking the follower first gives the same answers.
        let via_follower = gather(&a2, TIMEOUT).unwrap();
        assert_eq!(via_follower, rows);

        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6, "{table}");
        let fields =
            |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
        assert_eq!(
            fields(lines[1]),
            ["1", "leader", "2.1", "30", "29", "1", "*", a1.as_str()]
        );
        assert_eq!(
            fields(lines[2]),
            ["2", "follower", "2.1", "27", "25", "5", wild2.as_str()]
        );
        assert_eq!(
            fields(lines[3]),
            ["3", "unreachable", "-", "-", "-", "-", a3.as_str()]
        );
        assert_eq!(
            fields(lines[4]),
            ["4", "unreachable", "-", "-", "-", "-", "-"]
        );
        assert_eq!(lines[5], "leader 1; 2 of 4 members answered");
    }

    #[test]
    fn gather_names_the_address_when_the_first_node_is_silent() {
        let addr = silent_addr();
        let error = gather(&addr, TIMEOUT).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(&addr), "{message}");
        assert!(message.contains("--http"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    #[test]
    fn a_node_without_members_is_a_parliament_of_one() {
        let (l1, a1) = bind();
        let mut servers = Servers::new();
        let alone = StatusReport {
            http_addr: a1.clone(),
            ..report(5, "leader", 3, 3, &[])
        };
        servers.serve(l1, alone.clone());
        let rows = gather(&a1, TIMEOUT).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.id, 5);
        assert_eq!(rows[0].1.as_ref(), Some(&alone));
    }

    #[test]
    fn the_table_computes_lag_from_the_highest_commit_and_aligns_columns() {
        let members = [member(1, None), member(2, None), member(3, None)];
        let rows: Vec<Row> = vec![
            (
                members[0].clone(),
                Some(report(1, "follower", 8, 8, &members)),
            ),
            (
                members[1].clone(),
                Some(report(2, "leader", 1012, 1000, &members)),
            ),
            (
                members[2].clone(),
                Some(report(3, "leader", 5, 5, &members)),
            ),
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID  ROLE      BALLOT  COMMIT  APPLIED   LAG  LEADER  HTTP"
        );
        assert_eq!(
            lines[1],
            " 1  follower  2.1          8        8  1004          -"
        );
        assert_eq!(
            lines[2],
            " 2  leader    2.1       1012     1000    12  *       -"
        );
        assert_eq!(
            lines[4],
            "2 members report leading: 2, 3 (all but the highest ballot are stale); 3 of 3 members answered"
        );
        let none: Vec<Row> = vec![(members[0].clone(), None)];
        assert!(
            render_table(&none).ends_with("no member reports leading; 0 of 1 members answered\n")
        );
    }

    #[test]
    fn wildcard_hosts_are_reached_through_the_asked_host() {
        assert_eq!(
            reachable("0.0.0.0:8380", "127.0.0.5:8379"),
            "127.0.0.5:8380"
        );
        assert_eq!(reachable("[::]:8380", "[::1]:8379"), "[::1]:8380");
        assert_eq!(reachable(":8380", "localhost:8379"), "localhost:8380");
        assert_eq!(
            reachable("127.0.0.2:8380", "127.0.0.1:8379"),
            "127.0.0.2:8380"
        );
        assert_eq!(reachable("nonsense", "127.0.0.1:8379"), "nonsense");
    }
}
