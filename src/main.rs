//! `leaky-tokens`: the command line. Everything it runs lives in the library crates.

// The CLI is where output is printed (check-config's report, the schema, the banner, fatal errors).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use leaky_proxy::RunOptions;
use pingora_shim::{add_stubs, ServerExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod log_fields;
mod log_json;
mod pingora_shim;

/// glibc's allocator showed up as ~17% of the proxy's CPU under load (malloc, free, consolidation);
/// mimalloc's thread-local free lists are cheaper for the many small per-request allocations.
#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

/// mimalloc's settings, and the purger that returns freed memory to the system.
///
/// - Lazy arena commit: mimalloc commits (and the kernel backs) whole arena chunks eagerly by default
///   on Linux. With 1,000 concurrent streams that put the gateway at 272 MiB RSS, most of it memory
///   never written; committing on demand measured 148 MiB for the same run (`loadtests/bench`,
///   streaming scenario) and lowered the idle RSS by a quarter.
/// - Purging: freed memory goes back to the system (`MADV_DONTNEED`) only `purge_delay` ms after
///   it was freed, and only when some thread next enters mimalloc's slow path. After a spike (large
///   prompts, a connection flood) an idle gateway enters it rarely, so the spike's memory stayed
///   resident. The purger thread calls `mi_collect` every [`PURGE_TICK`]: memory freed at least
///   `purge_delay` earlier is released while the gateway idles (`loadtests/hardening/cost.py`
///   measures it). A short delay also returns a spike's memory sooner; it is not zero, which
///   would make every freed page a system call on the request path.
///
/// The options must be set before the first allocation creates an arena, so they are set from an
/// ELF constructor, which runs before the Rust runtime allocates anything.
#[allow(unsafe_code)]
mod allocator {
    use libmimalloc_sys as mi;
    use libmimalloc_sys::mi_option_t;
    use std::alloc::{GlobalAlloc, Layout};
    use std::time::Duration;

    // Indexes in mimalloc v3's `mi_option_e` (not all exported by the -sys crate).
    const MI_OPTION_ARENA_EAGER_COMMIT: mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

    /// Milliseconds a freed range stays committed before it may be purged (mimalloc v3: 1,000).
    const PURGE_DELAY_MS: std::ffi::c_long = 250;
    /// How often the purger releases what is due.
    pub const PURGE_TICK: Duration = Duration::from_millis(500);

    extern "C" fn set_options() {
        // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table; it neither
        // allocates nor touches Rust state, so it is sound to call before `main`.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }

    #[used]
    #[link_section = ".init_array"]
    static SET_OPTIONS: extern "C" fn() = set_options;

    /// mimalloc through its plain entry points whenever the alignment allows. The `mimalloc` crate's
    /// allocator calls the aligned ones for every allocation (`mi_malloc_aligned`,
    /// `mi_realloc_aligned`): an alignment check, then a fallback path when the free block at hand
    /// is not aligned to the requested power of two, even when it is only 8. Every mimalloc block is
    /// aligned to the word size (block sizes are whole words, pages start 16-aligned), so an
    /// alignment up to [`WORD`] needs no check; larger ones keep the aligned calls. Freeing is the
    /// same call for both.
    pub struct MiMalloc;

    /// The alignment of every block mimalloc hands out.
    const WORD: usize = std::mem::size_of::<usize>();

    // SAFETY: each method forwards to mimalloc with a request it honours: plain calls only when the
    // layout's alignment is at most the word alignment every block has, aligned calls otherwise;
    // `dealloc` and `realloc` receive only pointers this allocator returned (mimalloc's `mi_free` and
    // `mi_realloc*` accept blocks from either family).
    unsafe impl GlobalAlloc for MiMalloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let (size, align) = (layout.size(), layout.align());
            // SAFETY: see the impl.
            unsafe {
                if align <= WORD {
                    mi::mi_malloc(size).cast()
                } else {
                    mi::mi_malloc_aligned(size, align).cast()
                }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let (size, align) = (layout.size(), layout.align());
            // SAFETY: see the impl.
            unsafe {
                if align <= WORD {
                    mi::mi_zalloc(size).cast()
                } else {
                    mi::mi_zalloc_aligned(size, align).cast()
                }
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: see the impl.
            unsafe { mi::mi_free(ptr.cast()) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: see the impl.
            unsafe {
                if layout.align() <= WORD {
                    mi::mi_realloc(ptr.cast(), new_size).cast()
                } else {
                    mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
                }
            }
        }
    }

    /// Starts the purger thread (for the long-running subcommands).
    pub fn spawn_purger() {
        let purger = std::thread::Builder::new()
            .name("mi-purge".into())
            .spawn(|| loop {
                // A dedicated thread, not async code: sleeping is what it is for.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(PURGE_TICK);
                // SAFETY: `mi_collect` is thread-safe: it collects this thread's own (nearly empty)
                // heap and purges arena ranges whose delay expired, whoever freed them.
                unsafe { libmimalloc_sys::mi_collect(false) }
            });
        if let Err(e) = purger {
            tracing::warn!(error = %e, "allocator purger not started; freed memory returns to the system later");
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::{GlobalAlloc, Layout, MiMalloc};

        /// Every alignment up to a page, across the small, medium and large size classes: each block
        /// is aligned as asked, zeroed when asked, and keeps its bytes (and alignment) through a
        /// growing and a shrinking `realloc`.
        #[test]
        fn blocks_keep_their_alignment_and_contents() {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                for size in [1, 7, 8, 9, 24, 100, 1024, 70_000, 1 << 21] {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: non-zero sizes; each block is freed once with its own layout.
                    unsafe {
                        let z = MiMalloc.alloc_zeroed(layout);
                        assert_eq!(z as usize % align, 0, "zeroed {size} bytes aligned {align}");
                        assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                        MiMalloc.dealloc(z, layout);

                        let p = MiMalloc.alloc(layout);
                        assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                        for i in 0..size {
                            p.add(i).write(i as u8);
                        }
                        let grown = MiMalloc.realloc(p, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "grown {size} aligned {align}");
                        let kept = size.min(64);
                        let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                        let shrunk = MiMalloc.realloc(grown, grown_layout, kept);
                        assert_eq!(shrunk as usize % align, 0, "shrunk {size} aligned {align}");
                        for i in 0..kept {
                            assert_eq!(shrunk.add(i).read(), i as u8);
                        }
                        MiMalloc.dealloc(shrunk, Layout::from_size_align(kept, align).unwrap());
                    }
                }
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "leaky-tokens",
    version,
    about = "LLM API gateway: OpenAI, Gemini and Qwen behind one base URL, with exact token accounting"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format: `text` for terminals, `json` for log pipelines (one object per line).
    #[arg(long, global = true, env = "LEAKY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `info,access=warn`.
    #[arg(long, global = true, env = "LEAKY_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    trace: TraceArgs,
}

/// OpenTelemetry tracing (off unless an OTLP endpoint is given). The standard `OTEL_*` variables
/// are read, so the gateway is configured like any other OTel-instrumented service.
#[derive(clap::Args, Clone)]
struct TraceArgs {
    /// OTLP/HTTP endpoint (base URL, e.g. http://127.0.0.1:4318): spans go to `<URL>/v1/traces`.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    /// Head sampling ratio in [0, 1] for requests without a sampled caller `traceparent`; error
    /// requests are kept at any ratio.
    #[arg(
        long,
        global = true,
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value_t = 0.01
    )]
    trace_sample_ratio: f64,
    /// `service.name` of the spans (default: `leaky-proxy`, `leaky-control-plane`, `leaky-analytics`).
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME")]
    service_name: Option<String>,
}

impl TraceArgs {
    /// The export options when an endpoint is set; `default_name` is the `service.name` unless
    /// `--service-name` says otherwise.
    fn options(&self, default_name: &str) -> Option<leaky_telemetry::Options> {
        let endpoint = self.otlp_endpoint.as_ref()?;
        let name = self.service_name.as_deref().unwrap_or(default_name);
        let mut opts = leaky_telemetry::Options::new(endpoint.clone(), name);
        opts.sample_ratio = self.trace_sample_ratio;
        Some(opts)
    }

    /// The proxy's tracing, started when an endpoint is set.
    fn start_proxy(&self) -> anyhow::Result<()> {
        let Some(opts) = self.options("leaky-proxy") else {
            return Ok(());
        };
        let (endpoint, ratio) = (opts.endpoint.clone(), opts.sample_ratio);
        leaky_proxy::trace::init(opts)?;
        tracing::info!(endpoint = %endpoint, ratio, "request tracing on");
        Ok(())
    }

    /// The control plane's or analytics' tracing (`leaky_telemetry`), started when an endpoint is
    /// set.
    fn start_service(&self, default_name: &str) -> anyhow::Result<()> {
        let Some(opts) = self.options(default_name) else {
            return Ok(());
        };
        let (endpoint, ratio) = (opts.endpoint.clone(), opts.sample_ratio);
        let name = opts.service_name.clone();
        leaky_telemetry::init(opts)?;
        tracing::info!(endpoint = %endpoint, ratio, service = %name, "tracing on");
        Ok(())
    }
}

/// How long a stopping process waits for its queued spans to reach the collector.
const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Exports the spans still queued (proxy and services alike), within [`TRACE_FLUSH`] each.
fn flush_traces() {
    if !leaky_proxy::trace::shutdown(TRACE_FLUSH) || !leaky_telemetry::shutdown(TRACE_FLUSH) {
        tracing::warn!(within = ?TRACE_FLUSH, "queued spans not all exported at shutdown");
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum LatencyArg {
    #[default]
    Realistic,
    Off,
}

impl From<LatencyArg> for leaky_stubs::Latency {
    fn from(l: LatencyArg) -> Self {
        match l {
            LatencyArg::Realistic => leaky_stubs::Latency::Realistic,
            LatencyArg::Off => leaky_stubs::Latency::Off,
        }
    }
}

#[derive(clap::Args, Clone)]
struct ProxyArgs {
    /// Config file (environment overlays name their base with `extends`).
    #[arg(long, short, default_value = "config/dev.yaml")]
    config: PathBuf,
    /// Proxy listener, overriding `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listener, overriding `server.admin_listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Proxy worker threads, overriding `server.threads`.
    #[arg(long)]
    threads: Option<usize>,
    /// Control plane URL (e.g. http://127.0.0.1:9300): its pushed config replaces `--config`.
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    control_plane: Option<String>,
    /// This proxy's id towards the control plane (default `proxy-<listen port>`).
    #[arg(long, requires = "control_plane")]
    instance_id: Option<String>,
    /// Last-good snapshot file (default `.leaky/<instance>.last-good.json`).
    #[arg(long, requires = "control_plane")]
    config_cache: Option<PathBuf>,
    /// Bearer token for the control plane.
    #[arg(
        long,
        env = "LEAKY_CONTROL_PLANE_TOKEN",
        default_value = "lt-dev-admin",
        hide_env_values = true,
        hide_default_value = true
    )]
    control_plane_token: String,
    /// CA certificate (PEM) the control plane's certificate must chain to, for an `https://` control
    /// plane with a private CA (default: the webpki roots).
    #[arg(
        long,
        env = "LEAKY_CONTROL_PLANE_CA",
        requires = "control_plane",
        value_name = "PEM"
    )]
    control_plane_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the control plane (mTLS); needs `--control-plane-key`.
    #[arg(
        long,
        env = "LEAKY_CONTROL_PLANE_CERT",
        requires_all = ["control_plane", "control_plane_key"],
        value_name = "PEM"
    )]
    control_plane_cert: Option<PathBuf>,
    /// The private key of `--control-plane-cert` (PEM).
    #[arg(
        long,
        env = "LEAKY_CONTROL_PLANE_KEY",
        requires = "control_plane_cert",
        value_name = "PEM"
    )]
    control_plane_key: Option<PathBuf>,
    /// In-place upgrade: take over the listening sockets of the running proxy that uses the same
    /// `--upgrade-sock`, then send that process SIGQUIT (`scripts/deploy` does both). No connection
    /// is refused; the old process finishes what it has in flight and exits.
    #[arg(long)]
    upgrade: bool,
    /// The unix socket listening sockets are handed over on at an in-place upgrade (default: one per
    /// listen port in the temp directory).
    #[arg(long, value_name = "PATH")]
    upgrade_sock: Option<PathBuf>,
}

