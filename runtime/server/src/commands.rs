//! The client commands of the CLI, on top of `sextant_quic::client`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sextant_core::{
    ConfigKey, Instance, InstanceId, InstanceKey, Namespace, PluginName, PluginRecord, Reader, Record, Revision, Scope,
    ServiceKey,
};
use sextant_proto::{Binding, ErrorCode, Request, Response, RolloutAction, Validation};
use sextant_quic::client::{Client, ClientError, ClientOptions};
use sextant_server::template::{Kind, Lang};

/// The plugin host's limits (`serve` and `gateway`).
#[derive(Debug, Clone, Args)]
pub(crate) struct PluginHostArgs {
    /// Component instances the plugin pool holds. 0: sized from the work, 2 per worker thread
    /// and --max-plugins (a 0.2.0 plugin runs one instance per worker thread however many
    /// services it serves) plus 1000 for 0.1.0 components (one per service and worker).
    #[arg(long, default_value_t = 0)]
    pub(crate) plugin_instances: u32,
    /// Distinct 0.2.0 plugins (component and configuration) running at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_plugins: u32,
    /// The newest plugin contract accepted: 0.2.3 (which also serves 0.2.2, 0.2.1, 0.2.0 and
    /// legacy 0.1.0 components), 0.2.2, 0.2.1 or 0.2.0 to refuse components built for newer
    /// 0.2.x ones, or 0.1.0 to refuse every 0.2.x.
    #[arg(long, default_value = sextant_plugin::CONTRACT_VERSION, value_parser = sextant_plugin::Contract::parse)]
    pub(crate) plugin_contract: sextant_plugin::Contract,
    /// Seconds after which a service's plugin resource (0.2.0) that made no call is dropped;
    /// it is created again, with the current snapshot, when next needed.
    #[arg(long, default_value_t = 300)]
    pub(crate) plugin_idle_secs: u64,
    /// Entries a balancer's table (weights, ring, Maglev) may have; a larger one is refused at
    /// load, or at the update that returned it.
    #[arg(long, default_value_t = sextant_plugin::HostConfig::default().max_table_entries)]
    pub(crate) plugin_max_table_entries: usize,
    /// Entries per endpoint a ring or Maglev table may have.
    #[arg(long, default_value_t = sextant_plugin::HostConfig::default().max_table_entries_per_endpoint)]
    pub(crate) plugin_max_table_entries_per_endpoint: usize,
    /// Lines per second one plugin may write through host.log on this host; the excess is
    /// dropped and counted (plugin_log_dropped_lines_total).
    #[arg(long, default_value_t = sextant_plugin::HostConfig::default().log_lines_per_sec)]
    pub(crate) plugin_log_lines_per_sec: u32,
    /// Bytes per second one plugin may write through host.log on this host.
    #[arg(long, default_value_t = sextant_plugin::HostConfig::default().log_bytes_per_sec)]
    pub(crate) plugin_log_bytes_per_sec: u32,
}

impl PluginHostArgs {
    /// The plugin host's configuration.
    pub(crate) fn config(&self) -> sextant_plugin::HostConfig {
        let config = sextant_plugin::HostConfig {
            max_plugins: self.max_plugins.max(1),
            contract: self.plugin_contract,
            idle_resource: std::time::Duration::from_secs(self.plugin_idle_secs.max(1)),
            max_table_entries: self.plugin_max_table_entries,
            max_table_entries_per_endpoint: self.plugin_max_table_entries_per_endpoint,
            log_lines_per_sec: self.plugin_log_lines_per_sec,
            log_bytes_per_sec: self.plugin_log_bytes_per_sec,
            ..sextant_plugin::HostConfig::default()
        };
        if self.plugin_instances == 0 {
            config.sized(LEGACY_INSTANCES)
        } else {
            sextant_plugin::HostConfig { max_instances: self.plugin_instances, ..config }
        }
    }
}

/// Instances the sized pool keeps for 0.1.0 components.
const LEGACY_INSTANCES: u32 = 1000;

/// How to reach the servers (every client command takes these).
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Server QUIC addresses (repeat or comma-separate for failover).
    #[arg(
        global = true,
        long = "server",
        value_delimiter = ',',
        default_value = "127.0.0.1:7600",
        env = "SEXTANT_SERVER"
    )]
    servers: Vec<SocketAddr>,
    /// CA certificate that signed the server's certificate.
    #[arg(global = true, long, default_value = "./sextant-data/tls/ca.pem", env = "SEXTANT_CA")]
    ca: PathBuf,
    /// Name in the server's certificate.
    #[arg(global = true, long, default_value = "localhost")]
    server_name: String,
    /// Access token.
    #[arg(global = true, long, env = "SEXTANT_TOKEN")]
    token: Option<String>,
    /// Client certificate (mutual TLS).
    #[arg(global = true, long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client key (mutual TLS).
    #[arg(global = true, long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(global = true, long)]
    json: bool,
}

