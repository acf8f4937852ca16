//! A real Kubernetes API server for tests: kube-apiserver with etcd in-process, built from
//! Go modules by the test command (tests/kube-apiserver, binary `MESHD_KUBE_APISERVER`),
//! one per test process. Objects are applied with server-side apply, as
//! `kubectl apply --server-side` does, through the API's own discovery.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Where the test command put the API server binary.
pub fn binary() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/go/meshd-test-apiserver")
        });
    p.exists().then_some(p)
}

/// A running API server; stopped on drop.
pub struct KubeApi {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// A kubeconfig with cluster-admin credentials.
    pub kubeconfig: PathBuf,
    addr: SocketAddr,
    token: String,
    ca_pem: String,
    /// (group/version, kind) → (plural, namespaced), from discovery.
    resources: Mutex<BTreeMap<(String, String), (String, bool)>>,
    log: Arc<Mutex<String>>,
}

/// A failed request: HTTP status and the API's message.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: String,
}

impl KubeApi {
    /// Starts an API server with its files in `dir`; None when the binary is missing.
    pub fn start(dir: &Path) -> Option<KubeApi> {
        KubeApi::start_with(dir, &[])
    }

    /// With extra kube-apiserver flags.
    pub fn start_with(dir: &Path, flags: &[&str]) -> Option<KubeApi> {
        KubeApi::launch(dir, 0, None, flags)
    }

    /// Keeping its state (etcd and credentials) in `dir`, so that [`KubeApi::restart`]
    /// brings back the same cluster on the same address.
    pub fn start_persistent(dir: &Path, flags: &[&str]) -> Option<KubeApi> {
        KubeApi::launch(dir, 0, Some(dir.join("apiserver-data")), flags)
    }

    /// Stops this server and starts it again on its address with its state.
    pub fn restart(self, dir: &Path, flags: &[&str]) -> KubeApi {
        let port = self.addr.port();
        drop(self);
        KubeApi::launch(dir, port, Some(dir.join("apiserver-data")), flags)
            .expect("the API server binary")
    }

