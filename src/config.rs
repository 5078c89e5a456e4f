//! Configuration: one [`Config`] parsed once at startup from command-line flags and
//! `SANDPOOL_*` environment variables.
//!
//! Every field documents its default and unit. A malformed value is a startup error that
//! names the variable; nothing here silently falls back to a default when a value fails to
//! parse. The environment is read only through clap, here.
//! Each default is written once, on its field; `Default` reads those (see `defaults`).
//!
//! Why this file is over 400 lines: it is the list of every setting, each with its
//! documentation, flag, variable, default and parser; splitting the list would only scatter it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand};

/// The command line of the `sandpool` binary.
#[derive(Debug, Parser)]
#[command(
    name = "sandpool",
    version,
    about = "A pre-warmed pool of hardened sandbox containers"
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
}

/// The subcommands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Work with the sandbox image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Read and check sessions' audit trails.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a running deployment's state: every replica (alive, engine, pool idle/leased/max,
    /// breaker, sessions). Read from `--url` (a replica, or nginx in front of them), else from
    /// the store when `SANDPOOL_REDIS_URL` is set, else from `http://<SANDPOOL_LISTEN>`.
    /// Exits 1 when nothing answers.
    Status {
        /// A replica's address, e.g. `http://127.0.0.1:8080`.
        #[arg(long)]
        url: Option<String>,
        /// Print JSON (the body of `GET /api/replicas`) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `sandpool image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the default sandbox image from `pool-images/sandbox` without a registry.
    Build,
}

