//! `meshd serve`: the file source feeds the model, the model feeds the push queue, the
//! xDS, debug and monitoring servers run until SIGINT/SIGTERM.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::metrics::{Metrics, SeverityLabel};
use crate::model::diagnostic::Diagnostic;
use crate::model::snapshot::{ConfigSet, Snapshot};
use crate::sources::file::FileSource;
use crate::xds::{AdsService, XdsState, push};

/// Builds snapshots from configuration sets, keeping the previous one for last-good
/// fallbacks and logging only diagnostics that are new.
struct ModelBuilder {
    previous: Option<Arc<Snapshot>>,
    domain: String,
    istio_namespace: String,
    metrics: Arc<Metrics>,
}

impl ModelBuilder {
    fn build(&mut self, set: &ConfigSet) -> Arc<Snapshot> {
        let start = Instant::now();
        let snap = Arc::new(Snapshot::build(
            set,
            self.previous.as_deref(),
            &self.domain,
            &self.istio_namespace,
        ));
        self.metrics.snapshot_builds.inc();
        self.metrics
            .snapshot_build_time
            .observe(start.elapsed().as_secs_f64());
        let old: BTreeSet<String> = self
            .previous
            .iter()
            .flat_map(|p| p.diagnostics.iter().map(Diagnostic::to_string))
            .collect();
        for d in &snap.diagnostics {
            let text = d.to_string();
            if !old.contains(&text) {
                warn!("{text}");
            }
        }
        let errors = snap.error_count() as i64;
        self.metrics
            .diagnostics
            .get_or_create(&SeverityLabel {
                severity: "error".into(),
            })
            .set(errors);
        self.metrics
            .diagnostics
            .get_or_create(&SeverityLabel {
                severity: "warning".into(),
            })
            .set(snap.diagnostics.len() as i64 - errors);
        self.metrics.objects.set(snap.objects.len() as i64);
        self.metrics.services.set(snap.services.len() as i64);
        self.metrics
            .virtual_services
            .set(snap.virtual_services.len() as i64);
        self.metrics
            .count_events(self.previous.as_ref().map(|p| &p.objects), &snap.objects);
        info!(
            generation = snap.generation,
            objects = snap.objects.len(),
            services = snap.services.len(),
            errors,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "configuration loaded"
        );
        self.previous = Some(snap.clone());
        snap
    }
}