impl Default for ProxyArgs {
    fn default() -> Self {
        ProxyArgs {
            config: PathBuf::from("config/dev.yaml"),
            listen: None,
            admin_listen: None,
            threads: None,
            control_plane: None,
            instance_id: None,
            config_cache: None,
            control_plane_token: "lt-dev-admin".into(),
            control_plane_ca: None,
            control_plane_cert: None,
            control_plane_key: None,
            upgrade: false,
            upgrade_sock: None,
        }
    }
}

impl ProxyArgs {
    /// The control-plane options, defaults filled in; `None` without `--control-plane`.
    fn control_plane(&self) -> Option<leaky_proxy::control_plane::ControlPlaneOptions> {
        let url = self.control_plane.clone()?;
        // The default listener's port when `--listen` is not given (the pushed config is not known yet).
        let port = self.listen.map_or(8080, |a| a.port());
        let instance = self
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("proxy-{port}"));
        let cache = self
            .config_cache
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!(".leaky/{instance}.last-good.json")));
        Some(leaky_proxy::control_plane::ControlPlaneOptions {
            url,
            instance,
            token: self.control_plane_token.clone(),
            cache,
            tls: leaky_proxy::control_plane::ClientTls {
                ca: self.control_plane_ca.clone(),
                client_cert: self
                    .control_plane_cert
                    .clone()
                    .zip(self.control_plane_key.clone()),
            },
        })
    }
}