/// `sandpool audit ...`: the trail is read from `--file` when given, else from Redis
/// (`SANDPOOL_REDIS_URL`, `SANDPOOL_REDIS_PREFIX`), else from `SANDPOOL_DATA_DIR`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a session's hash chain: prints `ok: N entries, chain intact` and exits 0, or
    /// where and why it breaks and exits 1.
    Verify {
        /// The session id.
        #[arg(long)]
        session: String,
        /// A JSON-lines audit file to read instead (`{data_dir}/audit/{session}.jsonl`).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Print a session's entries, one JSON object per line, oldest first.
    Show {
        /// The session id.
        #[arg(long)]
        session: String,
        /// A JSON-lines audit file to read instead.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

/// Every setting of the service. Flags win over environment variables, which win over defaults.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP and Socket.IO server listens on. Default `127.0.0.1:3000`.
    #[arg(long, env = "SANDPOOL_LISTEN", default_value = "127.0.0.1:3000", value_parser = parse_env::<SocketAddr>("SANDPOOL_LISTEN"))]
    pub listen: SocketAddr,

    /// Identity of this replica: every container it creates is labeled with it, and a restart
    /// with the same id adopts or removes what an earlier run left behind. Letters, digits,
    /// `-`, `_` and `.`. Default: the host name, or `local`.
    #[arg(long, env = "SANDPOOL_INSTANCE_ID", default_value_t = default_instance_id(), value_parser = parse_instance_id)]
    pub instance_id: String,

    /// Docker endpoint: `unix:///path/to/docker.sock`, or `tcp://host:2376` (TLS with
    /// `SANDPOOL_DOCKER_TLS_DIR`; plain HTTP without it, for a private network only). Each
    /// replica may drive its own engine. Default `unix:///var/run/docker.sock`.
    #[arg(
        long,
        env = "SANDPOOL_DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,

    #[command(flatten)]
    pub gate: GateConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub image: ImageConfig,

    #[command(flatten)]
    pub session: SessionConfig,

    #[command(flatten)]
    pub api: ApiConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub mcp: McpConfig,

    #[command(flatten)]
    pub audit: AuditSettings,

    /// How long graceful shutdown may take before the process exits anyway, in seconds.
    /// Default 30.
    #[arg(long = "shutdown-timeout-secs", env = "SANDPOOL_SHUTDOWN_TIMEOUT_SECS", default_value = "30", value_parser = parse_secs("SANDPOOL_SHUTDOWN_TIMEOUT_SECS", false))]
    pub shutdown_timeout: Duration,
}

/// Settings of the Docker gate (`src/docker/gate.rs`).
#[derive(Debug, Clone, Args)]
pub struct GateConfig {
    /// Directory with the client key, certificate and CA (`key.pem`, `cert.pem`, `ca.pem`,
    /// as in `DOCKER_CERT_PATH`) for a `tcp://` Docker endpoint over TLS. Default unset.
    #[arg(long = "docker-tls-dir", env = "SANDPOOL_DOCKER_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,

    /// Docker calls in flight at once. Default 20.
    #[arg(long = "docker-max-concurrent", env = "SANDPOOL_DOCKER_MAX_CONCURRENT", default_value = "20", value_parser = parse_positive("SANDPOOL_DOCKER_MAX_CONCURRENT"))]
    pub max_concurrent: usize,

    /// Callers allowed to wait for a slot; one more fails at once with `overloaded`. Default 100.
    #[arg(long = "docker-max-queue", env = "SANDPOOL_DOCKER_MAX_QUEUE", default_value = "100", value_parser = parse_env::<usize>("SANDPOOL_DOCKER_MAX_QUEUE"))]
    pub max_queue: usize,

    /// Consecutive failed Docker calls that open the circuit breaker. Default 5.
    #[arg(long = "docker-breaker-failures", env = "SANDPOOL_DOCKER_BREAKER_FAILURES", default_value = "5", value_parser = parse_positive("SANDPOOL_DOCKER_BREAKER_FAILURES"))]
    pub breaker_failures: usize,

    /// How long the open breaker fails fast before it lets one probe through, in milliseconds.
    /// Default 30000.
    #[arg(long = "docker-breaker-cooldown-ms", env = "SANDPOOL_DOCKER_BREAKER_COOLDOWN_MS", default_value = "30000", value_parser = parse_ms("SANDPOOL_DOCKER_BREAKER_COOLDOWN_MS", false))]
    pub breaker_cooldown: Duration,

    /// Upper bound on one Docker call, streamed exec output included, in milliseconds.
    /// Default 30000.
    #[arg(long = "docker-call-timeout-ms", env = "SANDPOOL_DOCKER_CALL_TIMEOUT_MS", default_value = "30000", value_parser = parse_ms("SANDPOOL_DOCKER_CALL_TIMEOUT_MS", true))]
    pub call_timeout: Duration,

    /// Attempts of an idempotent call (inspect, list, remove, start, attach) before the
    /// gate gives up. Creates are never retried. Default 3.
    #[arg(long = "docker-retry-attempts", env = "SANDPOOL_DOCKER_RETRY_ATTEMPTS", default_value = "3", value_parser = parse_positive("SANDPOOL_DOCKER_RETRY_ATTEMPTS"))]
    pub retry_attempts: usize,

    /// First backoff delay between retries, in milliseconds; it doubles, with jitter. Default 100.
    #[arg(long = "docker-retry-base-ms", env = "SANDPOOL_DOCKER_RETRY_BASE_MS", default_value = "100", value_parser = parse_ms("SANDPOOL_DOCKER_RETRY_BASE_MS", false))]
    pub retry_base: Duration,
}

/// Settings of the container pool (`src/pool/`) and of every sandbox it creates.
#[derive(Debug, Clone, Args)]
pub struct PoolConfig {
    /// Idle, scrubbed containers the pool keeps ready. Default 10.
    #[arg(long = "pool-min-idle", env = "SANDPOOL_POOL_MIN_IDLE", default_value = "10", value_parser = parse_env::<usize>("SANDPOOL_POOL_MIN_IDLE"))]
    pub min_idle: usize,

    /// Idle containers kept at most: a recycled container beyond this is destroyed, so that a
    /// burst does not leave the pool large forever. 0 means twice `SANDPOOL_POOL_MIN_IDLE`.
    /// Default 0.
    #[arg(long = "pool-max-idle", env = "SANDPOOL_POOL_MAX_IDLE", default_value = "0", value_parser = parse_env::<usize>("SANDPOOL_POOL_MAX_IDLE"))]
    pub max_idle: usize,

    /// Containers of this instance at most: idle, leased, being created or scrubbed. Default 100.
    #[arg(long = "pool-max", env = "SANDPOOL_POOL_MAX", default_value = "100", value_parser = parse_positive("SANDPOOL_POOL_MAX"))]
    pub max: usize,

    /// Leases a container serves before it is destroyed instead of recycled. Default 50.
    #[arg(long = "pool-max-uses", env = "SANDPOOL_POOL_MAX_USES", default_value = "50", value_parser = parse_positive("SANDPOOL_POOL_MAX_USES"))]
    pub max_uses: usize,

    /// Age after which a container is destroyed instead of recycled, in seconds. Default 3600.
    #[arg(long = "pool-max-age-secs", env = "SANDPOOL_POOL_MAX_AGE_SECS", default_value = "3600", value_parser = parse_secs("SANDPOOL_POOL_MAX_AGE_SECS", false))]
    pub max_age: Duration,

    /// How long a caller waits in the queue for a container when none is idle and the pool
    /// is at its maximum, in milliseconds (`pool_exhausted` after it). Default 30000.
    #[arg(long = "pool-acquire-timeout-ms", env = "SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", default_value = "30000", value_parser = parse_ms("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", false))]
    pub acquire_timeout: Duration,

    /// Callers that may wait in the queue at once; one more is refused at once with
    /// `queue_full`. Default 1000.
    #[arg(long = "pool-max-waiters", env = "SANDPOOL_POOL_MAX_WAITERS", default_value = "1000", value_parser = parse_env::<usize>("SANDPOOL_POOL_MAX_WAITERS"))]
    pub max_waiters: usize,

    /// Containers the refill task creates at once. Default 4.
    #[arg(long = "pool-create-parallelism", env = "SANDPOOL_POOL_CREATE_PARALLELISM", default_value = "4", value_parser = parse_positive("SANDPOOL_POOL_CREATE_PARALLELISM"))]
    pub create_parallelism: usize,

    /// Period of the check that compares the pool with Docker's own list, in milliseconds.
    /// Default 30000.
    #[arg(long = "pool-reconcile-interval-ms", env = "SANDPOOL_POOL_RECONCILE_INTERVAL_MS", default_value = "30000", value_parser = parse_ms("SANDPOOL_POOL_RECONCILE_INTERVAL_MS", true))]
    pub reconcile_interval: Duration,

    /// A container of this instance that the pool does not know and that is not being created
    /// is removed by the reconcile loop once it is older than this, in milliseconds (a create
    /// that failed half-way). Default 60000.
    #[arg(long = "pool-reconcile-grace-ms", env = "SANDPOOL_POOL_RECONCILE_GRACE_MS", default_value = "60000", value_parser = parse_ms("SANDPOOL_POOL_RECONCILE_GRACE_MS", false))]
    pub reconcile_grace: Duration,

    /// Upper bound on the scrub-and-verify of one released container, in milliseconds.
    /// Default 10000.
    #[arg(long = "pool-scrub-timeout-ms", env = "SANDPOOL_POOL_SCRUB_TIMEOUT_MS", default_value = "10000", value_parser = parse_ms("SANDPOOL_POOL_SCRUB_TIMEOUT_MS", true))]
    pub scrub_timeout: Duration,

    /// Memory limit of one sandbox, in bytes. Default 536870912 (512 MiB).
    #[arg(long = "sandbox-memory-bytes", env = "SANDPOOL_SANDBOX_MEMORY_BYTES", default_value = "536870912", value_parser = parse_positive("SANDPOOL_SANDBOX_MEMORY_BYTES"))]
    pub memory_bytes: usize,

    /// CPU limit of one sandbox, in cores (fractions allowed). Default 1.0.
    #[arg(long = "sandbox-cpus", env = "SANDPOOL_SANDBOX_CPUS", default_value = "1.0", value_parser = parse_cpus)]
    pub cpus: f64,

    /// Processes one sandbox may have at once. Default 256.
    #[arg(long = "sandbox-pids-limit", env = "SANDPOOL_SANDBOX_PIDS_LIMIT", default_value = "256", value_parser = parse_positive("SANDPOOL_SANDBOX_PIDS_LIMIT"))]
    pub pids_limit: usize,

    /// Size of each writable tmpfs (`/workspace`, `/tmp`, the home directory), in bytes.
    /// Default 268435456 (256 MiB).
    #[arg(long = "sandbox-tmpfs-bytes", env = "SANDPOOL_SANDBOX_TMPFS_BYTES", default_value = "268435456", value_parser = parse_positive("SANDPOOL_SANDBOX_TMPFS_BYTES"))]
    pub tmpfs_bytes: usize,

    /// Docker network mode of a sandbox: `none` (no network) or the name of a network.
    /// Default `none`.
    #[arg(
        long = "sandbox-network",
        env = "SANDPOOL_SANDBOX_NETWORK",
        default_value = "none"
    )]
    pub network: String,

    /// OCI runtime of a sandbox, as the engine names it (`runsc` for gVisor, registered in
    /// the engine's `daemon.json`; see the README). Empty: the engine's default runtime.
    /// Default empty.
    #[arg(
        long = "sandbox-runtime",
        env = "SANDPOOL_SANDBOX_RUNTIME",
        default_value = ""
    )]
    pub runtime: String,
}

