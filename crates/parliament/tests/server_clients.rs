//! Real Redis clients against the client port: the `redis` crate, and
//! `redis-cli` and `redis-benchmark` from Debian's redis-tools (the test
//! script installs them; these tests fail, saying so, when they are
//! missing).

#![allow(clippy::unwrap_used)]

mod common;

use node::server::Config;
use node::server::testing::TestServer;
use redis::{Commands, RedisResult};

use common::{run, tool};

async fn start(config: Config) -> TestServer {
    TestServer::start(config).await.unwrap()
}

/// Runs blocking client code off the runtime that serves it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_works_unchanged() {
    let server = start(Config::default()).await;
    let url = format!("redis://127.0.0.1:{}/", server.port());
    blocking(move || {
        let client = redis::Client::open(url).unwrap();
        let mut con = client.get_connection().unwrap();

        let () = con.set("greeting", "hello").unwrap();
        let got: String = con.get("greeting").unwrap();
        assert_eq!(got, "hello");
        let missing: Option<String> = con.get("missing").unwrap();
        assert_eq!(missing, None);
        let n: i64 = con.incr("counter", 1).unwrap();
        assert_eq!(n, 1);
        let n: i64 = con.incr("counter", 41).unwrap();
        assert_eq!(n, 42);

        // MULTI ... EXEC as an atomic pipeline.
        let (a, b, c): (i64, i64, String) = redis::pipe()
            .atomic()
            .incr("counter", 1)
            .incr("counter", 1)
            .get("greeting")
            .query(&mut con)
            .unwrap();
        assert_eq!((a, b, c.as_str()), (43, 44, "hello"));

        // parliament's CAS.
        let swapped: i64 = redis::cmd("CAS")
            .arg("greeting")
            .arg("hello")
            .arg("bonjour")
            .query(&mut con)
            .unwrap();
        assert_eq!(swapped, 1);
        let swapped: i64 = redis::cmd("CAS")
            .arg("greeting")
            .arg("hello")
            .arg("hola")
            .query(&mut con)
            .unwrap();
        assert_eq!(swapped, 0);
        let got: String = con.get("greeting").unwrap();
        assert_eq!(got, "bonjour");

        // WATCH-based optimistic transactions, with the crate's retry loop.
        let doubled: (i64,) = redis::transaction(&mut con, &["counter"], |con, pipe| {
            let current: i64 = con.get("counter")?;
            pipe.set("counter", current * 2)
                .ignore()
                .get("counter")
                .query(con)
        })
        .unwrap();
        assert_eq!(doubled, (88,));

        // Errors arrive as errors.
        let refused: RedisResult<()> = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .arg("EX")
            .arg(10)
            .query(&mut con);
        let error = refused.unwrap_err();
        assert!(
            error.to_string().contains("does not support key expiry"),
            "{error}"
        );
        let fine: String = redis::cmd("PING").query(&mut con).unwrap();
        assert_eq!(fine, "PONG");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_authenticates() {
    let server = start(Config {
        password: Some("sesame".to_owned()),
        ..Config::default()
    })
    .await;
    let port = server.port();
    blocking(move || {
        let anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = anonymous.get_connection().unwrap();
        let refused: RedisResult<Option<String>> = con.get("k");
        assert!(
            refused.unwrap_err().to_string().contains("NOAUTH"),
            "an unauthenticated GET must be refused"
        );

        let client = redis::Client::open(format!("redis://:sesame@127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let () = con.set("k", "v").unwrap();
        let got: String = con.get("k").unwrap();
        assert_eq!(got, "v");

        let wrong = redis::Client::open(format!("redis://:nope@127.0.0.1:{port}/")).unwrap();
        assert!(wrong.get_connection().is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_unchanged() {
    let server = start(Config::default()).await;
    let port = server.port().to_string();
    blocking(move || {
        let cli = tool("redis-cli");
        let call = |args: &[&str]| {
            let mut all = vec!["-p", port.as_str()];
            all.extend_from_slice(args);
            let (ok, out, err) = run(cli, &all, "");
            assert!(ok, "redis-cli {args:?} failed: {err}");
            out
        };
        assert_eq!(call(&["PING"]), "PONG\n");
        assert_eq!(call(&["SET", "k", "v"]), "OK\n");
        assert_eq!(call(&["GET", "k"]), "v\n");
        assert_eq!(call(&["INCR", "n"]), "1\n");
        assert_eq!(call(&["INCRBY", "n", "9"]), "10\n");
        assert_eq!(call(&["CAS", "k", "v", "w"]), "1\n");
        assert_eq!(call(&["CAS", "k", "v", "x"]), "0\n");
        assert_eq!(call(&["GET", "k"]), "w\n");
        assert_eq!(call(&["GET", "nothing"]), "\n");
        // redis-cli follows an error with a blank line when not on a terminal.
        assert_eq!(
            call(&["SET", "k", "v", "PX", "5"]).trim_end(),
            "ERR parliament does not support key expiry"
        );
        // A transaction, typed on one connection.
        let (ok, out, err) = run(
            cli,
            &["-p", port.as_str()],
            "MULTI\nSET a 1\nINCR a\nGET a\nEXEC\n",
        );
        assert!(ok, "{err}");
        assert_eq!(out, "OK\nQUEUED\nQUEUED\nQUEUED\nOK\n2\n2\n");
        let info = call(&["INFO", "paxos"]);
        assert!(info.contains("role:leader"), "{info}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_runs_without_errors() {
    let server = start(Config::default()).await;
    let port = server.port().to_string();
    let (ok, out, err) = blocking(move || {
        let benchmark = tool("redis-benchmark");
        let args = [
            "-p",
            port.as_str(),
            "-t",
            "ping,set,get,incr",
            "-n",
            "2000",
            "-c",
            "8",
            "-q",
        ];
        run(benchmark, &args, "")
    })
    .await;
    assert!(ok, "redis-benchmark failed:\n{out}\n{err}");
    println!("redis-benchmark against the fake node:\n{out}");
    // `-q` redraws progress with carriage returns; the last state of each
    // line is what a person sees.
    let shown: Vec<&str> = out
        .lines()
        .filter_map(|line| line.rsplit('\r').find(|part| !part.trim().is_empty()))
        .collect();
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"] {
        assert!(
            shown
                .iter()
                .any(|line| line.trim_start().starts_with(&format!("{test}: "))
                    && line.contains("requests per second")),
            "no result for {test} in:\n{out}"
        );
    }
    for bad in ["rror", "WARNING"] {
        assert!(
            !out.contains(bad) && !err.contains(bad),
            "redis-benchmark reported a problem:\n{out}\n{err}"
        );
    }
    let seen = server.node.seen();
    // SET and INCR go through the log, GET is a read.
    assert!(seen.writes >= 4000, "{seen:?}");
    assert!(seen.reads >= 2000, "{seen:?}");
}

/// Throughput of the client port alone, in front of the fake node: run
/// with `--ignored --nocapture` to see the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints benchmark numbers; takes a while"]
async fn print_client_port_throughput() {
    let server = start(Config::default()).await;
    let port = server.port().to_string();
    for pipeline in ["1", "16"] {
        let port = port.clone();
        let (ok, out, err) = blocking(move || {
            let args = [
                "-p",
                &port,
                "-t",
                "ping,set,get",
                "-n",
                "200000",
                "-c",
                "50",
                "-P",
                pipeline,
                "-q",
            ];
            run(tool("redis-benchmark"), &args, "")
        })
        .await;
        assert!(ok, "{err}");
        let shown: String = out
            .lines()
            .filter_map(|line| line.rsplit('\r').find(|part| !part.trim().is_empty()))
            .map(|line| format!("{}\n", line.trim()))
            .collect();
        println!("pipeline {pipeline}:\n{shown}");
    }
}
