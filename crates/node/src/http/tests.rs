#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

use super::client::{self, ClientError, Response};
use super::*;
use crate::api::{MemberStatus, NodeHandle, Op, StatusReport};
use crate::metrics::Metrics;
use host::HostStats;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A server on a loopback port with its own runtime, and the ends of the
/// node handle the test controls. Dropping it stops the server.
struct TestServer {
    runtime: Option<Runtime>,
    addr: String,
    status: watch::Sender<StatusReport>,
    stats: watch::Sender<HostStats>,
    metrics: Arc<Metrics>,
    _ops: mpsc::Receiver<Op>,
}

impl TestServer {
    fn start(report: StatusReport) -> TestServer {
        TestServer::start_limited(report, CONNECTIONS_MAX, Duration::from_secs(60))
    }

    fn start_limited(report: StatusReport, connections_max: usize, idle: Duration) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ops_tx, ops_rx) = mpsc::channel(8);
        let (status_tx, status_rx) = watch::channel(report);
        let (stats_tx, stats_rx) = watch::channel(HostStats::default());
        let metrics = Arc::new(Metrics::new(status_rx.clone(), stats_rx.clone()));
        let node = NodeHandle::new(ops_tx, status_rx, stats_rx, metrics.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve_limited(listener, node, connections_max, idle).await
        });
        TestServer {
            runtime: Some(runtime),
            addr,
            status: status_tx,
            stats: stats_tx,
            metrics,
            _ops: ops_rx,
        }
    }

    fn get(&self, path: &str) -> Response {
        client::get(&self.addr, path, TIMEOUT).unwrap()
    }

    fn body(&self, path: &str) -> String {
        let response = self.get(path);
        assert_eq!(response.status, 200, "GET {path}");
        String::from_utf8(response.body).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn member(id: u64, connected: bool, match_slot: Option<u64>) -> MemberStatus {
    MemberStatus {
        id,
        role: "voter".to_owned(),
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        client_addr: Some(format!("127.0.0.1:{}", 6000 + id)),
        http_addr: Some(format!("127.0.0.1:{}", 8000 + id)),
        connected,
        match_slot,
    }
}

fn follower() -> StatusReport {
    StatusReport {
        id: 1,
        role: "follower".to_owned(),
        leader_id: None,
        ballot: "3.2".to_owned(),
        commit_slot: 5,
        applied_slot: 4,
        log_start: 1,
        keys: 2,
        client_connections: 0,
        client_addr: "127.0.0.1:6001".to_owned(),
        http_addr: "127.0.0.1:8001".to_owned(),
        data_dir: "data/1".to_owned(),
        version: "0.1.0".to_owned(),
        cluster_id: "000000000000000000000000000000c1".to_owned(),
        uptime_seconds: 7,
        members: vec![
            member(1, true, None),
            member(2, false, None),
            member(3, true, None),
        ],
        voters: vec![1, 2, 3],
        learners: Vec::new(),
        config_slot: 1,
        rejoining: false,
        rejoin_waiting_for: Vec::new(),
    }
}

fn leader() -> StatusReport {
    StatusReport {
        role: "leader".to_owned(),
        leader_id: Some(1),
        ballot: "4.1".to_owned(),
        commit_slot: 20,
        applied_slot: 20,
        keys: 9,
        members: vec![
            member(1, true, Some(20)),
            member(2, true, Some(17)),
            member(3, false, None),
        ],
        ..follower()
    }
}

// ---------------------------------------------------------------------------
// A validator for the OpenMetrics text format, strict about what this server
// promises: every sample belongs to a family declared by a TYPE line before
// it, families are contiguous, a counter's samples end in `_total`,
// histogram buckets rise monotonically to `le="+Inf"`, which equals
// `_count`, and the text ends with `# EOF`.

type Labels = Vec<(String, String)>;

/// Sample values by their name and labels as written (`name{a="b"}`).
fn validate(text: &str) -> Result<BTreeMap<String, f64>, String> {
    struct Hist {
        buckets: Vec<(String, f64)>,
        sum: Option<f64>,
        count: Option<f64>,
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = BTreeMap::new();
    let mut hists: BTreeMap<(String, String), Hist> = BTreeMap::new();

    let Some(body) = text.strip_suffix("# EOF\n") else {
        return Err("the text does not end with # EOF and a newline".to_owned());
    };
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("a line before # EOF does not end with a newline".to_owned());
    }
    for (n, line) in body.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            check_name(name).map_err(at)?;
            if !helps.insert(name.to_owned()) {
                return Err(at("second HELP".to_owned()));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("no type".to_owned()))?;
            check_name(name).map_err(at)?;
            if ![
                "counter",
                "gauge",
                "histogram",
                "summary",
                "unknown",
                "info",
            ]
            .contains(&kind)
            {
                return Err(at(format!("unknown type {kind}")));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(at("second TYPE".to_owned()));
            }
            if kind == "counter" && name.ends_with("_total") {
                return Err(at("a counter family named with _total".to_owned()));
            }
            if let Some(previous) = current.replace(name.to_owned()) {
                finished.insert(previous);
            }
        } else if line.starts_with('#') {
            continue;
        } else {
            let (name, labels, value) = parse_sample(line).map_err(at)?;
            let family = family_of(&name, &types)
                .ok_or_else(|| at(format!("{name} has no TYPE before it")))?;
            if current.as_deref() != Some(family.as_str()) || finished.contains(&family) {
                return Err(at(format!("{name} is outside its family's block")));
            }
            let key = line
                .rsplit_once(' ')
                .map(|(k, _)| k.to_owned())
                .unwrap_or_default();
            if samples.insert(key, value).is_some() {
                return Err(at("duplicate sample".to_owned()));
            }
            let kind = types.get(&family).map(String::as_str);
            if kind == Some("counter") && (value.is_nan() || value < 0.0) {
                return Err(at("negative counter".to_owned()));
            }
            if kind == Some("histogram") {
                let le = labels
                    .iter()
                    .find(|(l, _)| l == "le")
                    .map(|(_, v)| v.clone());
                let rest: Labels = labels.into_iter().filter(|(l, _)| l != "le").collect();
                let hist = hists
                    .entry((family.clone(), format!("{rest:?}")))
                    .or_insert(Hist {
                        buckets: Vec::new(),
                        sum: None,
                        count: None,
                    });
                if name.ends_with("_bucket") {
                    let le = le.ok_or_else(|| at("bucket without le".to_owned()))?;
                    hist.buckets.push((le, value));
                } else if name.ends_with("_sum") {
                    hist.sum = Some(value);
                } else {
                    hist.count = Some(value);
                }
            }
        }
    }
    for ((family, labels), hist) in hists {
        let at = |why: &str| format!("histogram {family}{labels}: {why}");
        let (last_le, last) = hist.buckets.last().ok_or_else(|| at("no buckets"))?;
        if last_le != "+Inf" {
            return Err(at("the last bucket is not +Inf"));
        }
        if hist.count != Some(*last) {
            return Err(at("_count differs from the +Inf bucket"));
        }
        if hist.sum.is_none() {
            return Err(at("no _sum"));
        }
        for pair in hist.buckets.windows(2) {
            let (a, b) = (parse_value(&pair[0].0), parse_value(&pair[1].0));
            match (a, b) {
                (Ok(a), Ok(b)) if a < b => {}
                _ => return Err(at("bucket bounds do not rise")),
            }
            if pair[0].1 > pair[1].1 {
                return Err(at("bucket counts fall"));
            }
        }
    }
    Ok(samples)
}

fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    let kind_of = |base: &str| types.get(base).map(String::as_str);
    if let Some(kind) = kind_of(name) {
        return (kind != "counter").then(|| name.to_owned());
    }
    let counter = ["_total", "_created"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (kind_of(base) == Some("counter")).then(|| base.to_owned())
    });
    counter.or_else(|| {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (kind_of(base) == Some("histogram")).then(|| base.to_owned())
        })
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            if let Some((i, '}')) = chars.peek().copied() {
                rest = &inner[i + 1..];
                break;
            }
            let mut label = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => label.push(c),
                    None => return Err("unterminated label".to_owned()),
                }
            }
            check_name(&label)?;
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value without quotes".to_owned());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape".to_owned()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".to_owned()),
                }
            }
            labels.push((label, value));
            match chars.peek().copied() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected , or }".to_owned()),
            }
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| "bad timestamp".to_owned())?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".to_owned());
    }
    Ok((name.to_owned(), labels, value))
}

#[test]
fn the_validator_rejects_broken_exposition_text() {
    let good = "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# EOF\n";
    assert!(validate(good).is_ok(), "{:?}", validate(good));
    let broken = [
        "a_total 1\n",                                     // no TYPE
        "# TYPE a counter\na 1\n",                         // counter sample without _total
        "# TYPE a_total counter\na_total 1\n",             // counter family named _total
        "# TYPE a gauge\na{x=\"1} 1\n",                    // unterminated label
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // a outside its block
        "# TYPE a gauge\na one\n",                         // bad value
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
    ]
    .map(|body| format!("{body}# EOF\n"));
    assert!(validate("# TYPE a gauge\na 1\n").is_err(), "no # EOF");
    for text in broken {
        assert!(validate(&text).is_err(), "accepted {text:?}");
    }
}