impl PoolConfig {
    /// The idle set's upper bound (see `max_idle`).
    pub fn idle_cap(&self) -> usize {
        if self.max_idle == 0 {
            (self.min_idle * 2).max(1)
        } else {
            self.max_idle.max(self.min_idle)
        }
    }
}

/// Which image the sandboxes run and how to build it.
#[derive(Debug, Clone, Args)]
pub struct ImageConfig {
    /// Image of every sandbox. Default `sandpool/sandbox:latest`.
    #[arg(
        long = "image",
        env = "SANDPOOL_IMAGE",
        default_value = "sandpool/sandbox:latest"
    )]
    pub image: String,

    /// Build the image at startup when Docker does not have it. Default true.
    #[arg(long = "image-auto-build", env = "SANDPOOL_IMAGE_AUTO_BUILD", default_value = "true", value_parser = parse_env::<bool>("SANDPOOL_IMAGE_AUTO_BUILD"))]
    pub auto_build: bool,

    /// `BASE_IMAGE` build argument: `scratch` needs no registry. Default `scratch`.
    #[arg(
        long = "image-base",
        env = "SANDPOOL_IMAGE_BASE",
        default_value = "scratch"
    )]
    pub base_image: String,

    /// Static busybox copied into the image (Debian package `busybox-static`). Default
    /// `/bin/busybox`.
    #[arg(
        long = "image-busybox-path",
        env = "SANDPOOL_IMAGE_BUSYBOX_PATH",
        default_value = "/bin/busybox"
    )]
    pub busybox_path: String,

    /// The static supervisor binary copied into the image (`scripts/build-supervisor` makes
    /// it). Default empty: `target/supervisor/x86_64-unknown-linux-gnu/release/sandpool-supervisor`
    /// from the working directory (the repository root).
    #[arg(
        long = "image-supervisor-path",
        env = "SANDPOOL_IMAGE_SUPERVISOR_PATH",
        default_value = ""
    )]
    pub supervisor_path: String,
}