async fn bind(addr: &str, port: u16, what: &str) -> Result<TcpListener> {
    let sa: SocketAddr = format!("{addr}:{port}")
        .parse()
        .or_else(|_| format!("[{addr}]:{port}").parse())
        .with_context(|| format!("--listen-address {addr:?} is not an IP address"))?;
    TcpListener::bind(sa).await.with_context(|| {
        format!("cannot listen on {sa} for {what} (is another istiod or meshd running?)")
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Where configuration comes from.
enum Mode {
    Files,
    Kubernetes(kube::Client),
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let mode = if !args.config.config_dirs.is_empty() {
        Mode::Files
    } else if args.kubeconfig.is_some() || crate::kube::in_cluster() {
        Mode::Kubernetes(crate::kube::client(args.kubeconfig.as_deref()).await?)
    } else {
        bail!(
            "no --config-dir given and not in a Kubernetes pod \
             (hint: meshd serve --config-dir examples/bookinfo, or --kubeconfig FILE)"
        );
    };
    let debounce = crate::app::parse_duration(&args.debounce).context("--debounce")?;
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Bind everything first so that a port conflict is reported before anything runs.
    let grpc = bind(&args.listen_address, args.grpc_port, "xDS (plaintext gRPC)").await?;
    let secure_grpc = bind(
        &args.listen_address,
        args.secure_grpc_port,
        "the CA and secure xDS (TLS gRPC)",
    )
    .await?;
    let http = bind(&args.listen_address, args.http_port, "/ready and /debug").await?;
    let webhook = bind(
        &args.listen_address,
        args.webhook_port,
        "the admission webhooks (HTTPS)",
    )
    .await?;
    let monitoring = bind(&args.listen_address, args.monitoring_port, "/metrics").await?;

    let (set_tx, mut set_rx) = mpsc::channel::<ConfigSet>(4);
    let (filter_tx, filter_rx) = watch::channel(crate::kube::writer::NamespaceFilter::default());
    let watch_task = match &mode {
        Mode::Files => {
            let mut source = FileSource::new(
                args.config.config_dirs.clone(),
                &args.config.default_namespace,
            )?;
            let first = source.load();
            tokio::spawn(async move {
                if set_tx.send(first).await.is_err() {
                    return;
                }
                if let Err(e) = source.watch(Duration::from_millis(50), set_tx).await {
                    warn!(error = %e, "file watch stopped; configuration changes are no longer seen");
                }
            })
        }
        Mode::Kubernetes(client) => {
            info!("watching the Kubernetes cluster");
            tokio::spawn(crate::sources::kube::run(
                client.clone(),
                crate::sources::kube::KubeOptions {
                    istio_namespace: args.config.istio_namespace.clone(),
                    revision: args.revision.clone(),
                    quiet: crate::sources::kube::QUIET,
                },
                set_tx,
                filter_tx,
            ))
        }
    };
    let mut builder = ModelBuilder {
        previous: None,
        domain: args.config.domain.clone(),
        istio_namespace: args.config.istio_namespace.clone(),
        metrics: metrics.clone(),
    };
    // In Kubernetes mode this waits for the initial sync of every watched kind.
    let Some(first_set) = set_rx.recv().await else {
        bail!("the configuration source stopped before its first load");
    };
    let first = builder.build(&first_set);
    drop(first_set);
    // Every snapshot, for the status writer (Kubernetes mode, --write-status).
    let (status_tx, status_rx) = watch::channel(first.clone());
    let trust_domain = first.mesh.trust_domain.clone();

    // The certificate authority (the trust domain comes from mesh config).
    // In a cluster the `cacerts` Secret is mounted optionally, as for istiod: an empty
    // folder means "no plugged-in CA".
    let plugged = args.cacerts.as_ref().filter(|d| match &mode {
        Mode::Files => true,
        Mode::Kubernetes(_) => d.join("ca-cert.pem").exists(),
    });
    let ca = Arc::new(match (plugged, &mode) {
        (Some(dir), _) => crate::ca::Authority::from_cacerts(dir, &trust_domain)?,
        (None, Mode::Files) => crate::ca::Authority::load_or_create(&args.ca_dir, &trust_domain)?,
        (None, Mode::Kubernetes(client)) => {
            crate::kube::writer::load_or_create_ca(
                client,
                &args.config.istio_namespace,
                &trust_domain,
            )
            .await?
        }
    });
    let published = std::fs::create_dir_all(&args.ca_dir)
        .and_then(|_| std::fs::write(args.ca_dir.join("root-cert.pem"), ca.root_pem()))
        .with_context(|| {
            format!(
                "publishing the root certificate in {}",
                args.ca_dir.display()
            )
        });
    match (published, &mode) {
        (Ok(()), _) => {}
        (Err(e), Mode::Files) => return Err(e),
        // In a cluster the ConfigMaps publish the root; a read-only file system is fine.
        (Err(e), Mode::Kubernetes(_)) => {
            warn!(error = %format!("{e:#}"), "root certificate file not written")
        }
    }
    let expiry = ca
        .root_not_after()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    metrics.root_expiry.set(expiry);
    info!(root = %args.ca_dir.join("root-cert.pem").display(), %trust_domain, plugged_in = plugged.is_some(), "certificate authority ready");
    let workload_ttl =
        crate::app::parse_duration(&args.workload_cert_ttl).context("--workload-cert-ttl")?;
    if workload_ttl > crate::ca::authority::MAX_TTL {
        bail!(
            "--workload-cert-ttl {} exceeds the maximum of 90 days",
            args.workload_cert_ttl
        );
    }
    let jwt = match &args.ca_jwks {
        Some(p) => Some(
            crate::ca::jwt::JwtVerifier::from_file(p, &trust_domain).map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let auth = Arc::new(crate::ca::server::Authenticator {
        trust_domain: trust_domain.clone(),
        jwt,
        token_review: match &mode {
            Mode::Kubernetes(client) => Some(crate::kube::TokenReviewer::new(
                client.clone(),
                &trust_domain,
            )),
            Mode::Files => None,
        },
    });
    if let Mode::Kubernetes(client) = &mode {
        let identity = args
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("meshd-{}", std::process::id()));
        let leader = crate::kube::leader::run(
            client.clone(),
            crate::kube::leader::LeaderConfig::new(&args.config.istio_namespace, &identity),
        );
        crate::kube::writer::publish_root(
            client.clone(),
            ca.root_pem().to_string(),
            leader.clone(),
            filter_rx,
        );
        // Gateway API status is always written (a Gateway API controller must); the
        // status of Istio's kinds only when asked, as istiod's PILOT_ENABLE_STATUS.
        crate::kube::writer::write_status(
            client.clone(),
            leader.clone(),
            status_rx.clone(),
            args.write_status,
        );
        // Gateway API Gateways get their proxies deployed, as istiod's deployment
        // controller does.
        crate::kube::gateways::run(
            client.clone(),
            leader.clone(),
            status_rx.clone(),
            crate::kube::gateways::DeployOptions {
                image: String::new(),
                istio_namespace: args.config.istio_namespace.clone(),
                revision: args.revision.clone(),
                domain_suffix: first.mesh.domain_suffix.clone(),
                trust_domain: trust_domain.clone(),
                proxy_config: String::new(),
            },
        );
        let suffix = if args.revision.is_empty() || args.revision == "default" {
            String::new()
        } else {
            format!("-{}", args.revision)
        };
        crate::kube::writer::patch_webhooks(
            client.clone(),
            ca.root_pem().to_string(),
            format!("istio-sidecar-injector{suffix}"),
            format!("istio-validator{suffix}-{}", args.config.istio_namespace),
            leader,
        );
    } else {
        drop(filter_rx);
    }
    let state = Arc::new(
        XdsState::new(metrics.clone(), shutdown_rx.clone())
            .with_push_slots(args.push_concurrency)
            .with_instance(args.pod_name.as_deref().unwrap_or("meshd"))
            .with_secrets(Arc::new(crate::ca::sds::WorkloadSecrets::new(
                ca.clone(),
                workload_ttl,
            ))),
    );
    push::publish(&state, first);

    let (snap_tx, snap_rx) = mpsc::channel::<Arc<Snapshot>>(4);
    let build_task = tokio::spawn(async move {
        let mut builder = builder;
        while let Some(mut set) = set_rx.recv().await {
            // Each set is the whole configuration: when newer ones queued up while the
            // last build ran, only the newest is worth building.
            while let Ok(newer) = set_rx.try_recv() {
                set = newer;
            }
            // Building a snapshot is CPU work: it runs off the async threads, so ACKs,
            // keepalives and debug requests are answered meanwhile.
            let built = tokio::task::spawn_blocking(move || {
                let snap = builder.build(&set);
                (builder, snap)
            })
            .await;
            let snap = match built {
                Ok((b, snap)) => {
                    builder = b;
                    snap
                }
                Err(e) => {
                    tracing::error!(error = %e, "building a snapshot failed; configuration changes stop here");
                    break;
                }
            };
            status_tx.send_replace(snap.clone());
            if snap_tx.send(snap).await.is_err() {
                break;
            }
        }
    });
    let push_task = tokio::spawn(push::run(state.clone(), snap_rx, debounce));

    let ads = AdsService::new(state.clone());
    // The access log service behind the mesh's metrics, on both xDS ports (a proxy sends
    // its records over its own xDS cluster).
    let als = crate::telemetry::als::service(state.clone());
    let secure_als = crate::telemetry::als::service(state.clone());
    let mut grpc_shutdown = shutdown_rx.clone();
    let grpc_addr = grpc.local_addr()?;
    let grpc_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(ads)
            .add_service(als)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    let _ = grpc_shutdown.wait_for(|s| *s).await;
                },
            )
            .await
    });
    // The TLS port: the CA API and secure ADS (with SDS) share one listener, like istiod.
    let serving = Arc::new(
        crate::ca::server::ServingCert::issue(&ca, &args.serving_dns)
            .map_err(anyhow::Error::msg)?,
    );
    let tls = crate::ca::server::server_config(&ca, serving.clone()).map_err(anyhow::Error::msg)?;
    let secure_addr = secure_grpc.local_addr()?;
    let incoming = crate::ca::server::incoming(secure_grpc, tls, trust_domain.clone());
    let ca_service = crate::ca::server::CaService::new(ca.clone(), auth.clone(), metrics.clone());
    let secure_ads = AdsService::secure(state.clone(), auth.clone());
    let mut secure_shutdown = shutdown_rx.clone();
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(ca_service)
            .add_service(secure_ads)
            .add_service(secure_als)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = secure_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "TLS gRPC server stopped");
        }
    });
    // Rotation: meshd's serving certificate, and workload certificates pushed over SDS
    // (a push of secrets sends only those whose certificate was renewed).
    {
        let state = state.clone();
        let ca = ca.clone();
        let dns = args.serving_dns.clone();
        let serving = serving.clone();
        // Often enough that a certificate due for renewal (at 80% of its life) is pushed
        // well before it expires, however short `--workload-cert-ttl` is.
        let every = (workload_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                serving.rotate_if_due(&ca, &dns);
                for c in state.connections() {
                    if c.watch_state(crate::envoy::type_url::SECRET).is_some() {
                        c.push(crate::xds::registry::PushRequest {
                            types: [crate::envoy::type_url::SECRET].into_iter().collect(),
                            endpoints: Default::default(),
                            started: Instant::now(),
                        });
                    }
                }
            }
        });
    }
    // Admission webhooks on 15017, with the same serving certificate.
    let native = match (args.native_sidecars.as_str(), &mode) {
        ("true", _) => true,
        ("false", _) => false,
        (_, Mode::Files) => true,
        (_, Mode::Kubernetes(client)) => match client.apiserver_version().await {
            Ok(v) => {
                let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
                v.major == "1" && minor >= 33
            }
            Err(e) => {
                warn!(error = %e, "cannot read the Kubernetes version; injecting classic sidecars");
                false
            }
        },
    };
    let webhook_state = Arc::new(crate::webhook::WebhookState::new(
        state.clone(),
        &args.revision,
        &args.config.istio_namespace,
        native,
    ));
    let webhook_addr = webhook.local_addr()?;
    {
        let tls = crate::webhook::tls_config(serving.clone()).map_err(anyhow::Error::msg)?;
        let listener = crate::webhook::TlsListener::new(webhook, tls)?;
        let app = crate::webhook::router(webhook_state);
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                warn!(error = %e, "webhook server stopped");
            }
        });
    }
    let http_addr = http.local_addr()?;
    let monitoring_addr = monitoring.local_addr()?;
    for (listener, name) in [(http, "http"), (monitoring, "monitoring")] {
        let app = crate::debug::router(
            state.clone(),
            crate::debug::Access {
                auth: Some(auth.clone()),
            },
        );
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let r = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = r {
                warn!(server = name, error = %e, "HTTP server stopped");
            }
        });
    }
    info!(%grpc_addr, %secure_addr, %webhook_addr, %http_addr, %monitoring_addr, native_sidecars = native, "meshd serving");

    shutdown_signal().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    watch_task.abort();
    build_task.abort();
    push_task.abort();
    // Streams end on the shutdown signal; do not wait forever on a stuck client.
    match tokio::time::timeout(Duration::from_secs(5), grpc_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server error"),
        Err(_) => warn!("gRPC server did not stop within 5s"),
        _ => {}
    }
    Ok(())
}