// ---------------------------------------------------------------------------

#[test]
fn metrics_are_valid_exposition_text_and_follow_the_node() {
    let server = TestServer::start(follower());
    let response = server.get("/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(crate::metrics::CONTENT_TYPE)
    );
    let text = String::from_utf8(response.body).unwrap();
    let before = validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(before["parliament_proposals_total"], 0.0);
    assert_eq!(before["parliament_role{role=\"follower\"}"], 1.0);
    assert_eq!(before["parliament_role{role=\"leader\"}"], 0.0);
    assert_eq!(before["parliament_leader_known"], 0.0);
    assert!(!before.contains_key("parliament_leader_id"));
    assert_eq!(before["parliament_ballot_round"], 3.0);
    assert_eq!(before["parliament_commit_slot"], 5.0);
    assert_eq!(before["parliament_applied_slot"], 4.0);
    assert_eq!(before["parliament_peer_connected{peer=\"2\"}"], 0.0);
    assert_eq!(before["parliament_peer_connected{peer=\"3\"}"], 1.0);
    assert!(
        !before.contains_key("parliament_peer_connected{peer=\"1\"}"),
        "the node is not its own peer"
    );
    assert!(!text.contains("parliament_peer_lag_slots"), "no lag known");
    assert_eq!(before["parliament_peer_voter{peer=\"2\"}"], 1.0);
    assert!(before.contains_key("parliament_voters"));
    assert!(before.contains_key("parliament_config_slot"));
    assert_eq!(before["parliament_fsync_seconds_count"], 0.0);

    let m = &server.metrics;
    m.client_connections_total.inc_by(5);
    m.client_connections_open.set(4);
    m.fsync_seconds.observe(0.000_3);
    m.fsync_seconds.observe(0.004);
    m.fsync_seconds.observe(9.0);
    server.stats.send_modify(|s| {
        s.proposals = 3;
        s.commits = 2;
        s.snapshots_installed = 1;
        s.batch_commands.observe(3.0);
    });
    server.status.send(leader()).unwrap();

    let text = server.body("/metrics");
    let after = validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(after["parliament_proposals_total"], 3.0);
    assert_eq!(after["parliament_commits_total"], 2.0);
    assert_eq!(after["parliament_client_connections_total"], 5.0);
    assert_eq!(after["parliament_client_connections_open"], 4.0);
    assert_eq!(after["parliament_snapshots_installed_total"], 1.0);
    assert_eq!(after["parliament_fsync_seconds_count"], 3.0);
    assert_eq!(
        after["parliament_fsync_seconds_bucket{le=\"0.00025\"}"],
        0.0
    );
    assert_eq!(after["parliament_fsync_seconds_bucket{le=\"0.0005\"}"], 1.0);
    assert_eq!(after["parliament_fsync_seconds_bucket{le=\"0.005\"}"], 2.0);
    assert_eq!(after["parliament_fsync_seconds_bucket{le=\"5.0\"}"], 2.0);
    assert_eq!(after["parliament_fsync_seconds_bucket{le=\"+Inf\"}"], 3.0);
    assert!((after["parliament_fsync_seconds_sum"] - 9.0043).abs() < 1e-6);
    assert_eq!(after["parliament_batch_commands_bucket{le=\"2.0\"}"], 0.0);
    assert_eq!(after["parliament_batch_commands_bucket{le=\"4.0\"}"], 1.0);
    assert_eq!(after["parliament_role{role=\"leader\"}"], 1.0);
    assert_eq!(after["parliament_role{role=\"follower\"}"], 0.0);
    assert_eq!(after["parliament_leader_known"], 1.0);
    assert_eq!(after["parliament_leader_id"], 1.0);
    assert_eq!(after["parliament_ballot_round"], 4.0);
    assert_eq!(after["parliament_commit_slot"], 20.0);
    assert_eq!(after["parliament_keys"], 9.0);
    assert_eq!(after["parliament_peer_lag_slots{peer=\"2\"}"], 3.0);
    assert!(
        !after.contains_key("parliament_peer_lag_slots{peer=\"3\"}"),
        "no match slot known for 3"
    );
    assert_eq!(after["parliament_peer_connected{peer=\"2\"}"], 1.0);
    assert_eq!(after["parliament_peer_connected{peer=\"3\"}"], 0.0);
}