/// Where sessions live and how long they last.
#[derive(Debug, Clone, Args)]
pub struct SessionConfig {
    /// Redis for session state, e.g. `redis://127.0.0.1:6379`. Unset: sessions live in this
    /// process (nothing survives a restart or is shared between replicas). Default unset.
    #[arg(long = "redis-url", env = "SANDPOOL_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key. Default `sandpool:`.
    #[arg(
        long = "redis-prefix",
        env = "SANDPOOL_REDIS_PREFIX",
        default_value = "sandpool:"
    )]
    pub redis_prefix: String,

    /// Period of the expiry janitor, in seconds. Default 10.
    #[arg(long = "janitor-interval-secs", env = "SANDPOOL_JANITOR_INTERVAL_SECS", default_value = "10", value_parser = parse_secs("SANDPOOL_JANITOR_INTERVAL_SECS", true))]
    pub janitor_interval: Duration,

    /// Sessions one janitor query fetches and claims at once. Default 100.
    #[arg(long = "janitor-batch", env = "SANDPOOL_JANITOR_BATCH", default_value = "100", value_parser = parse_positive("SANDPOOL_JANITOR_BATCH"))]
    pub janitor_batch: usize,

    /// A session idle longer than this is ended, in seconds. Default 900.
    #[arg(long = "session-idle-ttl-secs", env = "SANDPOOL_SESSION_IDLE_TTL_SECS", default_value = "900", value_parser = parse_secs("SANDPOOL_SESSION_IDLE_TTL_SECS", true))]
    pub idle_ttl: Duration,

    /// How long a session whose connection dropped keeps its sandbox for a resume, in
    /// seconds. Default 30.
    #[arg(long = "reconnect-grace-secs", env = "SANDPOOL_RECONNECT_GRACE_SECS", default_value = "30", value_parser = parse_secs("SANDPOOL_RECONNECT_GRACE_SECS", false))]
    pub reconnect_grace: Duration,

    /// Sessions this instance keeps detached (their connection dropped, waiting for a resume)
    /// at most; past it the longest-detached is ended at once, so that a flood of
    /// connect-and-drop clients holds at most this many sandboxes. Default 100.
    #[arg(long = "session-max-detached", env = "SANDPOOL_SESSION_MAX_DETACHED", default_value = "100", value_parser = parse_env::<usize>("SANDPOOL_SESSION_MAX_DETACHED"))]
    pub max_detached: usize,

    /// Life of this instance's heartbeat key, in seconds; renewed every third of it. Another
    /// instance may take over its sessions once it has lapsed. Default 15.
    #[arg(long = "heartbeat-ttl-secs", env = "SANDPOOL_HEARTBEAT_TTL_SECS", default_value = "15", value_parser = parse_secs("SANDPOOL_HEARTBEAT_TTL_SECS", true))]
    pub heartbeat_ttl: Duration,
}