#[derive(clap::Args, Clone)]
struct StubArgs {
    #[arg(long, default_value = "127.0.0.1:18001")]
    openai_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:18002")]
    gemini_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:18003")]
    qwen_listen: SocketAddr,
    /// `off` removes simulated model latency (benchmarks, tests).
    #[arg(long, default_value = "realistic")]
    latency: LatencyArg,
    /// Provider-side requests per minute per provider key, enforced by each stub (0 = unlimited).
    #[arg(long)]
    rpm: Option<u64>,
    /// Provider-side tokens per minute per provider key, enforced by each stub (0 = unlimited).
    #[arg(long)]
    tpm: Option<u64>,
}

impl Default for StubArgs {
    fn default() -> Self {
        let d = leaky_stubs::StubsConfig::default();
        StubArgs {
            openai_listen: d.openai,
            gemini_listen: d.gemini,
            qwen_listen: d.qwen,
            latency: LatencyArg::Realistic,
            rpm: None,
            tpm: None,
        }
    }
}

impl StubArgs {
    fn config(&self) -> leaky_stubs::StubsConfig {
        let mut cfg = leaky_stubs::StubsConfig {
            openai: self.openai_listen,
            gemini: self.gemini_listen,
            qwen: self.qwen_listen,
            latency: self.latency.into(),
            ..Default::default()
        };
        let d = leaky_stubs::RateLimits::default();
        if self.rpm.is_some() || self.tpm.is_some() {
            cfg.limits = leaky_stubs::PerProvider::all(leaky_stubs::RateLimits {
                requests_per_minute: self.rpm.unwrap_or(d.requests_per_minute),
                tokens_per_minute: self.tpm.unwrap_or(d.tokens_per_minute),
            });
        }
        cfg
    }
}

