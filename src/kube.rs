//! Kubernetes mode: the API client, TokenReview, leader election, and the objects meshd
//! writes (the `istio-ca-root-cert` ConfigMaps, its webhooks' caBundle, the CA Secret).
//! What meshd reads from the cluster is in [`crate::sources::kube`].

pub mod gateways;
pub mod leader;
pub mod writer;

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::{Client, Config};

use crate::ca::identity::Identity;

/// True in a pod: the service host variable and the mounted service-account token.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

/// A client from `kubeconfig`, or the in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "not in a pod and no --kubeconfig (hint: meshd serve --config-dir DIR serves a folder)",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Checks service-account tokens with the API server (TokenReview), as istiod does for
/// callers of the CA and of secure xDS.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    trust_domain: String,
}

/// The audience istio-proxy's tokens are minted for.
pub const CA_AUDIENCE: &str = "istio-ca";

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl TokenReviewer {
    pub fn new(client: Client, trust_domain: &str) -> Self {
        TokenReviewer {
            client,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The identity of a token's service account, or why there is none.
    pub async fn review(&self, token: &str) -> Result<Identity, String> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![CA_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = out
            .status
            .ok_or_else(|| "TokenReview returned no status".to_string())?;
        if status.authenticated != Some(true) {
            return Err(format!(
                "token not authenticated by the API server: {}",
                status.error.unwrap_or_else(|| "no reason given".into())
            ));
        }
        // An API server that ignores audiences would accept a token minted for another
        // service: demand that it confirms ours.
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == CA_AUDIENCE))
        {
            return Err(format!(
                "token is not for audience {CA_AUDIENCE} (audiences: {:?})",
                status.audiences.unwrap_or_default()
            ));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        Identity::from_k8s_subject(&self.trust_domain, &user)
            .ok_or_else(|| format!("{user:?} is not a service account"))
    }
}

/// Namespaces istiod never touches (no root ConfigMap, no injection).
pub const IGNORED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