/// Who may open a session (`src/api/auth.rs`). Off when no key is set; set one in
/// production.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Shared secret (at least 32 bytes) that signs the HS256 JWTs clients pass as
    /// `auth.token`. Default unset (no authentication, unless a public key is set).
    #[arg(
        long = "auth-hs256-secret",
        env = "SANDPOOL_AUTH_HS256_SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<String>,

    /// PEM file of the RSA (RS256) or EC P-256 (ES256) public key that verifies the JWTs,
    /// instead of a shared secret. Default unset.
    #[arg(long = "auth-public-key-file", env = "SANDPOOL_AUTH_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<std::path::PathBuf>,

    /// Live sessions one token subject (`sub`) may hold at once, over every replica; 0 means
    /// no limit. Tokens without `sub` are not limited. Default 5.
    #[arg(long = "auth-max-sessions-per-subject", env = "SANDPOOL_AUTH_MAX_SESSIONS_PER_SUBJECT", default_value = "5", value_parser = parse_env::<usize>("SANDPOOL_AUTH_MAX_SESSIONS_PER_SUBJECT"))]
    pub max_sessions_per_subject: usize,
}

/// The audit trail of tool calls (`src/audit/`).
#[derive(Debug, Clone, Args)]
pub struct AuditSettings {
    /// Directory where the audit log is kept without Redis (`audit/<session>.jsonl` inside
    /// it). Unset: in memory, bounded (nothing survives a restart). Ignored when
    /// `SANDPOOL_REDIS_URL` is set: the trail is then in Redis. Default unset.
    #[arg(long = "data-dir", env = "SANDPOOL_DATA_DIR", value_parser = parse_path("SANDPOOL_DATA_DIR"))]
    pub data_dir: Option<std::path::PathBuf>,

    /// How long a session's trail is kept after its last entry, in seconds (the Redis key's
    /// expiry; files older than this are removed at startup). Default 604800 (7 days).
    #[arg(long = "audit-retention-secs", env = "SANDPOOL_AUDIT_RETENTION_SECS", default_value = "604800", value_parser = parse_secs("SANDPOOL_AUDIT_RETENTION_SECS", true))]
    pub retention: Duration,

    /// Record tool calls in the audit trail. `false` skips every append (to measure what
    /// the trail costs). Default true.
    // `action = Set`: a `bool` field is otherwise a flag that takes no value.
    #[arg(long = "audit-enabled", env = "SANDPOOL_AUDIT_ENABLED", default_value = "true", action = clap::ArgAction::Set, value_parser = parse_env::<bool>("SANDPOOL_AUDIT_ENABLED"))]
    pub enabled: bool,
}