#[derive(Subcommand)]
enum Command {
    /// The quickstart (default): provider stubs and the proxy in one process, from config/dev.yaml.
    Up {
        #[command(flatten)]
        proxy: ProxyArgs,
        #[command(flatten)]
        stubs: StubArgs,
    },
    /// The proxy alone.
    Proxy {
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// The OpenAI, Gemini and Qwen stubs, and the Stripe-like payment stub.
    Stubs {
        #[command(flatten)]
        stubs: StubArgs,
        /// Address of the payment provider stub (payment intents, refunds, webhooks).
        #[arg(long, default_value = "127.0.0.1:18004")]
        payment_listen: SocketAddr,
    },
    /// Validate config files, then build each as start-up would (filter chains, JWKS files, upstream
    /// addresses, limiter; no connection to Redis); prints every error and exits 1 if any.
    CheckConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Skip resolving upstream host names (for machines without DNS).
        #[arg(long)]
        offline: bool,
    },
    /// Print the JSON Schema of the config format (the content of config/schema.json).
    Schema,
    /// Usage analytics: a Kafka consumer group storing usage events in Cassandra (rollups exactly
    /// once in effect), the usage API, `/metrics` and `/healthz`.
    Analytics(AnalyticsArgs),
    /// The control plane: admin API under /v1 over PostgreSQL (orgs, users, tiers, keys, audit).
    ControlPlane {
        #[command(flatten)]
        cp: ControlPlaneArgs,
        #[command(subcommand)]
        action: Option<ControlPlaneCommand>,
    },
}

/// Maintenance commands of the control plane (without one, it serves).
#[derive(Subcommand)]
enum ControlPlaneCommand {
    /// The token ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Secrets at rest (envelope encryption under `LEAKY_MASTER_KEY` / `LEAKY_MASTER_KEY_FILE`).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every secret row under the newest configured master key (idempotent, resumable):
    /// after adding `v<n+1>:<key>` to `LEAKY_MASTER_KEY`, run this, then drop the old version.
    Rewrap {
        /// PostgreSQL URL.
        #[arg(
            long,
            env = "LEAKY_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:15432/leaky"
        )]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Rebuild the balance projections from the ledger's streams and report the drift fixed.
    Rebuild {
        /// Only this org (id); every org with a stream by default.
        #[arg(long)]
        org: Option<String>,
        /// PostgreSQL URL.
        #[arg(
            long,
            env = "LEAKY_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:15432/leaky"
        )]
        database_url: String,
    },
}

