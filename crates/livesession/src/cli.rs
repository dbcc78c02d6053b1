//! The command line: `serve`, `doctor`, and `session create|list|revoke` (a client of a
//! running server's admin API, since revoking must reach the server's live connections).

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::{CommonArgs, DesktopArgs, ServeConfig};
use crate::{doctor, logging, secrets};

#[derive(Debug, Parser)]
#[command(
    name = "livesession",
    version,
    about = "Sells and serves live remote browser sessions"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeConfig>),
    /// Check that this machine can run desktops: binaries, data directory, a throwaway desktop.
    Doctor(DesktopArgs),
    /// Manage sessions on a running server.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Manage tasks on a running server: list, show, cancel; mint worker tokens.
    #[command(subcommand)]
    Tasks(TaskCommand),
    /// Measure: a running server's control channel, or the whole system (these start
    /// their own servers).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Soak the control channel: hold N connections with the heartbeat for M minutes.
    Control {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// How long to hold them, in minutes (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// The server's URL; defaults to http://<LIVESESSION_LISTEN>.
        #[arg(long)]
        url: Option<String>,
        /// Sessions to spread the connections over (each starts one desktop).
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Seconds between a connection's PINGs (the protocol's is 30).
        #[arg(long, default_value_t = 30.0)]
        ping_interval: f64,
        /// Connections opened per second while ramping up.
        #[arg(long, default_value_t = 50.0)]
        open_rate: f64,
        /// The server's pid, for memory figures (found by its port if omitted).
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// VNC proxy throughput and latency (Raw full-screen updates, 1 and 8 connections):
    /// direct to the desktop's socket, through livesession, through websockify.
    Proxy(BenchRunArgs),
    /// Session start, POST /api/sessions to the page drawn: cold and from the warm pool.
    Start(BenchRunArgs),
    /// PSS of an idle desktop by process, and of the gateway per idle connection.
    Memory(BenchRunArgs),
    /// Concurrent sessions, each viewed, this machine holds while all get frames.
    Capacity(BenchRunArgs),
    /// Bandwidth and update rate of a scrolling page with noVNC's encodings.
    Scroll(BenchRunArgs),
    /// DevTools (CDP) through the gateway against direct to the desktop's socket, in
    /// alternating rounds: Runtime.evaluate round trips and 1280x720 PNG screenshots/s.
    Cdp(BenchRunArgs),
    /// The task system: steps tasks per minute with the built-in runners, the runner's
    /// time per step against raw CDP, claim latency with 1,000 tasks queued.
    Tasks(BenchRunArgs),
    /// Idle hibernation: hibernate time, resume to the restored page's first frame (cold
    /// and with a warm pool), profile size, and how many hibernated sessions one server
    /// holds (`--max-sessions`, default 1,000) with its memory and disk per session.
    Hibernate(BenchRunArgs),
    /// Everything above; prints one summary table and the details, and writes them into
    /// docs/performance.md between its bench markers.
    All {
        #[command(flatten)]
        run: BenchRunArgs,
        /// Only print; leave the document alone.
        #[arg(long)]
        no_write: bool,
        /// The document to write the tables into.
        #[arg(long, default_value = "docs/performance.md")]
        doc: std::path::PathBuf,
    },
    /// Three nodes on one PostgreSQL (started on loopback): placement spread, relay
    /// latency (control PING → PONG) and throughput (a 64 MiB file), revocation fan-out;
    /// `--max-sessions` sessions (default 30), `--runs` round trips per path (500). Not
    /// part of `all`.
    Cluster(BenchRunArgs),
}

/// Settings of the whole-system benchmarks, which start this binary's own server.
#[derive(Debug, Args)]
struct BenchRunArgs {
    /// Fewer runs and shorter measurements (`all` in a minute or two).
    #[arg(long)]
    quick: bool,
    /// websockify to compare the proxy with (default: `websockify` on PATH).
    #[arg(long)]
    websockify: Option<std::path::PathBuf>,
    /// An extra `serve` flag for every server under test, e.g.
    /// `--serve-arg=--desktop-memory-mib=0` (repeatable).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Session starts per variant (`start`); Runtime.evaluate calls per path (`cdp`).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per measurement (`proxy`, `scroll`; screenshots per path for `cdp`).
    #[arg(long)]
    seconds: Option<f64>,
    /// Most sessions to start (`capacity`); sessions to hold hibernated (`hibernate`).
    #[arg(long)]
    max_sessions: Option<usize>,
}