/// Limits of the Socket.IO session API.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Longest command accepted, in bytes. Default 16384.
    #[arg(long = "max-command-bytes", env = "SANDPOOL_MAX_COMMAND_BYTES", default_value = "16384", value_parser = parse_positive("SANDPOOL_MAX_COMMAND_BYTES"))]
    pub max_command_bytes: usize,

    /// Commands running at once for one session; one more gets `too_many_requests`.
    /// Default 5.
    #[arg(long = "max-inflight-per-session", env = "SANDPOOL_MAX_INFLIGHT_PER_SESSION", default_value = "5", value_parser = parse_positive("SANDPOOL_MAX_INFLIGHT_PER_SESSION"))]
    pub max_inflight_per_session: usize,

    /// Timeout of a command that names none, in milliseconds. Default 30000.
    #[arg(long = "exec-default-timeout-ms", env = "SANDPOOL_EXEC_DEFAULT_TIMEOUT_MS", default_value = "30000", value_parser = parse_ms("SANDPOOL_EXEC_DEFAULT_TIMEOUT_MS", true))]
    pub exec_default_timeout: Duration,

    /// Largest `timeoutMs` a command may ask for, in milliseconds. Default 300000.
    #[arg(long = "exec-max-timeout-ms", env = "SANDPOOL_EXEC_MAX_TIMEOUT_MS", default_value = "300000", value_parser = parse_ms("SANDPOOL_EXEC_MAX_TIMEOUT_MS", true))]
    pub exec_max_timeout: Duration,

    /// Output kept and streamed per stream (stdout, stderr) of one command, in bytes; the
    /// rest is dropped and `truncated` set. Default 1048576.
    #[arg(long = "exec-output-limit-bytes", env = "SANDPOOL_EXEC_OUTPUT_LIMIT_BYTES", default_value = "1048576", value_parser = parse_positive("SANDPOOL_EXEC_OUTPUT_LIMIT_BYTES"))]
    pub exec_output_limit_bytes: usize,

    /// Largest file the file API (`fs:*` events, `/api/sessions/{id}/files`) writes or reads,
    /// in bytes; a bigger one gets `too_large`. The sandbox's tmpfs size bounds the whole
    /// workspace. Default 268435456 (256 MiB).
    #[arg(long = "file-max-bytes", env = "SANDPOOL_FILE_MAX_BYTES", default_value = "268435456", value_parser = parse_positive("SANDPOOL_FILE_MAX_BYTES"))]
    pub file_max_bytes: usize,

    /// Bound of each sandbox's checkpoint store (the workspace recorded before every tool
    /// call that can change it, for undo), in bytes; the oldest checkpoints are dropped first.
    /// It is the supervisor's memory, charged to the sandbox's memory limit. 0 turns
    /// checkpoints (and undo) off. Default 134217728 (128 MiB).
    #[arg(long = "checkpoint-bytes", env = "SANDPOOL_CHECKPOINT_BYTES", default_value = "134217728", value_parser = parse_env::<u64>("SANDPOOL_CHECKPOINT_BYTES"))]
    pub checkpoint_bytes: u64,
}

/// The agents' door (the MCP endpoint at `/mcp`) and the approval of tool calls.
#[derive(Debug, Clone, Args)]
pub struct McpConfig {
    /// Approval policies a browser may choose (`all`, `writes`, `none`), comma-separated.
    /// New sessions get `writes` when it is allowed, else the strictest allowed. Default all
    /// three.
    #[arg(long = "approval-policies", env = "SANDPOOL_APPROVAL_POLICIES", default_value = "all,writes,none", value_parser = parse_policies)]
    pub approval_policies: NameList,

    /// How long a tool call waits for the user's approval (also while no browser is
    /// attached), in milliseconds. Default 120000.
    #[arg(long = "approval-timeout-ms", env = "SANDPOOL_APPROVAL_TIMEOUT_MS", default_value = "120000", value_parser = parse_ms("SANDPOOL_APPROVAL_TIMEOUT_MS", true))]
    pub approval_timeout: Duration,

    /// Host names (optionally `host:port`) the MCP endpoint answers to, comma-separated: a
    /// request with another `Host` header gets 403 (DNS-rebinding protection). `*` allows
    /// every host (behind a proxy that checks it). Default `localhost,127.0.0.1,::1`.
    #[arg(long = "mcp-allowed-hosts", env = "SANDPOOL_MCP_ALLOWED_HOSTS", default_value = "localhost,127.0.0.1,::1", value_parser = parse_names("SANDPOOL_MCP_ALLOWED_HOSTS"))]
    pub allowed_hosts: NameList,