#[derive(clap::Args)]
struct ControlPlaneArgs {
    /// Address of the control plane's HTTP listener.
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: SocketAddr,
    /// PostgreSQL URL (migrations run at start-up; the process starts even while it is down).
    #[arg(
        long,
        env = "LEAKY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:15432/leaky"
    )]
    database_url: String,
    /// Roles this process runs: `all`, or a comma list of `admin-api`, `registry`, `config-server`.
    #[arg(long, default_value = "all")]
    roles: leaky_control_plane::Roles,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`. Read at start.
    #[arg(long, env = "LEAKY_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "LEAKY_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every client must present a certificate issued by this CA (PEM), e.g. the proxies'
    /// `--control-plane-cert`. Needs `--tls-cert`.
    #[arg(
        long,
        env = "LEAKY_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    tls_client_ca: Option<PathBuf>,
    /// YAML base the config server publishes as version 1 when the database holds no config version
    /// yet (its `extends` chain merged); afterwards `PUT /v1/config/base` replaces it.
    #[arg(long, default_value = "config/dev.yaml")]
    config_base: PathBuf,
    /// Kafka brokers (`host:port[,…]`) the outbox relay publishes domain events to and the ledger's
    /// usage consumer reads `leaky.usage.v1` from; unset, events accumulate in the outbox, usage is not
    /// debited, and nothing connects to Kafka.
    #[arg(long, env = "LEAKY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The data plane's Redis (`redis://host:port/`): purchases raise the org's prepaid balance there
    /// and the balance reconciler keeps it in line with the ledger. Unset: the mirror steps are
    /// recorded as skipped (the ledger is still credited) and no reconciler runs.
    #[arg(long, env = "LEAKY_REDIS_URL")]
    redis_url: Option<String>,
    /// Base URL of the payment provider (the payment stub in development).
    #[arg(
        long,
        env = "LEAKY_PAYMENTS_URL",
        default_value = "http://127.0.0.1:18004"
    )]
    payments_url: String,
    /// The payment provider's API key.
    #[arg(
        long,
        env = "LEAKY_PAYMENTS_API_KEY",
        default_value = "sk_test_leaky",
        hide_env_values = true
    )]
    payments_api_key: String,
    /// The secret payment webhooks are signed with (the payment stub's development secret by default).
    #[arg(
        long,
        env = "LEAKY_PAYMENTS_WEBHOOK_SECRET",
        default_value = leaky_control_plane::billing::DEV_WEBHOOK_SECRET,
        hide_env_values = true
    )]
    payments_webhook_secret: String,
    /// SMTP server for email notifications, e.g. `smtp://127.0.0.1:2525` (`smtps://` or `?tls=required`
    /// for TLS); unset, email notifications are recorded as `skipped` (a warning at start).
    #[arg(long, env = "LEAKY_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender of email notifications.
    #[arg(long, env = "LEAKY_SMTP_FROM", default_value = leaky_control_plane::notify::DEFAULT_FROM)]
    smtp_from: String,
    /// A static bootstrap bearer token for the admin API, accepted as `platform-admin` (break-glass;
    /// people and services should use OAuth2 tokens). Unset: none, except in dev mode
    /// (`LEAKY_IDENTITY_DEV=1`), where it is `lt-dev-admin`.
    #[arg(long, env = "LEAKY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(clap::Args)]