impl BenchRunArgs {
    fn options(self) -> crate::bench::Options {
        crate::bench::Options {
            quick: self.quick,
            websockify: self.websockify,
            serve_args: self.serve_args,
            runs: self.runs,
            seconds: self.seconds,
            max_sessions: self.max_sessions,
        }
    }
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The server's URL; defaults to http://<LIVESESSION_LISTEN>.
    #[arg(long, env = "LIVESESSION_SERVER")]
    server: Option<String>,
    #[arg(
        long,
        env = "LIVESESSION_LISTEN",
        default_value = "127.0.0.1:8080",
        hide = true
    )]
    listen: String,
    /// Defaults to the token the server generated in the data directory.
    #[arg(long, env = "LIVESESSION_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Create a session and print its id, token and URLs.
    Create {
        #[arg(long)]
        start_url: Option<String>,
        /// Lifetime in seconds (default: the server's).
        #[arg(long)]
        ttl: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List recent sessions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Extend an active session's lifetime.
    Extend {
        id: String,
        /// Seconds to add to its deadline.
        #[arg(long)]
        seconds: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Find the session a Stripe Checkout Session paid for.
    Find {
        /// The checkout session id, `cs_…`.
        #[arg(long)]
        checkout_session_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a session: close its connections and stop its desktop.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// List recent tasks, most recent first.
    List {
        /// Only this session's tasks (oldest first).
        #[arg(long)]
        session: Option<String>,
        /// Only tasks in this state: queued, running, waiting_for_person, succeeded,
        /// failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a task with its events.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued, running or waiting task.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mint a token for an external worker (docs/tasks.md).
    WorkerToken {
        /// The worker's name, as leases and /readyz show it.
        name: String,
        /// Days it lasts (at most the server's --worker-token-days).
        #[arg(long)]
        days: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Outgoing HTTPS (Stripe, `session` commands against an https server) uses rustls
    // with the ring provider, chosen here once for the process.
    livesession_billing::install_tls_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(mut config) => {
                logging::init(cli.common.log_format);
                config.data_dir.clone_from(&cli.common.data_dir);
                serve(*config).await
            }
            Command::Doctor(desktop) => {
                if doctor::run(&cli.common.data_dir, &desktop).await {
                    println!("All checks passed.");
                    ExitCode::SUCCESS
                } else {
                    println!("Some checks failed; see above.");
                    ExitCode::FAILURE
                }
            }
            Command::Session(command) => session_command(&cli.common, command).await,
            Command::Tasks(command) => task_command(&cli.common, command).await,
            Command::Bench(BenchCommand::Control {
                conns,
                minutes,
                url,
                sessions,
                ping_interval,
                open_rate,
                server_pid,
                client,
            }) => {
                let Some(admin_token) = admin_token(&cli.common, &client) else {
                    return ExitCode::FAILURE;
                };
                let soak = crate::bench::ControlSoak {
                    url: url.or(client.server.clone()).unwrap_or_else(|| {
                        format!("http://{}", client.listen.replace("0.0.0.0", "127.0.0.1"))
                    }),
                    admin_token,
                    connections: conns,
                    duration: std::time::Duration::from_secs_f64(minutes * 60.0),
                    sessions,
                    ping_interval: std::time::Duration::from_secs_f64(ping_interval.max(0.1)),
                    open_rate,
                    server_pid,
                };
                match crate::bench::run(&soak).await {
                    Ok(report) => {
                        report.print(&soak);
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("livesession: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Bench(command) => bench_command(command).await,
        }
    })
}

/// The whole-system benchmarks; Ctrl-C stops the servers they started.
async fn bench_command(command: BenchCommand) -> ExitCode {
    use crate::bench::{self, report::Table};
    let print = |table: Result<Table, String>| match table {
        Ok(t) => {
            println!("{}", t.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("livesession: {e}");
            ExitCode::FAILURE
        }
    };
    let work = async {
        match command {
            BenchCommand::Control { .. } => unreachable!("handled above"),
            BenchCommand::Proxy(a) => {
                print(bench::proxy::run(&a.options()).await.map(|r| r.table()))
            }
            BenchCommand::Start(a) => {
                print(bench::start::run(&a.options()).await.map(|r| r.table()))
            }
            BenchCommand::Memory(a) => {
                print(bench::memory::run(&a.options()).await.map(|r| r.table()))
            }
            BenchCommand::Capacity(a) => {
                print(bench::capacity::run(&a.options()).await.map(|r| r.table()))
            }
            BenchCommand::Scroll(a) => {
                let code = print(bench::scroll::run(&a.options()).await.map(|r| r.table()));
                println!("{}", bench::scroll::encodings_note());
                code
            }
            BenchCommand::Cdp(a) => match bench::cdp::run(&a.options()).await {
                Ok(r) => {
                    println!("{}\n{}", r.table().render(), r.note());
                    ExitCode::SUCCESS
                }
                Err(e) => print(Err(e)),
            },
            BenchCommand::Tasks(a) => match bench::tasks::run(&a.options()).await {
                Ok(r) => {
                    println!("{}\n{}", r.table().render(), r.note());
                    ExitCode::SUCCESS
                }
                Err(e) => print(Err(e)),
            },
            BenchCommand::Hibernate(a) => match bench::hibernate::run(&a.options()).await {
                Ok(r) => {
                    println!("{}\n{}", r.table().render(), r.hold_table().render());
                    ExitCode::SUCCESS
                }
                Err(e) => print(Err(e)),
            },
            BenchCommand::Cluster(a) => match bench::cluster::run(&a.options()).await {
                Ok(r) => {
                    println!("{}", r.markdown());
                    ExitCode::SUCCESS
                }
                Err(e) => print(Err(e)),
            },
            BenchCommand::All { run, no_write, doc } => {
                let report = bench::all(&run.options()).await;
                let markdown = report.markdown();
                println!("{markdown}");
                if no_write {
                    return ExitCode::SUCCESS;
                }
                match bench::report::write_doc(&doc, &markdown) {
                    Ok(()) => {
                        bench::progress(format!("wrote the tables into {}", doc.display()));
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("livesession: cannot write the tables: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    };
    tokio::select! {
        code = work => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("livesession: interrupted; stopping the servers under test");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("livesession: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", listener.local_addr().expect("bound")));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let announce = tokio::spawn(async move {
        // After start-up messages (a generated admin token) so the URL is the last line.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        println!("livesession is running: open {url}/");
    });
    let result = crate::launch(config, listener, shutdown).await;
    announce.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livesession: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn session_command(common: &CommonArgs, command: SessionCommand) -> ExitCode {
    let (client, method, path, body) = match command {
        SessionCommand::Create {
            start_url,
            ttl,
            client,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(u) = start_url {
                body.insert("start_url".into(), u.into());
            }
            if let Some(t) = ttl {
                body.insert("ttl_seconds".into(), t.into());
            }
            (
                client,
                reqwest::Method::POST,
                "/api/sessions".to_owned(),
                Some(Value::Object(body)),
            )
        }
        SessionCommand::List { client } => (
            client,
            reqwest::Method::GET,
            "/api/sessions".to_owned(),
            None,
        ),
        SessionCommand::Extend {
            id,
            seconds,
            client,
        } => (
            client,
            reqwest::Method::POST,
            format!("/api/sessions/{id}/extend"),
            Some(serde_json::json!({ "seconds": seconds })),
        ),
        SessionCommand::Find {
            checkout_session_id,
            client,
        } => {
            let query = format!(
                "/api/sessions?checkout_session_id={}",
                form_escape(&checkout_session_id)
            );
            (client, reqwest::Method::GET, query, None)
        }
        SessionCommand::Revoke { id, client } => (
            client,
            reqwest::Method::DELETE,
            format!("/api/sessions/{id}"),
            None,
        ),
    };
    admin_request(common, &client, method, &path, body).await
}

async fn task_command(common: &CommonArgs, command: TaskCommand) -> ExitCode {
    let (client, method, path, body) = match command {
        TaskCommand::List { session, state, limit, client } => {
            let mut query = format!("/api/tasks?limit={limit}");
            if let Some(session) = session {
                query.push_str(&format!("&session_id={}", form_escape(&session)));
            }
            if let Some(state) = state {
                query.push_str(&format!("&state={}", form_escape(&state)));
            }
            (client, reqwest::Method::GET, query, None)
        }
        TaskCommand::Show { id, client } => {
            (client, reqwest::Method::GET, format!("/api/tasks/{}", form_escape(&id)), None)
        }
        TaskCommand::Cancel { id, reason, client } => {
            let body = serde_json::json!({ "reason": reason });
            (client, reqwest::Method::POST, format!("/api/tasks/{}/cancel", form_escape(&id)), Some(body))
        }
        TaskCommand::WorkerToken { name, days, client } => {
            let body = serde_json::json!({ "name": name, "days": days });
            (client, reqwest::Method::POST, "/api/workers/tokens".to_owned(), Some(body))
        }
    };
    admin_request(common, &client, method, &path, body).await
}

/// One request to a running server's admin API; prints the answer (or the error).
async fn admin_request(
    common: &CommonArgs,
    client: &ClientArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> ExitCode {
    let server = client
        .server
        .clone()
        .unwrap_or_else(|| format!("http://{}", client.listen.replace("0.0.0.0", "127.0.0.1")));
    let Some(token) = admin_token(common, client) else {
        return ExitCode::FAILURE;
    };
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.trim_end_matches('/')))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "livesession: cannot reach the server at {server}: {}",
                e.without_url()
            );
            return ExitCode::FAILURE;
        }
    };
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        println!("{}", serde_json::to_string_pretty(&body).expect("json"));
        ExitCode::SUCCESS
    } else {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("unexpected response");
        eprintln!("livesession: {status}: {message}");
        ExitCode::FAILURE
    }
}

/// The admin token: given, or the one the server generated in the data directory.
fn admin_token(common: &CommonArgs, client: &ClientArgs) -> Option<String> {
    if let Some(t) = &client.admin_token {
        return Some(t.clone());
    }
    let path = secrets::admin_token_path(&common.data_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(e) => {
            eprintln!(
                "livesession: no admin token: set LIVESESSION_ADMIN_TOKEN or run from the server's data directory ({}: {e})",
                path.display()
            );
            None
        }
    }
}

/// Percent-encodes a query value (ids are plain, but a typo should not break the URL).
fn form_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