    fn launch(dir: &Path, port: u16, data: Option<PathBuf>, flags: &[&str]) -> Option<KubeApi> {
        let bin = binary()?;
        let kubeconfig = dir.join("kubeconfig.yaml");
        let mut cmd = Command::new(bin);
        if let Some(d) = &data {
            cmd.arg("--data-dir").arg(d);
        }
        let mut child = cmd
            .arg("--port")
            .arg(port.to_string())
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--")
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the API server");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the API server did not get ready:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("{name} in the kubeconfig"))
        };
        use base64::Engine;
        let ca_pem = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(field("certificate-authority-data"))
                .expect("CA base64"),
        )
        .expect("CA PEM");
        let addr: SocketAddr = url
            .trim_start_matches("https://")
            .parse()
            .expect("API server address");
        Some(KubeApi {
            child,
            url,
            kubeconfig,
            addr,
            token: field("token"),
            ca_pem,
            resources: Mutex::new(BTreeMap::new()),
            log,
        })
    }

    /// The API server's own log (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// One HTTPS request as cluster-admin: (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        self.request_as(&self.token, method, path, content_type, body)
    }

    /// One HTTPS request with `token`: (status, body).
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let mut tls = crate::https::connect(
            self.addr,
            "127.0.0.1",
            &self.ca_pem,
            None,
            Duration::from_secs(30),
        )?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        tls.flush()?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            crate::https::dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }

    /// A request whose answer must be a success (2xx): its body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<String, ApiError> {
        let (status, text) = self
            .request(method, path, content_type, body)
            .map_err(|e| ApiError {
                status: 0,
                body: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            return Err(ApiError { status, body: text });
        }
        Ok(text)
    }

    /// GET a path as JSON.
    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        let (status, body) = self
            .request("GET", path, "application/json", b"")
            .map_err(|e| ApiError {
                status: 0,
                body: e.to_string(),
            })?;
        if status != 200 {
            return Err(ApiError { status, body });
        }
        serde_json::from_str(&body).map_err(|e| ApiError {
            status,
            body: format!("{e}: {body}"),
        })
    }

    /// (plural, namespaced) of a kind, from the API's discovery.
    fn resource(&self, api_version: &str, kind: &str) -> Result<(String, bool), ApiError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self
            .resources
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(r);
        }
        let path = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        let list = self.get(&path)?;
        let found = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap_or("/").contains('/'))
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["namespaced"].as_bool().unwrap_or(false),
                )
            })
            .ok_or_else(|| ApiError {
                status: 404,
                body: format!("no resource for {api_version} {kind}"),
            })?;
        if let Ok(mut m) = self.resources.lock() {
            m.insert(key, found.clone());
        }
        Ok(found)
    }

    /// The object's URL path (namespaced objects default to `default`).
    pub fn path_of(&self, obj: &Value) -> Result<String, ApiError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let (plural, namespaced) = self.resource(api_version, kind)?;
        let base = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        Ok(if namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            format!("{base}/namespaces/{ns}/{plural}/{name}")
        } else {
            format!("{base}/{plural}/{name}")
        })
    }

    /// Server-side apply of one object (field manager `meshd-tests`), as
    /// `kubectl apply --server-side --force-conflicts` does.
    pub fn apply(&self, obj: &Value) -> Result<Value, ApiError> {
        let path = self.path_of(obj)?;
        let body = serde_json::to_vec(obj).unwrap_or_default();
        let text = self.call(
            "PATCH",
            &format!("{path}?fieldManager=meshd-tests&force=true"),
            "application/apply-patch+yaml",
            &body,
        )?;
        serde_json::from_str(&text).map_err(|e| ApiError {
            status: 200,
            body: format!("{e}: {text}"),
        })
    }

    /// Applies every document of a YAML file (or text), `kind: List` unpacked. Each
    /// refusal is returned with the object's kind and name.
    pub fn apply_text(&self, text: &str) -> Vec<(String, ApiError)> {
        let mut out = Vec::new();
        for doc in meshd::sources::yaml::parse_documents(text) {
            let Ok(doc) = doc else { continue };
            let v = doc.value;
            let items = match v.get("items").and_then(Value::as_array) {
                Some(items) if v["kind"] == "List" => items.clone(),
                _ => vec![v],
            };
            for item in items {
                if let Err(e) = self.apply(&item) {
                    out.push((
                        format!(
                            "{} {}",
                            item["kind"].as_str().unwrap_or("?"),
                            item["metadata"]["name"].as_str().unwrap_or("?")
                        ),
                        e,
                    ));
                }
            }
        }
        out
    }

    /// Sets a Pod's status as a kubelet would (the test API server's kubelet runs no pods):
    /// running, Ready, `ip`.
    pub fn set_pod_ready(&self, namespace: &str, name: &str, ip: &str) -> Result<(), ApiError> {
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        self.call(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}/status"),
            "application/merge-patch+json",
            &serde_json::to_vec(&patch).unwrap_or_default(),
        )
        .map(|_| ())
    }

    /// A service account token for `audience` from the TokenRequest API (the account
    /// is created if missing).
    pub fn token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
    ) -> Result<String, ApiError> {
        self.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        }))?;
        let req = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": 3600},
        });
        let body = self.call(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
            "application/json",
            &serde_json::to_vec(&req).unwrap_or_default(),
        )?;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or(ApiError { status: 200, body })
    }

    /// Deletes an object; true if it existed.
    pub fn delete(&self, obj: &Value) -> bool {
        let Ok(path) = self.path_of(obj) else {
            return false;
        };
        matches!(
            self.request("DELETE", &path, "application/json", b""),
            Ok((200 | 202, _))
        )
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // SIGTERM first: the server removes its temporary files on a clean stop.
        // SAFETY: kill(2) on our own child's pid, with a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