struct AnalyticsArgs {
    /// Kafka brokers (`host:port[,…]`) to read usage events from.
    #[arg(long, env = "LEAKY_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    kafka: String,
    /// Cassandra contact points (`host:port[,…]`).
    #[arg(long, env = "LEAKY_CASSANDRA", default_value = "127.0.0.1:19042")]
    cassandra: String,
    /// Keyspace (created with its tables and migrations at start-up).
    #[arg(long, default_value = "leaky_analytics")]
    keyspace: String,
    /// The keyspace's replication factor (SimpleStrategy) when it is created.
    #[arg(long, default_value_t = 1)]
    replication_factor: u32,
    /// The usage-event topic; poison messages go to `<topic>.dlq`.
    #[arg(long, default_value = "leaky.usage.v1")]
    topic: String,
    /// Consumer group (every member of a group shares the partitions).
    #[arg(long, default_value = "leaky-analytics")]
    group: String,
    /// Address of the usage API, `/metrics` and `/healthz`.
    #[arg(long, default_value = "127.0.0.1:9400")]
    listen: SocketAddr,
    /// Bearer token the usage API requires (the control plane sends it as LEAKY_ANALYTICS_TOKEN);
    /// unset: the usage API is open (keep it on loopback then).
    #[arg(long, env = "LEAKY_ANALYTICS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Most messages per batch (one Cassandra write round and one offset commit per batch).
    #[arg(long, default_value_t = 1000)]
    max_batch: usize,
    /// How long a batch waits for more messages after its first, in milliseconds.
    #[arg(long, default_value_t = 200)]
    linger_ms: u64,
    /// Create the keyspace and apply the schema migrations, then exit (`scripts/restore` runs this on
    /// a fresh node before importing a snapshot's SSTables).
    #[arg(long)]
    migrate_only: bool,
    /// A price file (YAML, see `config/prices.yaml`) seeded into the price table at start-up; a
    /// version already stored is never overwritten.
    #[arg(long, env = "LEAKY_ANALYTICS_PRICES")]
    prices: Option<std::path::PathBuf>,
    /// How often the statement job looks for periods to close, in seconds (0: this process closes
    /// no statements).
    #[arg(long, default_value_t = 300)]
    statements_every: u64,
    /// How long after a day or month ends its statements are closed, in seconds.
    #[arg(long, default_value_t = 3600)]
    close_after: u64,
    /// The time zone statements of an org are closed in until its own zone is known (an IANA name).
    #[arg(long, default_value = "UTC")]
    statements_tz: String,
    /// The topic of `report.generated` events.
    #[arg(long, default_value = leaky_analytics::reports::job::REPORTS_TOPIC)]
    reports_topic: String,
    /// The control plane's tenancy topic, where each org's time zone is learnt (consumer group
    /// `<group>.tenancy`); empty: every org closes in `--statements-tz`.
    #[arg(long, default_value = leaky_analytics::zones::TENANCY_TOPIC)]
    tenancy_topic: String,
}