/// What a read command covers: a service, a namespace, a config entry, or everything.
#[derive(Debug, Args)]
pub(crate) struct ScopeArgs {
    /// One service: NAME or NS/GROUP/NAME.
    #[arg(long, conflicts_with_all = ["namespace", "config"])]
    service: Option<String>,
    /// One namespace.
    #[arg(long, conflicts_with = "config")]
    namespace: Option<String>,
    /// One config entry: DATA_ID or NS/GROUP/DATA_ID.
    #[arg(long)]
    config: Option<String>,
}

/// Who reads config entries, for gray release: the version a candidate's rule gives this
/// reader is the one served (without either flag: the whole entry, candidate included).
#[derive(Debug, Args, Default)]
pub(crate) struct ReaderArgs {
    /// Read as this reader id (what `ids=` rules list and `percent=` rules hash).
    #[arg(long)]
    reader_id: Option<String>,
    /// Read with this label, KEY=VALUE (repeatable; what label rules match).
    #[arg(long = "reader-label")]
    reader_labels: Vec<String>,
}

impl ReaderArgs {
    pub(crate) fn reader(&self) -> Result<Option<Reader>> {
        if self.reader_id.is_none() && self.reader_labels.is_empty() {
            return Ok(None);
        }
        let mut labels = std::collections::BTreeMap::new();
        for pair in &self.reader_labels {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Failure::new(5, format!("--reader-label {pair:?} is not KEY=VALUE")))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let reader = Reader { id: self.reader_id.clone(), labels };
        reader.validate()?;
        Ok(Some(reader))
    }
}

/// `sextant config ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print an entry's content (with --json: the entry; with --reader-*: as that reader is
    /// served it).
    Get {
        /// DATA_ID or NS/GROUP/DATA_ID.
        key: String,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// Write an entry from --content, --file or standard input.
    Put {
        /// DATA_ID or NS/GROUP/DATA_ID.
        key: String,
        /// The content.
        #[arg(long, conflicts_with = "file")]
        content: Option<String>,
        /// A file holding the content.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Write only over this version (the sha256 `config get --json` shows): refused
        /// (`conflict`, exit 1, nothing written) when someone changed the entry since.
        #[arg(long, conflicts_with = "beta")]
        replaces: Option<String>,
        /// Write a candidate instead (gray release): served to the readers --match names,
        /// the stable version to every other, until `config promote` or `config withdraw`.
        #[arg(long, requires = "rule")]
        beta: bool,
        /// Who the candidate is for: `LABEL=VALUE,...` (readers with every label),
        /// `ids=ID,...` or `percent=N` (1 to 99: readers whose id hashes below N).
        #[arg(long = "match", requires = "beta")]
        rule: Option<String>,
    },
    /// Make the candidate the version every reader is served.
    Promote {
        /// DATA_ID or NS/GROUP/DATA_ID.
        key: String,
        /// Only this candidate version (refused, exit 1, when the candidate is another).
        #[arg(long)]
        version: Option<String>,
    },
    /// Withdraw the candidate: every reader is served the stable version again.
    Withdraw {
        /// DATA_ID or NS/GROUP/DATA_ID.
        key: String,
    },
    /// Delete an entry.
    Delete {
        /// DATA_ID or NS/GROUP/DATA_ID.
        key: String,
    },
}