    /// Origins (`scheme://host:port`) a browser-based MCP client may call from,
    /// comma-separated; empty: requests carrying an `Origin` header are not checked. Default
    /// empty.
    #[arg(long = "mcp-allowed-origins", env = "SANDPOOL_MCP_ALLOWED_ORIGINS", default_value = "", value_parser = parse_names("SANDPOOL_MCP_ALLOWED_ORIGINS"))]
    pub allowed_origins: NameList,

    /// Largest MCP request body, in bytes (a `write_file` carries the file in it). Default
    /// 4194304.
    #[arg(long = "mcp-max-body-bytes", env = "SANDPOOL_MCP_MAX_BODY_BYTES", default_value = "4194304", value_parser = parse_positive("SANDPOOL_MCP_MAX_BODY_BYTES"))]
    pub max_body_bytes: usize,

    /// The address clients reach this service at (`https://sandpool.example.com`), for the
    /// `mcp.url` a session is told. Unset: taken from the handshake's `Host` (and
    /// `X-Forwarded-Proto`) headers.
    #[arg(long = "public-url", env = "SANDPOOL_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The address other replicas reach this one at (`http://sandpool-1:3000`), to forward
    /// an MCP call to the replica that holds its session. Unset: `http://` and the listen
    /// address, or this host's name when listening on every address.
    #[arg(long = "internal-url", env = "SANDPOOL_INTERNAL_URL")]
    pub internal_url: Option<String>,

    /// The operator's token: reads any session's audit trail
    /// (`GET /api/sessions/{id}/audit`), also after the session ended. Unset: only a
    /// session's own workspace token reads its trail.
    #[arg(
        long = "admin-token",
        env = "SANDPOOL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// A comma-separated list of names, trimmed, empty entries dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameList(pub Vec<String>);

impl NameList {
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

fn parse_names(
    var: &'static str,
) -> impl Fn(&str) -> Result<NameList, String> + Clone + Send + Sync {
    move |value: &str| {
        let names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        if names.iter().any(|n| n.chars().any(char::is_whitespace)) {
            return Err(format!("{var}: {value:?} has a name with a space in it"));
        }
        Ok(NameList(names))
    }
}

fn parse_policies(value: &str) -> Result<NameList, String> {
    let names = parse_names("SANDPOOL_APPROVAL_POLICIES")(value)?;
    if names.0.is_empty() {
        return Err("SANDPOOL_APPROVAL_POLICIES: allow at least one of all, writes, none".into());
    }
    match names
        .0
        .iter()
        .find(|n| !["all", "writes", "none"].contains(&n.as_str()))
    {
        Some(bad) => Err(format!(
            "SANDPOOL_APPROVAL_POLICIES: {bad:?} is not a policy (all, writes, none)"
        )),
        None => Ok(names),
    }
}

impl Config {
    /// A configuration with every default (the ones written on the fields above, read with
    /// the environment ignored) and this instance id, for tests and embedding.
    pub fn with_instance(instance_id: impl Into<String>) -> Self {
        let mut config: Config = defaults();
        config.listen = "127.0.0.1:0".parse().expect("static address");
        config.instance_id = instance_id.into();
        config
    }
}

/// A settings group with every default: the `default_value`s on its fields, with no
/// argument and the environment ignored, so that each default is written once.
fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every setting has a default that parses");
    T::from_arg_matches(&matches).expect("defaults fit their fields")
}

macro_rules! default_from_args {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                defaults()
            }
        }
    )*};
}
default_from_args!(
    GateConfig,
    PoolConfig,
    ImageConfig,
    SessionConfig,
    ApiConfig,
    AuthConfig,
    McpConfig,
    AuditSettings
);

fn default_instance_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| parse_instance_id(h).is_ok())
        .unwrap_or_else(|| "local".to_string())
}

fn parse_instance_id(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "SANDPOOL_INSTANCE_ID: {value:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A value parser whose error names the environment variable, so that a malformed value
/// from the environment is easy to trace.
fn parse_env<T>(var: &'static str) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    move |value: &str| {
        value
            .trim()
            .parse::<T>()
            .map_err(|e| format!("{var}: {value:?} is not valid: {e}"))
    }
}