/// The price versions of `--prices`, if given.
fn analytics_prices(
    path: Option<&std::path::Path>,
) -> anyhow::Result<Vec<leaky_analytics::prices::PriceVersion>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    leaky_analytics::prices::parse_file(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The statement closer's settings (`None` with `--statements-every 0`).
fn analytics_statements(
    a: &AnalyticsArgs,
) -> anyhow::Result<Option<leaky_analytics::reports::job::CloserConfig>> {
    if a.statements_every == 0 {
        return Ok(None);
    }
    let mut c = leaky_analytics::reports::job::CloserConfig::new(&a.kafka);
    c.every = std::time::Duration::from_secs(a.statements_every);
    c.close_after = std::time::Duration::from_secs(a.close_after);
    c.topic = a.reports_topic.clone();
    c.tz = a
        .statements_tz
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown time zone {:?}", a.statements_tz))?;
    Ok(Some(c))
}

fn run_analytics(a: AnalyticsArgs) -> anyhow::Result<()> {
    let mut consumer = leaky_analytics::consumer::ConsumerConfig::new(&a.kafka, &a.group, &a.topic);
    consumer.max_batch = a.max_batch.max(1);
    consumer.linger = std::time::Duration::from_millis(a.linger_ms);
    let mut store = leaky_analytics::store::StoreConfig::new(&a.cassandra, &a.keyspace);
    store.replication_factor = a.replication_factor;
    if a.migrate_only {
        tokio_rt()?.block_on(leaky_analytics::connect_store(&store))?;
        return Ok(());
    }
    let prices = analytics_prices(a.prices.as_deref())?;
    let statements = analytics_statements(&a)?;
    let zones = (!a.tenancy_topic.is_empty()).then(|| {
        let mut z = leaky_analytics::zones::ZoneConfig::new(&a.kafka, &a.group);
        z.topic = a.tenancy_topic.clone();
        z
    });
    let config = leaky_analytics::AnalyticsConfig {
        consumer,
        store,
        listen: a.listen,
        token: a.token.filter(|t| !t.is_empty()),
        prices,
        statements,
        zones,
    };
    tokio_rt()?.block_on(leaky_analytics::run(config, shutdown_signal()))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logs(log_format, &cli.log);
    let result = match cli.command.unwrap_or(Command::Up {
        proxy: ProxyArgs::default(),
        stubs: StubArgs::default(),
    }) {
        Command::CheckConfig { files, offline } => return check_config(&files, offline),
        Command::Schema => {
            print!("{}", leaky_config::json_schema());
            Ok(())
        }
        Command::Stubs {
            stubs,
            payment_listen,
        } => run_stubs(stubs, payment_listen),
        Command::Proxy { proxy } => cli
            .trace
            .start_proxy()
            .and_then(|()| run_proxy(&proxy, None)),
        Command::Up { proxy, stubs } => cli
            .trace
            .start_proxy()
            .and_then(|()| run_proxy(&proxy, Some(stubs))),
        Command::ControlPlane {
            action: Some(ControlPlaneCommand::Ledger { command }),
            ..
        } => run_ledger(command),
        Command::ControlPlane {
            action: Some(ControlPlaneCommand::Secrets { command }),
            ..
        } => run_secrets(command),
        Command::ControlPlane { cp, action: None } => cli
            .trace
            .start_service("leaky-control-plane")
            .and_then(|()| run_control_plane(cp)),
        Command::Analytics(a) => cli
            .trace
            .start_service("leaky-analytics")
            .and_then(|()| run_analytics(a)),
    };
    flush_traces();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match log_format {
                // A log pipeline reads stderr as JSON lines: the fatal error is one of them.
                LogFormat::Json => {
                    tracing::error!(error = %format!("{e:#}"), "leaky-tokens exited")
                }
                LogFormat::Text => eprintln!("leaky-tokens: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        // With `trace_id`, `span_id`, `request_id` on every line they apply to (src/log_json.rs).
        LogFormat::Json => log_json::init(filter),
        // Caller-supplied values (a model, a path) are escaped: one event is one line.
        LogFormat::Text => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .fmt_fields(log_fields::EscapedFields)
                .try_init();
        }
    }
}

fn check_config(files: &[PathBuf], offline: bool) -> ExitCode {
    let resolve = if offline {
        leaky_proxy::snapshot::Resolve::Skip
    } else {
        leaky_proxy::snapshot::Resolve::System
    };
    let mut failed = false;
    for f in files {
        match leaky_config::load(f) {
            Ok(c) => {
                let counts = (c.routes.len(), c.providers.len(), c.keys.len());
                // What validation cannot see, found as start-up would find it.
                match leaky_proxy::check::check_snapshot(c, resolve) {
                    Ok(()) => println!(
                        "{}: ok ({} routes, {} providers, {} keys)",
                        f.display(),
                        counts.0,
                        counts.1,
                        counts.2
                    ),
                    Err(e) => {
                        failed = true;
                        println!("{}: {e}", f.display());
                    }
                }
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    println!("{e}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_stubs(stubs: StubArgs, payment_listen: SocketAddr) -> anyhow::Result<()> {
    let mut cfg = stubs.config();
    cfg.payment = Some(payment_listen);
    // Same pacing switch as the model stubs (`--latency off` for benchmarks).
    cfg.payment_config.latency = cfg.latency;
    let rt = tokio_rt()?;
    rt.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        leaky_stubs::serve(cfg, shutdown).await
    })?;
    Ok(())
}

/// Billing's settings from the flags (prices and validity stay `LEAKY_BILLING_*` env settings).
fn billing_config(
    url: String,
    api_key: String,
    webhook_secret: String,
) -> leaky_control_plane::billing::BillingConfig {
    use leaky_control_plane::billing::{payments_http::HttpPaymentsConfig, BillingConfig};
    let mut config = BillingConfig::default();
    config.settings.webhook_secret = webhook_secret;
    config.payments = HttpPaymentsConfig {
        base_url: url,
        api_key,
        ..config.payments
    };
    config
}

/// The control plane's bootstrap admin token: the one configured, else `lt-dev-admin` in dev mode
/// only, else none (empty: the admin API takes OAuth2 access tokens and admin-scoped API keys only).
/// A production deployment that forgot to set it therefore has no well-known admin password.
fn bootstrap_admin_token(configured: Option<String>) -> String {
    let dev = matches!(
        std::env::var("LEAKY_IDENTITY_DEV").as_deref(),
        Ok("1" | "true")
    );
    match configured.filter(|t| !t.is_empty()) {
        Some(token) => token,
        None if dev => "lt-dev-admin".to_owned(),
        None => {
            tracing::info!(
                "admin API: no bootstrap token (LEAKY_ADMIN_TOKEN unset); OAuth2 access tokens \
                 and admin-scoped API keys only"
            );
            String::new()
        }
    }
}

fn run_control_plane(cp: ControlPlaneArgs) -> anyhow::Result<()> {
    let config = leaky_control_plane::Config {
        listen: cp.listen,
        database_url: cp.database_url,
        roles: cp.roles,
        admin_token: bootstrap_admin_token(cp.admin_token),
        config_base: Some(cp.config_base),
        outbox: cp
            .kafka_brokers
            .filter(|b| !b.is_empty())
            .map(leaky_control_plane::outbox::RelayConfig::new),
        redis_url: cp.redis_url.filter(|u| !u.is_empty()),
        billing: billing_config(
            cp.payments_url,
            cp.payments_api_key,
            cp.payments_webhook_secret,
        ),
        notify: leaky_control_plane::notify::Settings {
            smtp_url: cp.smtp_url.filter(|u| !u.is_empty()),
            from: cp.smtp_from,
        },
    };
    let tls = cp
        .tls_cert
        .zip(cp.tls_key)
        .map(|(cert, key)| leaky_control_plane::tls::TlsFiles {
            cert,
            key,
            client_ca: cp.tls_client_ca,
        });
    tokio_rt()?.block_on(leaky_control_plane::run_with_tls(
        config,
        tls,
        shutdown_signal(),
    ))?;
    Ok(())
}

fn run_ledger(command: LedgerCommand) -> anyhow::Result<()> {
    let LedgerCommand::Rebuild { org, database_url } = command;
    let lines = tokio_rt()?
        .block_on(leaky_control_plane::ledger::rebuild_command(
            &database_url,
            org.as_deref(),
        ))
        .map_err(|e| anyhow::anyhow!("ledger rebuild: {e}"))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run_secrets(command: SecretsCommand) -> anyhow::Result<()> {
    let SecretsCommand::Rewrap { database_url } = command;
    let lines = tokio_rt()?
        .block_on(leaky_control_plane::identity::rewrap_command(&database_url))
        .map_err(|e| anyhow::anyhow!("secrets rewrap: {e}"))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn tokio_rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn run_proxy(proxy: &ProxyArgs, stubs: Option<StubArgs>) -> anyhow::Result<()> {
    let opts = RunOptions {
        config: proxy.config.clone(),
        control_plane: proxy.control_plane(),
        listen: proxy.listen,
        admin_listen: proxy.admin_listen,
        threads: proxy.threads,
        open_files: raise_open_file_limit(),
        upgrade: proxy.upgrade,
        upgrade_sock: proxy.upgrade_sock.clone(),
    };
    if opts.control_plane.is_none() && !opts.config.is_file() {
        anyhow::bail!(
            "config file `{}` not found (run from the repository root, or pass --config FILE)",
            opts.config.display()
        );
    }
    allocator::spawn_purger();
    let stub_cfg = stubs.as_ref().map(StubArgs::config);
    let built = leaky_proxy::build(&opts, |server| {
        if let Some(cfg) = stub_cfg {
            add_stubs(server, cfg);
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if stubs.is_some() {
        let snap = built.state.snapshot();
        print_banner(&snap.config, snap.version);
    }
    built.server.run_until_stopped();
    // Every proxy runtime has exited: nothing queues usage any more, so this flush is the last.
    built.background.shutdown();
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a soft limit of 1024 is common and far below
/// what a proxy holding thousands of connections needs) and returns the limit now in force, which
/// the proxy's connection limit is fitted under. `None` if it cannot be read.
fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

fn print_banner(c: &leaky_config::Config, version: u64) {
    let proxy = c.server.listen;
    let admin = c.server.admin_listen;
    println!(
        "\nLeaky Tokens is up (config {}, version {})\n\
         \n  proxy    http://{proxy}   (/v1, /openai/v1, /gemini/v1beta, /gemini/v1, /qwen/api/v1, /qwen/compatible-mode/v1)\
         \n  admin    http://{admin}   (/healthz /readyz /metrics /admin/config)\
         \n  stubs    OpenAI http://127.0.0.1:18001  Gemini http://127.0.0.1:18002  Qwen http://127.0.0.1:18003\
         \n\n  demo keys: lt-demo-free (free)  lt-demo-pro (pro)  lt-demo-enterprise (enterprise)\
         \n\n  curl -s http://{proxy}/v1/chat/completions -H 'Authorization: Bearer lt-demo-pro' \\\
         \n    -H 'Content-Type: application/json' \\\
         \n    -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n",
        c.files.first().map(|f| f.display().to_string()).unwrap_or_default(),
        version
    );
}