/// `sextant plugin ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// The plugin records in the store, the slots this server runs, recent failures.
    List,
    /// Validate a component and activate it where BINDING says (on every server of the store).
    Load {
        /// The component (`.wasm`, built for wasm32-wasip2 against `wit/`).
        file: PathBuf,
        /// Record name (default: the file name without `.wasm`).
        #[arg(long)]
        name: Option<String>,
        /// balancer, health or scheduler.
        #[arg(long, default_value = "balancer")]
        kind: String,
        /// NS/GROUP/NAME (a service), NS (a namespace), `*` (every service), or empty (stored only).
        #[arg(long = "bind", default_value = "")]
        binding: String,
        /// JSON configuration for the plugin's `init`.
        #[arg(long, default_value = "")]
        config: String,
        /// Then wait until this many other hosts (gateways) report running it; exit 5 as soon
        /// as one reports refusing it, 1 after --wait-secs.
        #[arg(long, default_value_t = 0)]
        wait: usize,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        /// Roll it out progressively instead of at once: a plan such as
        /// `shadow:2m,1%:2m,10%:5m,50%:5m` (steps of SHARE:DURATION, `shadow` routing
        /// nothing; criteria as NAME=VALUE items), or a file holding one. The record must
        /// exist: its current version is the stable one the candidate is compared with.
        #[arg(long)]
        rollout: Option<String>,
        /// Roll back when the candidate's error rate passes this many times the stable's.
        #[arg(long, requires = "rollout")]
        max_error_ratio: Option<f64>,
        /// Roll back when the candidate's p99 passes this many times the stable's.
        #[arg(long, requires = "rollout")]
        max_p99_ratio: Option<f64>,
        /// Candidate requests a step needs before its ratios count and it may advance.
        #[arg(long, requires = "rollout")]
        min_requests: Option<u64>,
        /// Roll back when the candidate has more fallbacks (faults) than this.
        #[arg(long, requires = "rollout")]
        max_fallbacks: Option<u64>,
    },
    /// A progressive rollout: where it is, and steer it.
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        action: RolloutVerb,
        /// Record name.
        name: String,
    },
    /// Go back to the version a plugin record replaced (the current one is kept: roll
    /// forward with `--forward`).
    Rollback {
        /// Record name.
        name: String,
        /// Return to the version the last rollback left instead.
        #[arg(long)]
        forward: bool,
    },
    /// Delete a plugin record (its services go back to the next binding or the default).
    Delete {
        /// Record name.
        name: String,
    },
    /// Write a plugin project that builds with one command (its README says which) and
    /// loads as it is. Needs no server.
    New {
        /// The plugin's name: lowercase letters, digits and `-` (also the crate or package
        /// name and the component's file name).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// The plugin kind.
        #[arg(long, value_enum, default_value = "balancer")]
        kind: Kind,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// What `sextant plugin rollout` does.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RolloutVerb {
    /// The step, the shares, both versions' figures per gateway, the last decisions.
    Status,
    /// Hold it at its step.
    Pause,
    /// Go on from where it was paused.
    Resume,
    /// Go to the next step now (after the last: the candidate becomes the version).
    Promote,
    /// Stop it: the stable version serves everywhere.
    Abort,
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self { message: message.into(), code }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(2, message)
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(1, message)
    }

    /// A plugin refused or that did not run (exit code 5).
    pub(crate) fn plugin(message: impl Into<String>) -> Self {
        Self::new(5, message)
    }

    pub(crate) fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<sextant_server::ServeError> for Failure {
    fn from(e: sextant_server::ServeError) -> Self {
        // An open door refused is a usage matter: the command line must change.
        let code = if matches!(e, sextant_server::ServeError::OpenDoor { .. }) { 2 } else { 1 };
        Self::new(code, e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable(_) => 4,
            ClientError::Server { code: ErrorCode::NotFound | ErrorCode::LeaseNotFound, .. } => 3,
            ClientError::Server {
                code:
                    ErrorCode::Unauthenticated
                    | ErrorCode::Forbidden
                    | ErrorCode::Invalid
                    | ErrorCode::PluginRejected
                    | ErrorCode::Limited
                    | ErrorCode::UnsupportedVersion,
                ..
            } => 5,
            _ => 1,
        };
        Self::new(code, e.to_string())
    }
}