#[test]
fn odd_status_strings_still_render_valid_text() {
    let server = TestServer::start(StatusReport {
        role: "ob\"server\\\n".to_owned(),
        version: "1\n\"2\"".to_owned(),
        ballot: "not a ballot".to_owned(),
        ..follower()
    });
    let text = server.body("/metrics");
    let samples = validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        samples["parliament_role{role=\"ob\\\"server\\\\\\n\"}"],
        1.0
    );
    assert!(!samples.contains_key("parliament_ballot_round"));
}

#[test]
fn status_is_the_report_as_json_readable_from_any_origin() {
    let server = TestServer::start(follower());
    let response = server.get("/status");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let report: StatusReport = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(report, follower());

    server.status.send(leader()).unwrap();
    let report = client::fetch_status(&server.addr, TIMEOUT).unwrap();
    assert_eq!(report, leader());
}

#[test]
fn health_is_ok_only_while_a_leader_is_known() {
    let server = TestServer::start(follower());
    let response = server.get("/health");
    assert_eq!(response.status, 503);
    let reason = String::from_utf8(response.body).unwrap();
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    assert!(reason.contains("no leader"), "{reason:?}");

    // A follower that knows the leader is healthy, as is the leader.
    server
        .status
        .send(StatusReport {
            leader_id: Some(2),
            ..follower()
        })
        .unwrap();
    let response = server.get("/health");
    assert_eq!((response.status, response.body), (200, b"ok\n".to_vec()));
    server.status.send(leader()).unwrap();
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn the_dashboard_is_one_page_with_nothing_from_outside() {
    let server = TestServer::start(follower());
    let response = server.get("/");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = String::from_utf8(response.body).unwrap();
    assert!(page.contains("<table"));
    assert!(page.contains("/status"));
    for outside in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(!page.contains(outside), "the page loads {outside}");
    }
}

#[test]
fn unknown_paths_are_not_found() {
    let server = TestServer::start(follower());
    for path in ["/nope", "/metrics/x", "/status.json", "//"] {
        assert_eq!(server.get(path).status, 404, "GET {path}");
    }
}

#[test]
fn idle_connections_are_closed() {
    let server = TestServer::start_limited(follower(), 4, Duration::from_millis(100));
    let mut idle = std::net::TcpStream::connect(&server.addr).unwrap();
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    // The server closes without a word (or resets): no byte, no time-out.
    match idle.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "the server sent bytes to a silent client"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The port still serves.
    assert_eq!(server.get("/health").status, 503);
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_place() {
    let server = TestServer::start_limited(follower(), 1, Duration::from_secs(60));
    // Holds the only place: a connection the server has accepted, shown
    // by a served request on it (keep-alive keeps it open afterwards).
    let mut held = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut held, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    held.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 12];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 503");

    let waiting = client::get(&server.addr, "/health", Duration::from_millis(300));
    assert!(
        matches!(waiting, Err(ClientError::TimedOut { .. })),
        "{waiting:?}"
    );
    drop(held);
    assert_eq!(server.get("/health").status, 503);
}
