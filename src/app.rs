//! Wiring: builds the components for each command, spawns tasks, drains on shutdown.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cli::{Cli, Command, ConfigArgs, Format, InterceptionArg};
use crate::model::istio::Duration as IstioDuration;
use crate::model::proxy::Proxy;
use crate::model::snapshot::Snapshot;
use crate::sources::file::FileSource;
use crate::translate;

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            // The blocking pool runs the snapshot builder and publishes (translation has
            // its own CPU pool, xds::cpu). Each blocking thread idles for the keep-alive,
            // with an allocator heap of its own: with tokio's defaults (512 threads, 10 s)
            // a steady stream of pushes once kept about 30 extra threads alive (250 MB
            // RSS for a 50-service mesh), so a few spare threads and 1 s are enough.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(4 * cores + 8)
                .thread_keep_alive(std::time::Duration::from_secs(1))
                .build()
                .context("starting the async runtime")?;
            rt.block_on(crate::server::serve(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Translate {
            config,
            proxy,
            labels,
            meta,
            interception,
            format,
            admin_port,
            mtls,
        } => {
            let snap = load_snapshot(&config)?;
            let proxy = cli_proxy(&proxy, &labels, &meta, interception, mtls)?;
            let res = translate::generate(&snap, &proxy);
            let out = match format {
                Format::ConfigDump => {
                    translate::output::config_dump(&res, &format!("{}", snap.generation))
                }
                Format::Bootstrap => translate::output::bootstrap(&proxy, &res, admin_port),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            for d in snap.diagnostics.iter().filter(|d| d.is_error()) {
                eprintln!("{d}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::KubeInject {
            file,
            inject_config_file,
            mesh_config_file,
            values_file,
            output,
            no_native_sidecars,
        } => {
            let mut settings = crate::inject::settings_from_files(
                inject_config_file.as_deref(),
                mesh_config_file.as_deref(),
                values_file.as_deref(),
            )?;
            settings.native_sidecars = !no_native_sidecars;
            let input = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let out = crate::inject::kubeinject::kube_inject(&settings, &input)
                .map_err(anyhow::Error::msg)?;
            match output {
                Some(p) => {
                    std::fs::write(&p, out).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{out}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { gateway_api, meshd } => {
            if gateway_api {
                print!("{}", crate::crds::gateway_api::yaml());
            } else if meshd {
                print!("{}", crate::crds::meshd_yaml());
            } else {
                print!("{}", crate::crds::yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) => explain(*args),
        Command::Status { config, output } => {
            let snap = load_snapshot(&config)?;
            let items: Vec<serde_json::Value> = snap
                .statuses
                .0
                .iter()
                .map(|(key, status)| {
                    // A refused object has left the snapshot; its kind's version names it.
                    let api_version = snap.objects.get(key).map_or_else(
                        || format!("{}/{}", key.kind.group(), key.kind.versions()[0]),
                        |o| o.api_version.clone(),
                    );
                    let mut meta = serde_json::json!({"name": key.name});
                    if !key.namespace.is_empty() {
                        meta["namespace"] = key.namespace.clone().into();
                    }
                    serde_json::json!({
                        "apiVersion": api_version,
                        "kind": key.kind.name(),
                        "metadata": meta,
                        "status": status,
                    })
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            match output {
                crate::cli::StatusFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&list)?)
                }
                crate::cli::StatusFormat::Yaml => print!("{}", crate::yaml_out::to_string(&list)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config, json } => {
            let snap = load_snapshot(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap.diagnostics)?);
            } else {
                for d in &snap.diagnostics {
                    println!("{d}");
                }
                let errors = snap.error_count();
                let warnings = snap.diagnostics.len() - errors;
                println!(
                    "{} objects, {errors} errors, {warnings} warnings",
                    snap.objects.len()
                );
            }
            Ok(if snap.error_count() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Reads the configuration directories once and builds a snapshot.
pub fn load_snapshot(config: &ConfigArgs) -> Result<Snapshot> {
    if config.config_dirs.is_empty() {
        bail!("no --config-dir given (hint: meshd translate --config-dir examples/bookinfo ...)");
    }
    let mut source = FileSource::new(config.config_dirs.clone(), &config.default_namespace)?;
    let set = source.load();
    Ok(Snapshot::build(
        &set,
        None,
        &config.domain,
        &config.istio_namespace,
    ))
}

fn key_value(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{s:?} is not KEY=VALUE"),
    }
}

/// A proxy as the CLI describes it: node id, labels and metadata.
fn cli_proxy(
    id: &str,
    labels: &[String],
    meta: &[String],
    interception: InterceptionArg,
    mtls: bool,
) -> Result<Proxy> {
    let mut metadata: BTreeMap<String, Value> = BTreeMap::new();
    if !labels.is_empty() {
        let mut m = serde_json::Map::new();
        for l in labels {
            let (k, v) = key_value(l)?;
            m.insert(k, Value::String(v));
        }
        metadata.insert("LABELS".into(), Value::Object(m));
    }
    for m in meta {
        let (k, v) = key_value(m)?;
        metadata.insert(k, Value::String(v));
    }
    let mode = match interception {
        InterceptionArg::Redirect => "REDIRECT",
        InterceptionArg::Tproxy => "TPROXY",
        InterceptionArg::None => "NONE",
    };
    metadata
        .entry("INTERCEPTION_MODE".into())
        .or_insert_with(|| Value::String(mode.into()));
    let mut proxy = Proxy::from_node(id, metadata)?;
    proxy.mtls_ready |= mtls;
    Ok(proxy)
}

/// Parses a `--debounce`-style duration.
pub fn parse_duration(s: &str) -> Result<Duration> {
    IstioDuration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| anyhow::anyhow!(e))
}

/// `meshd explain`: one call from the flags, or every call of `--calls FILE`.
fn explain(a: crate::cli::ExplainArgs) -> Result<ExitCode> {
    use crate::cli::{ModeArg, ProtocolArg, TlsArg};
    use crate::explain::call::{CallSpec, Mode, Protocol, Tls};
    let calls: Vec<(Option<String>, CallSpec)> = match &a.calls {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            crate::explain::calls_from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            let Some(port) = a.port else {
                bail!("explain needs --port (or --calls FILE)");
            };
            vec![(
                None,
                CallSpec {
                    mode: a.mode.map(|m| match m {
                        ModeArg::Outbound => Mode::Outbound,
                        ModeArg::Inbound => Mode::Inbound,
                        ModeArg::Gateway => Mode::Gateway,
                    }),
                    address: a.address.clone(),
                    port,
                    protocol: match a.protocol {
                        ProtocolArg::Http => Protocol::Http,
                        ProtocolArg::Http2 => Protocol::Http2,
                        ProtocolArg::Tcp => Protocol::Tcp,
                    },
                    tls: match a.tls {
                        TlsArg::Plaintext => Tls::Plaintext,
                        TlsArg::Tls => Tls::Tls,
                        TlsArg::Mtls => Tls::Mtls,
                    },
                    alpn: a.alpn.clone(),
                    sni: a.sni.clone(),
                    host: a.host.clone(),
                    path: a.path.clone(),
                    method: a.method.clone(),
                    headers: Default::default(),
                    header_lines: a.headers.clone(),
                    mtls_secret: None,
                    principal: a.principal.clone(),
                },
            )]
        }
    };
    let snap = load_snapshot(&a.config)?;
    // An istio-proxy in the mesh has its workload certificate: translate as `serve` does
    // for it.
    let proxy = cli_proxy(
        &a.proxy,
        &a.labels,
        &a.meta,
        InterceptionArg::Redirect,
        true,
    )?;
    let ctx = translate::ProxyContext::new(&snap, &proxy);
    let res = translate::generate_for(&ctx);
    let json = a.json || a.calls.is_some();
    for (name, spec) in &calls {
        let out = crate::explain::explain(&ctx, &res, name.clone(), spec);
        if json {
            println!("{}", serde_json::to_string(&out.to_json())?);
        } else {
            print!("{}", out.to_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}