fn parse_positive(
    var: &'static str,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |value: &str| match value.trim().parse::<usize>() {
        Ok(0) => Err(format!("{var}: must be at least 1")),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{var}: {value:?} is not valid: {e}")),
    }
}

/// A value parser for a whole number of milliseconds (at least 1 when `positive`).
fn parse_ms(
    var: &'static str,
    positive: bool,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |value: &str| parse_count(var, value, positive).map(Duration::from_millis)
}

/// A value parser for a whole number of seconds (at least 1 when `positive`).
fn parse_secs(
    var: &'static str,
    positive: bool,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |value: &str| parse_count(var, value, positive).map(Duration::from_secs)
}

fn parse_count(var: &str, value: &str, positive: bool) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(0) if positive => Err(format!("{var}: must be at least 1")),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{var}: {value:?} is not valid: {e}")),
    }
}

/// A value parser for a path that must not be empty.
fn parse_path(
    var: &'static str,
) -> impl Fn(&str) -> Result<std::path::PathBuf, String> + Clone + Send + Sync {
    move |value: &str| {
        if value.trim().is_empty() {
            Err(format!("{var}: must not be empty"))
        } else {
            Ok(std::path::PathBuf::from(value))
        }
    }
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
        Ok(_) => Err("SANDPOOL_SANDBOX_CPUS: must be a positive number of cores".into()),
        Err(e) => Err(format!(
            "SANDPOOL_SANDBOX_CPUS: {value:?} is not valid: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["sandpool", "--instance-id", "t1"]).unwrap();
        assert_eq!(cli.config.gate.max_concurrent, 20);
        assert_eq!(cli.config.gate.max_queue, 100);
        assert_eq!(cli.config.pool.min_idle, 10);
        assert_eq!(cli.config.pool.max, 100);
        assert_eq!(cli.config.listen.to_string(), "127.0.0.1:3000");
        assert!(cli.command.is_none());
    }

    #[test]
    fn malformed_value_names_the_variable() {
        let err = Cli::try_parse_from(["sandpool", "--pool-max", "lots"]).unwrap_err();
        assert!(err.to_string().contains("SANDPOOL_POOL_MAX"), "{err}");
        let err = Cli::try_parse_from(["sandpool", "--pool-max", "0"]).unwrap_err();
        assert!(err.to_string().contains("SANDPOOL_POOL_MAX"), "{err}");
        let err = Cli::try_parse_from(["sandpool", "--instance-id", "a b"]).unwrap_err();
        assert!(err.to_string().contains("SANDPOOL_INSTANCE_ID"), "{err}");
    }

    #[test]
    fn audit_settings_parse_and_reject_malformed_values() {
        let cli = Cli::try_parse_from(["sandpool"]).unwrap();
        assert!(cli.config.audit.enabled);
        assert_eq!(cli.config.audit.retention, Duration::from_secs(604_800));
        assert_eq!(
            AuditSettings::default().retention,
            Duration::from_secs(604_800)
        );
        let cli = Cli::try_parse_from([
            "sandpool",
            "--audit-enabled",
            "false",
            "--data-dir",
            "/var/lib/sandpool",
        ])
        .unwrap();
        assert!(!cli.config.audit.enabled);
        assert_eq!(
            cli.config.audit.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/sandpool"))
        );
        for (flag, value, var) in [
            ("--audit-enabled", "yes", "SANDPOOL_AUDIT_ENABLED"),
            (
                "--audit-retention-secs",
                "0",
                "SANDPOOL_AUDIT_RETENTION_SECS",
            ),
            (
                "--audit-retention-secs",
                "7d",
                "SANDPOOL_AUDIT_RETENTION_SECS",
            ),
            ("--data-dir", "", "SANDPOOL_DATA_DIR"),
        ] {
            let err = Cli::try_parse_from(["sandpool", flag, value]).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn audit_verify_parses() {
        let cli = Cli::try_parse_from(["sandpool", "audit", "verify", "--session", "s1"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Audit {
                command: AuditCommand::Verify { session, file: None }
            }) if session == "s1"
        ));
    }
}