impl From<sextant_core::ValidationError> for Failure {
    fn from(e: sextant_core::ValidationError) -> Self {
        Self::new(5, e.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, Failure>;

pub(crate) fn client_options(args: &ClientArgs) -> ClientOptions {
    let mut o = ClientOptions::new(args.servers.clone(), args.ca.clone());
    o.server_name.clone_from(&args.server_name);
    o.token.clone_from(&args.token);
    o.client_cert = args.client_cert.clone().zip(args.client_key.clone());
    o.name = "sextant-cli".into();
    o
}

async fn connect(args: &ClientArgs) -> Result<Client> {
    Ok(Client::connect(client_options(args)).await?)
}

pub(crate) fn out(line: &str) -> Result {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).map_err(|e| Failure::new(1, format!("stdout: {e}")))
}

fn scope(args: &ScopeArgs) -> Result<Scope> {
    Ok(match (&args.service, &args.namespace, &args.config) {
        (Some(s), _, _) => Scope::Service(ServiceKey::parse(s)?),
        (_, Some(ns), _) => Scope::Namespace(Namespace::new(ns.as_str())?),
        (_, _, Some(c)) => Scope::Config(ConfigKey::parse(c)?),
        _ => Scope::All,
    })
}

/// What `register` registers.
#[derive(Debug)]
pub(crate) struct RegisterSpec {
    pub(crate) service: String,
    pub(crate) addr: SocketAddr,
    pub(crate) id: Option<String>,
    pub(crate) weight: u32,
    pub(crate) meta: Vec<String>,
    pub(crate) zone: String,
    pub(crate) version: String,
    pub(crate) persistent: bool,
    pub(crate) ttl: Option<u64>,
}

pub(crate) async fn register(args: &ClientArgs, spec: RegisterSpec) -> Result {
    let mut instance = Instance::new(ServiceKey::parse(&spec.service)?, spec.addr.ip(), spec.addr.port());
    if let Some(id) = spec.id {
        instance.id = InstanceId::new(id)?;
    }
    instance.weight = spec.weight;
    instance.zone = spec.zone;
    instance.version = spec.version;
    let mut metadata = BTreeMap::new();
    for kv in spec.meta {
        let (k, v) = kv.split_once('=').ok_or_else(|| Failure::new(2, format!("--meta {kv:?} is not K=V")))?;
        metadata.insert(k.to_owned(), v.to_owned());
    }
    instance.metadata = metadata.into();
    instance.validate()?;
    let binding = match (spec.persistent, spec.ttl) {
        (true, _) => Binding::Persistent,
        (false, Some(secs)) => Binding::Ttl { ttl_ms: secs.saturating_mul(1000) },
        (false, None) => Binding::Connection,
    };
    let key = instance.key();
    let client = connect(args).await?;
    let (revision, lease) = client.register(instance, binding).await?;
    out(&json!({ "registered": key.to_string(), "revision": revision, "lease": lease }).to_string())?;
    if binding == Binding::Persistent {
        return Ok(());
    }
    // Ephemeral: stay until told to stop, re-registering after reconnects, then leave.
    crate::shutdown_signal().await;
    let revision = client.deregister(&key).await?;
    out(&json!({ "deregistered": key.to_string(), "revision": revision }).to_string())
}

pub(crate) async fn deregister(args: &ClientArgs, service: &str, id: &str) -> Result {
    let key = InstanceKey { service: ServiceKey::parse(service)?, id: InstanceId::new(id)? };
    let revision = connect(args).await?.deregister(&key).await?;
    out(&json!({ "deregistered": key.to_string(), "revision": revision }).to_string())
}

fn describe(record: &Record) -> String {
    match record {
        Record::Instance(i) => format!(
            "instance {}/{} {}:{} weight={} healthy={} enabled={} {}{}",
            i.service,
            i.id,
            i.ip,
            i.port,
            i.weight,
            i.healthy,
            i.enabled,
            if i.ephemeral { "ephemeral" } else { "persistent" },
            if i.zone.is_empty() { String::new() } else { format!(" zone={}", i.zone) }
        ),
        Record::Service(s) => format!("service {} protect_threshold={}", s.service, s.protect_threshold),
        Record::Config(c) => format!("config {} version={}", c.key, &c.version[..12]),
        Record::Plugin(p) => format!("plugin {} kind={} version={} sha256={}", p.name, p.kind, p.version(), p.sha256),
    }
}

/// Instances and healthy instances per zone (`""`: instances without one).
fn zone_counts(records: &[Record]) -> BTreeMap<String, (usize, usize)> {
    let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in records {
        if let Record::Instance(i) = r {
            let z = zones.entry(i.zone.clone()).or_default();
            z.0 += 1;
            z.1 += usize::from(i.healthy && i.enabled);
        }
    }
    zones
}

pub(crate) async fn list(args: &ClientArgs, scope_args: &ScopeArgs, zone: Option<&str>) -> Result {
    let scope = scope(scope_args)?;
    if let Some(e) = zone.filter(|z| !z.is_empty()).and_then(sextant_plugin::builtins::zone_name_error) {
        return Err(Failure::usage(format!("--zone: {e}")));
    }
    match connect(args).await?.request(Request::List { scope }).await? {
        Response::Records { revision, mut records, stale_ms } => {
            if let Some(zone) = zone {
                records.retain(|r| matches!(r, Record::Instance(i) if i.zone == zone));
            }
            let zones = zone_counts(&records);
            if args.json {
                let zones: serde_json::Map<String, serde_json::Value> = zones
                    .iter()
                    .map(|(z, (n, healthy))| (z.clone(), json!({"instances": n, "healthy": healthy})))
                    .collect();
                return out(&json!({ "revision": revision, "records": records, "stale_ms": stale_ms, "zones": zones })
                    .to_string());
            }
            for r in &records {
                out(&describe(r))?;
            }
            if !zones.is_empty() {
                let each: Vec<String> = zones
                    .iter()
                    .map(|(z, (n, healthy))| {
                        format!("{} {n} ({healthy} healthy)", if z.is_empty() { "(no zone)" } else { z })
                    })
                    .collect();
                out(&format!("# zones: {}", each.join(", ")))?;
            }
            let stale = stale_ms.map(|ms| format!(" (stale: the store has been unreachable for {ms} ms)"));
            out(&format!("# revision {revision}, {} records{}", records.len(), stale.unwrap_or_default()))
        }
        other => Err(Failure::new(1, format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn watch(
    args: &ClientArgs,
    scope_args: &ScopeArgs,
    reader: &ReaderArgs,
    cache: Option<PathBuf>,
) -> Result {
    let scope = scope(scope_args)?;
    let mut options = client_options(args);
    options.cache_dir = cache;
    options.reader = reader.reader()?;
    let client = Client::new(options).map_err(Failure::from)?;
    let mut watch = client.watch(scope);
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            item = watch.next() => match item {
                Some(Ok(item)) => {
                    let mut line = serde_json::to_value(&item.event).map_err(|e| Failure::new(1, e.to_string()))?;
                    if let Some(age) = item.stale {
                        line["stale_ms"] = json!(age.as_millis());
                    }
                    if let sextant_proto::client::Applied::Held(services) = &item.applied {
                        line["held"] = json!(services.iter().map(ToString::to_string).collect::<Vec<_>>());
                    }
                    out(&line.to_string())?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            () = &mut stop => return Ok(()),
        }
    }
}

pub(crate) async fn pick(
    args: &ClientArgs,
    service: &str,
    hash_key: Option<String>,
    headers: &[String],
    tried: Vec<String>,
) -> Result {
    let service = ServiceKey::parse(service)?;
    let headers = headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) => Ok((k.to_ascii_lowercase(), v.to_owned())),
            None => Err(Failure::new(2, format!("--header {h:?} is not NAME=VALUE"))),
        })
        .collect::<Result<Vec<_>>>()?;
    match connect(args).await?.request(Request::Pick { service: service.clone(), hash_key, headers, tried }).await? {
        Response::Picked { instance: Some(i), protection_active } => {
            if args.json {
                out(&json!({ "instance": i, "protection_active": protection_active }).to_string())
            } else {
                out(&std::net::SocketAddr::new(i.ip, i.port).to_string())
            }
        }
        Response::Picked { instance: None, .. } => {
            Err(Failure::new(3, format!("no instance of {service} can take traffic")))
        }
        other => Err(Failure::new(1, format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn config(args: &ClientArgs, command: ConfigCommand) -> Result {
    let client = connect(args).await?;
    match command {
        ConfigCommand::Get { key, reader } => {
            let key = ConfigKey::parse(&key)?;
            match client.request(Request::ConfigGet { key: key.clone(), reader: reader.reader()? }).await? {
                Response::Config { entry: Some(e) } if args.json => out(&json!(e).to_string()),
                Response::Config { entry: Some(e) } => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(e.content.as_bytes()).map_err(|e| Failure::new(1, e.to_string()))
                }
                Response::Config { entry: None } => Err(Failure::new(3, format!("config {key} not found"))),
                other => Err(Failure::new(1, format!("unexpected answer {other:?}"))),
            }
        }
        ConfigCommand::Put { key, content, file, replaces, beta, rule } => {
            let content = match (content, file) {
                (Some(c), _) => c,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).map_err(|e| Failure::new(1, format!("{}: {e}", f.display())))?
                }
                (None, None) => {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| Failure::new(1, format!("stdin: {e}")))?
                }
            };
            let key = ConfigKey::parse(&key)?;
            let request = match (beta, rule) {
                (true, Some(rule)) => Request::ConfigBeta { key, content, rule: rule.parse()? },
                _ => Request::ConfigPut { key, content, replaces },
            };
            written_version(client.request(request).await?)
        }
        ConfigCommand::Promote { key, version } => {
            written_version(client.request(Request::ConfigPromote { key: ConfigKey::parse(&key)?, version }).await?)
        }
        ConfigCommand::Withdraw { key } => {
            written_version(client.request(Request::ConfigWithdraw { key: ConfigKey::parse(&key)? }).await?)
        }
        ConfigCommand::Delete { key } => {
            match client.request(Request::ConfigDelete { key: ConfigKey::parse(&key)? }).await? {
                Response::Written { revision, .. } => out(&json!({ "revision": revision }).to_string()),
                other => Err(Failure::new(1, format!("unexpected answer {other:?}"))),
            }
        }
    }
}

/// A config write's answer: `{"revision": R, "version": SHA256}`.
fn written_version(answer: Response) -> Result {
    match answer {
        Response::Written { revision, version, .. } => {
            out(&json!({ "revision": revision, "version": version }).to_string())
        }
        other => Err(Failure::new(1, format!("unexpected answer {other:?}"))),
    }
}

/// `sextant plugin new`: needs no server.
fn new_project(name: &str, lang: Lang, kind: Kind, dir: Option<PathBuf>) -> Result {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = sextant_server::template::write(&dir, name, lang, kind).map_err(|e| Failure::new(2, e.to_string()))?;
    out(&format!(
        "wrote {} files into {}; build it as {} says",
        files.len(),
        dir.display(),
        dir.join("README.md").display()
    ))
}

/// Slots `plugin list` prints one by one; more are summed up per binding.
const SLOTS_LISTED: usize = 50;

pub(crate) async fn plugin(args: &ClientArgs, command: PluginCommand) -> Result {
    if let PluginCommand::New { name, lang, kind, dir } = command {
        return new_project(&name, lang, kind, dir);
    }
    let client = connect(args).await?;
    let unexpected = |other: Response| Err(Failure::new(1, format!("unexpected answer {other:?}")));
    match command {
        PluginCommand::List => match client.request(Request::PluginList).await? {
            Response::Plugins { plugins, slots, hosts, failures, bindings, rollouts } => {
                if args.json {
                    return out(&json!({
                        "plugins": plugins, "slots": slots, "hosts": hosts, "failures": failures, "bindings": bindings,
                        "rollouts": rollouts,
                    })
                    .to_string());
                }
                for p in &plugins {
                    let mut line = describe(&Record::Plugin(p.clone()));
                    line.push_str(&format!(
                        " bound={:?} history={} forward={}",
                        p.binding,
                        p.history.len(),
                        p.forward.len()
                    ));
                    if p.bad_reason(&p.sha256).is_some() {
                        line.push_str(" inactive (current version marked bad)");
                    }
                    out(&line)?;
                    if let Some(r) = &p.rollout {
                        let last = r
                            .log
                            .last()
                            .map_or(String::new(), |d| format!("; last: {} by {}: {}", d.state, d.by, d.reason));
                        out(&format!(
                            "  rollout {} of {} at step {}/{} ({}){last}",
                            r.state,
                            sextant_core::version_label(&r.candidate.sha256, &r.candidate.config),
                            r.step + 1,
                            r.plan.steps.len(),
                            r.current_step()
                        ))?;
                    }
                    for b in &p.bad {
                        out(&format!("  bad {}: {}", &b.sha256[..12.min(b.sha256.len())], b.reason))?;
                    }
                }
                for b in &bindings {
                    let failed: u64 = b.failed.iter().map(|f| f.services).sum();
                    let contract = b.contract.as_deref().map_or(String::new(), |c| format!(" contract={c}"));
                    out(&format!(
                        "binding {} {} {} ({}): hosts {} running, {} other; this server {} services, {} running, {failed} failed{contract} instances={} resources={} replaced={} lost={}",
                        b.plugin,
                        b.kind,
                        b.binding,
                        b.version,
                        b.hosts_running,
                        b.hosts_other,
                        b.services,
                        b.running,
                        b.instances,
                        b.resources,
                        b.replaced,
                        b.lost
                    ))?;
                    for f in &b.failed {
                        out(&format!(
                            "  failed on {} services (e.g. {}): {}",
                            f.services,
                            f.examples.join(", "),
                            f.reason
                        ))?;
                    }
                }
                // Every slot at a glance while there are few; beyond that the summaries above
                // say it (`--json` lists them all).
                let shown = if slots.len() <= SLOTS_LISTED { slots.len() } else { 0 };
                if shown < slots.len() {
                    out(&format!("{} slots (listed with --json)", slots.len()))?;
                }
                for s in &slots[..shown] {
                    let sha =
                        s.sha256.as_deref().map_or(String::new(), |h| format!(" sha256={}", &h[..12.min(h.len())]));
                    out(&format!(
                        "slot {} {} {} ({}{sha}) v{} calls={} traps={} deadline_hits={} fallbacks={} p50={}ns p99={}ns",
                        s.service,
                        s.kind,
                        s.plugin,
                        s.source,
                        s.version,
                        s.counts.calls,
                        s.counts.traps,
                        s.counts.deadline_hits,
                        s.counts.fallbacks,
                        s.call_p50_ns,
                        s.call_p99_ns
                    ))?;
                }
                for h in &hosts {
                    out(&format!("host {} plugin {}: {}", h.host, h.plugin, h.state))?;
                }
                for f in &failures {
                    out(&format!("failed {} ({}): {}", f.plugin, f.source, f.error))?;
                }
                Ok(())
            }
            other => unexpected(other),
        },
        PluginCommand::Load {
            file,
            name,
            kind,
            binding,
            config,
            wait,
            wait_secs,
            rollout,
            max_error_ratio,
            max_p99_ratio,
            min_requests,
            max_fallbacks,
        } => {
            let rollout = match rollout {
                None => None,
                Some(plan) => {
                    // A file holding a plan, or the plan itself.
                    let mut text = match std::fs::read_to_string(&plan) {
                        Ok(t) if std::path::Path::new(&plan).is_file() => t,
                        _ => plan,
                    };
                    let criteria = [
                        ("max-error-ratio", max_error_ratio.map(|v| v.to_string())),
                        ("max-p99-ratio", max_p99_ratio.map(|v| v.to_string())),
                        ("min-requests", min_requests.map(|v| v.to_string())),
                        ("max-fallbacks", max_fallbacks.map(|v| v.to_string())),
                    ];
                    for (criterion, value) in criteria {
                        if let Some(v) = value {
                            text.push_str(&format!("\n{criterion}={v}"));
                        }
                    }
                    // Refused here with the rule it breaks, before the component travels.
                    text.parse::<sextant_core::rollout::Plan>()
                        .map_err(|e| Failure::usage(format!("--rollout: {e}")))?;
                    Some(text)
                }
            };
            let bytes = std::fs::read(&file).map_err(|e| Failure::new(1, format!("{}: {e}", file.display())))?;
            let name = match name {
                Some(n) => n,
                None => file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            if bytes.len() > sextant_proto::MAX_COMPONENT_LEN {
                return Err(Failure::new(
                    5,
                    format!(
                        "{} is {} bytes, the limit is {}",
                        file.display(),
                        bytes.len(),
                        sextant_proto::MAX_COMPONENT_LEN
                    ),
                ));
            }
            let name = PluginName::new(name)?;
            // Small components travel in the request; larger ones in chunks first.
            let (component, component_sha256) = if bytes.len() <= sextant_proto::ARTIFACT_CHUNK {
                (sextant_proto::encode_component(&bytes), None)
            } else {
                (String::new(), Some(client.upload_component(&bytes).await?))
            };
            let request = Request::PluginLoad { name, kind, binding, config, component, component_sha256, rollout };
            let (record, revision, validated) = match client.request(request).await? {
                Response::PluginWritten { record, revision, validated } => (record, revision, validated),
                other => return unexpected(other),
            };
            plugin_written(args, &record, revision, validated.as_ref())?;
            if wait > 0 {
                wait_for_hosts(&client, &record, wait, Duration::from_secs(wait_secs)).await?;
            }
            Ok(())
        }
        PluginCommand::Rollback { name, forward } => {
            match client.request(Request::PluginRollback { name: PluginName::new(name)?, forward }).await? {
                Response::PluginWritten { record, revision, .. } => plugin_written(args, &record, revision, None),
                other => unexpected(other),
            }
        }
        PluginCommand::Rollout { action, name } => {
            let name = PluginName::new(name)?;
            let action = match action {
                RolloutVerb::Status => return rollout_status(args, &client, &name).await,
                RolloutVerb::Pause => RolloutAction::Pause,
                RolloutVerb::Resume => RolloutAction::Resume,
                RolloutVerb::Promote => RolloutAction::Promote,
                RolloutVerb::Abort => RolloutAction::Abort,
            };
            match client.request(Request::PluginRollout { name: name.clone(), action }).await? {
                Response::PluginWritten { record, revision, .. } => {
                    if args.json {
                        return out(&json!({ "record": record, "revision": revision }).to_string());
                    }
                    match &record.rollout {
                        Some(r) => out(&format!(
                            "{} rollout {} at step {}/{} (revision {})",
                            name,
                            r.state,
                            r.step + 1,
                            r.plan.steps.len(),
                            revision.0
                        )),
                        None => out(&format!("{name} written at revision {}", revision.0)),
                    }
                }
                other => unexpected(other),
            }
        }
        PluginCommand::Delete { name } => {
            match client.request(Request::PluginDelete { name: PluginName::new(name)? }).await? {
                Response::Written { revision, .. } => out(&json!({ "revision": revision }).to_string()),
                other => unexpected(other),
            }
        }
        PluginCommand::New { name, lang, kind, dir } => new_project(&name, lang, kind, dir),
    }
}

/// `sextant plugin rollout status NAME`: the rollout in the record, and what each gateway
/// reports about its current step, both versions side by side.
async fn rollout_status(args: &ClientArgs, client: &Client, name: &PluginName) -> Result {
    use sextant_core::rollout::Verdict;
    let (plugins, reports) = match client.request(Request::PluginList).await? {
        Response::Plugins { plugins, rollouts, .. } => (plugins, rollouts),
        other => return Err(Failure::other(format!("unexpected answer {other:?}"))),
    };
    let record =
        plugins.iter().find(|p| &p.name == name).ok_or_else(|| Failure::new(3, format!("no plugin named {name}")))?;
    let rollout = record.rollout.as_ref().ok_or_else(|| Failure::new(3, format!("plugin {name} has no rollout")))?;
    let reports: Vec<_> = reports.iter().filter(|r| r.plugin == name.as_str()).collect();
    if args.json {
        return out(&json!({ "record": record.name, "stable": record.sha256, "rollout": rollout, "reports": reports })
            .to_string());
    }
    let step = rollout.current_step();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let now_ms = u64::try_from(now).unwrap_or(u64::MAX);
    let held = now_ms.saturating_sub(rollout.step_since_unix_ms) / 1000;
    out(&format!(
        "{name}: {} at step {}/{} ({step}), held {held} s; candidate {} over stable {}",
        rollout.state,
        rollout.step + 1,
        rollout.plan.steps.len(),
        sextant_core::version_label(&rollout.candidate.sha256, &rollout.candidate.config),
        record.version(),
    ))?;
    let c = &rollout.plan.criteria;
    out(&format!(
        "  plan {} criteria max-error-ratio={} max-p99-ratio={} min-requests={} max-fallbacks={} error-slack={} p99-slack-ms={}",
        rollout.plan,
        c.max_error_ratio,
        c.max_p99_ratio,
        c.min_requests,
        c.max_fallbacks,
        c.error_slack,
        c.p99_slack_ms
    ))?;
    for r in &reports {
        let about = if r.report.is_about(rollout) { "" } else { " (another step or candidate: not counted)" };
        let agreement = match (r.report.agreed, r.report.candidate_window.requests) {
            (Some(agreed), calls) if calls > 0 => format!(", agreement {:.1}%", 100.0 * agreed as f64 / calls as f64),
            _ => String::new(),
        };
        match &r.report.refused {
            Some(why) => out(&format!("  gateway {}: refused the candidate: {why}", r.host))?,
            None => out(&format!(
                "  gateway {}{about}: stable {} | candidate {}{agreement}",
                r.host,
                r.report.stable.figures(),
                r.report.candidate_window.figures()
            ))?,
        }
    }
    if reports.is_empty() {
        out("  no gateway reports yet")?;
    }
    // What the judge would decide now, on these reports.
    if rollout.state.is_live() {
        let counted: Vec<_> = reports
            .iter()
            .filter(|r| r.report.is_about(rollout))
            .map(|r| r.report.clone().for_judge(r.host.clone()))
            .collect();
        let verdict = match rollout.judge(&counted, now_ms) {
            Verdict::Wait(why) => format!("wait: {why}"),
            Verdict::Advance(_) => "advance".to_owned(),
            Verdict::RollBack(e) => format!("roll back: {}", e.failed.join("; ")),
            Verdict::Pause(why) => format!("pause: {why}"),
        };
        out(&format!("  the judge now: {verdict}"))?;
    }
    for d in rollout.log.iter().rev().take(5) {
        out(&format!("  decision at step {}: {} by {}: {}", d.step + 1, d.state, d.by, d.reason))?;
    }
    Ok(())
}

/// Waits until `n` hosts report running `record`'s version (`active VERSION`); fails at once
/// when one reports refusing it.
async fn wait_for_hosts(client: &Client, record: &PluginRecord, n: usize, limit: Duration) -> Result {
    let version = record.version();
    let active = format!("active {version}");
    let failed = format!("failed {version}:");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let hosts = match client.request(Request::PluginList).await? {
            Response::Plugins { hosts, .. } => hosts,
            other => return Err(Failure::other(format!("unexpected answer {other:?}"))),
        };
        let mine: Vec<_> = hosts.iter().filter(|h| h.plugin == record.name.as_str()).collect();
        if let Some(h) = mine.iter().find(|h| h.state.starts_with(&failed)) {
            return Err(Failure::new(5, format!("host {} refused {}: {}", h.host, record.name, h.state)));
        }
        let running = mine.iter().filter(|h| h.state == active).count();
        if running >= n {
            return out(&format!("{running} hosts run {} {version}", record.name));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::other(format!(
                "{running} of {n} hosts run {} {version} after {} s",
                record.name,
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn plugin_written(
    args: &ClientArgs,
    record: &PluginRecord,
    revision: Revision,
    validated: Option<&Validation>,
) -> Result {
    if args.json {
        return out(&json!({ "record": record, "revision": revision, "validated": validated }).to_string());
    }
    out(&format!(
        "{} {} sha256={} bound to {:?} at revision {revision}",
        record.name, record.kind, record.sha256, record.binding
    ))?;
    match validated {
        None => Ok(()),
        Some(v) if v.services.is_empty() => {
            out("validated on a synthetic snapshot only: the binding covers no service with instances on this server")
        }
        Some(v) => {
            let sample = if (v.services.len() as u64) < v.covered {
                format!(
                    "{} of the {} services the binding covers on this server (a sample: the others are checked as each host activates it)",
                    v.services.len(),
                    v.covered
                )
            } else {
                format!("the {} services the binding covers on this server", v.covered)
            };
            out(&format!("validated on the live snapshots of {sample}: {}", v.services.join(", ")))
        }
    }
}
