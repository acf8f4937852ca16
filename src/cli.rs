//! Command line, as DESIGN.md fixes it: `serve`, `translate`, `validate` (and meshd's own
//! additions: `explain`, `status`, `crds`, `kube-inject`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "meshd",
    version,
    about = "A drop-in replacement for Istio's control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every command that reads configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Directory of Kubernetes manifests (repeatable; nested folders are read).
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
    /// Namespace of objects that name none (kubectl's default).
    #[arg(long, default_value = "default")]
    pub default_namespace: String,
    /// Kubernetes DNS domain suffix.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Namespace meshd runs in; the `istio` mesh ConfigMap is read from here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub istio_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Envoy's /config_dump JSON.
    ConfigDump,
    /// A complete static Envoy bootstrap.
    Bootstrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InterceptionArg {
    #[value(name = "REDIRECT")]
    Redirect,
    #[value(name = "TPROXY")]
    Tproxy,
    #[value(name = "NONE")]
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve xDS to proxies (ADS on 15010), with debug endpoints (8080) and metrics (15014).
    Serve(Box<ServeArgs>),
    /// Print what a proxy with NODE_ID would receive.
    Translate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Envoy node id: TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
        #[arg(long = "proxy", value_name = "NODE_ID")]
        proxy: String,
        /// Workload label (repeatable), as istio-proxy sends in LABELS.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Node metadata entry (repeatable), e.g. ISTIO_VERSION=1.31.0.
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// How traffic reaches the proxy (istio's INTERCEPTION_MODE).
        #[arg(long, value_enum, default_value = "REDIRECT")]
        interception: InterceptionArg,
        #[arg(long, value_enum, default_value = "config-dump")]
        format: Format,
        /// Admin port of the generated bootstrap.
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// Translate as for a proxy that gets its certificate (connected on 15012, or
        /// istio-proxy): mTLS is configured.
        #[arg(long)]
        mtls: bool,
    },
    /// Which listener, filter chain, route and cluster a request reaches through a proxy,
    /// which Istio objects made each step, and the nearest miss when nothing matched.
    Explain(Box<ExplainArgs>),
    /// Print Istio's CustomResourceDefinitions (what crds/crd-all.gen.yaml holds).
    Crds {
        /// The Kubernetes Gateway API's instead (crds/gateway-api.gen.yaml).
        #[arg(long, conflicts_with = "meshd")]
        gateway_api: bool,
        /// meshd's own kinds instead (RateLimitPolicy; crds/meshd.gen.yaml).
        #[arg(long)]
        meshd: bool,
    },
    /// Inject the sidecar into workloads in a file, offline (like `istioctl kube-inject`).
    #[command(name = "kube-inject")]
    KubeInject {
        /// Manifests to inject (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The `istio-sidecar-injector` ConfigMap (or its bare `config`).
        #[arg(long = "injectConfigFile")]
        inject_config_file: Option<PathBuf>,
        /// The `istio` ConfigMap (or bare mesh config).
        #[arg(long = "meshConfigFile")]
        mesh_config_file: Option<PathBuf>,
        /// Helm values (the ConfigMap's `values`), JSON or YAML.
        #[arg(long = "valuesFile")]
        values_file: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Inject istio-proxy as a regular container, not a native sidecar (clusters
        /// older than Kubernetes 1.29).
        #[arg(long)]
        no_native_sidecars: bool,
    },
    /// Print the status of every Gateway API object (the conditions meshd would write
    /// in Kubernetes mode), as a YAML or JSON list.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: StatusFormat,
    },
    /// Print every diagnostic; exit status 1 if any is an error.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print diagnostics as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address every server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: String,
    /// Plaintext gRPC (ADS).
    #[arg(long, default_value_t = 15010)]
    pub grpc_port: u16,
    /// HTTP /ready and /debug/*.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Prometheus /metrics, /version and /debug/*.
    #[arg(long, default_value_t = 15014)]
    pub monitoring_port: u16,
    /// TLS gRPC: the CA (IstioCertificateService) and ADS with SDS for authenticated proxies.
    #[arg(long, default_value_t = 15012)]
    pub secure_grpc_port: u16,
    /// HTTPS admission webhooks: /inject (sidecar injection) and /validate.
    #[arg(long, default_value_t = 15017)]
    pub webhook_port: u16,
    /// Inject istio-proxy as a native sidecar (init container with restartPolicy Always):
    /// true, false, or auto (Kubernetes 1.33 or newer; always in file mode).
    #[arg(long, env = "ENABLE_NATIVE_SIDECARS", default_value = "auto")]
    pub native_sidecars: String,
    /// Where the self-signed root is kept (created on first start) and the root
    /// certificate is published (`root-cert.pem`).
    #[arg(long, default_value = ".meshd/ca")]
    pub ca_dir: std::path::PathBuf,
    /// A plugged-in intermediate CA in istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem), instead of the self-signed root.
    #[arg(long)]
    pub cacerts: Option<std::path::PathBuf>,
    /// JWKS whose keys sign the service-account tokens proxies present (file mode).
    #[arg(long)]
    pub ca_jwks: Option<std::path::PathBuf>,
    /// Lifetime of workload certificates (maximum 90 days).
    #[arg(long, default_value = "24h")]
    pub workload_cert_ttl: String,
    /// DNS names of meshd's own serving certificate on the TLS port.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "istiod.istio-system.svc,istiod.istio-system.svc.cluster.local,istiod-remote.istio-system.svc,meshd.istio-system.svc,localhost"
    )]
    pub serving_dns: Vec<String>,
    /// Watch the cluster this kubeconfig points at (in a pod, the in-cluster
    /// configuration is used without this flag).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Control-plane revision (istio.io/rev): Istio objects labelled for another
    /// revision are skipped.
    #[arg(long, env = "REVISION", default_value = "")]
    pub revision: String,
    /// Write a `Reconciled` condition into the status of Istio objects (Kubernetes mode;
    /// istiod's PILOT_ENABLE_STATUS, off by default as there).
    #[arg(long, env = "PILOT_ENABLE_STATUS")]
    pub write_status: bool,
    /// This replica's name in leader election (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Quiet time before a burst of changes is pushed (e.g. 100ms, 0s). Endpoint-only
    /// changes (pods coming and going) are pushed without it.
    #[arg(long, default_value = "100ms")]
    pub debounce: String,
    /// How many proxies may have unanswered responses at once (istiod's
    /// PILOT_PUSH_THROTTLE): bounds the memory of pushes to slow proxies.
    #[arg(long, default_value_t = crate::xds::state::DEFAULT_PUSH_SLOTS)]
    pub push_concurrency: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Envoy node id: TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
    #[arg(long = "proxy", value_name = "NODE_ID")]
    pub proxy: String,
    /// Workload label (repeatable), as istio-proxy sends in LABELS.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Node metadata entry (repeatable), e.g. ISTIO_VERSION=1.31.0.
    #[arg(long = "meta", value_name = "K=V")]
    pub meta: Vec<String>,
    /// How the request reaches the proxy: outbound (captured to 15001; sidecars' default),
    /// inbound (captured to 15006) or gateway (no capture; routers' default).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Destination address (default 1.3.3.7, as istiod's simulator).
    #[arg(long)]
    pub address: Option<String>,
    /// Destination port.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: ProtocolArg,
    #[arg(long, value_enum, default_value = "plaintext")]
    pub tls: TlsArg,
    /// ALPN offered in the TLS handshake (default by protocol under tls/mtls).
    #[arg(long)]
    pub alpn: Option<String>,
    /// SNI (default: the host, under tls).
    #[arg(long)]
    pub sni: Option<String>,
    /// Host header.
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    /// Request header `Name: value` (repeatable).
    #[arg(short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The caller's identity under mTLS (`spiffe://cluster.local/ns/NS/sa/SA`), for
    /// AuthorizationPolicies; unknown when not given.
    #[arg(long)]
    pub principal: Option<String>,
    /// One JSON object per call.
    #[arg(long)]
    pub json: bool,
    /// A YAML list of calls (the flag names as keys, plus `name`), answered as JSON lines
    /// from one translation.
    #[arg(long, value_name = "FILE")]
    pub calls: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Outbound,
    Inbound,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Http,
    Http2,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    Plaintext,
    Tls,
    Mtls,
}
