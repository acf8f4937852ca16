//! One simulated request: what a client sends and how it reaches the proxy, with the
//! defaults of istiod's simulator (address 1.3.3.7, HTTP, plaintext, path `/`, SNI = host
//! under TLS, ALPN by protocol under TLS), so istiod's cases read the same here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the connection reaches Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Captured by iptables to 15001 and handed to the listener of its original destination.
    Outbound,
    /// Captured to 15006 (the virtual inbound listener).
    Inbound,
    /// No capture: the listener bound to the port (gateways).
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    #[default]
    Plaintext,
    Tls,
    Mtls,
}

/// A call as written by a user (`--calls FILE` entries use the CLI flag names as keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSpec {
    pub mode: Option<Mode>,
    pub address: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub tls: Tls,
    pub alpn: Option<String>,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    /// `{name: value}`.
    pub headers: BTreeMap<String, String>,
    /// `Name: value` lines, as `-H` takes them.
    #[serde(rename = "H")]
    pub header_lines: Vec<String>,
    /// The certificate (SDS name, or `file-cert:CERT~KEY`) whose chains the client's
    /// mTLS is made for; default `default`, the workload certificate (istiod's
    /// simulator's notion of "mTLS").
    #[serde(rename = "mtlsSecretConfigName")]
    pub mtls_secret: Option<String>,
    /// The caller's identity under mTLS (`spiffe://…`), for AuthorizationPolicies.
    pub principal: Option<String>,
}

/// A call with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Call {
    pub mode: Mode,
    pub address: String,
    pub port: u16,
    pub protocol: Protocol,
    pub tls: Tls,
    /// Offered in the TLS handshake (empty: none).
    pub alpn: String,
    pub sni: String,
    pub host: String,
    pub path: String,
    pub method: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub mtls_secret: String,
    pub principal: Option<String>,
}

impl CallSpec {
    /// Fills the defaults; `router` is true for gateways (their default mode is `gateway`).
    pub fn resolve(&self, router: bool) -> Result<Call, String> {
        if self.port == 0 {
            return Err("a call needs a port (hint: --port 9080)".into());
        }
        let host = self.host.clone().unwrap_or_default();
        let sni = match (&self.sni, self.tls) {
            (Some(s), _) => s.clone(),
            (None, Tls::Tls) => host.clone(),
            (None, _) => String::new(),
        };
        let alpn = match (&self.alpn, self.tls) {
            (Some(a), Tls::Plaintext) if !a.is_empty() => {
                return Err(format!(
                    "ALPN {a:?} can only be offered in a TLS handshake (hint: add --tls tls)"
                ));
            }
            (Some(a), _) => a.clone(),
            (None, Tls::Mtls) => match self.protocol {
                Protocol::Http => "istio-http/1.1",
                Protocol::Http2 => "istio-h2",
                Protocol::Tcp => "istio",
            }
            .to_string(),
            (None, Tls::Tls) => match self.protocol {
                Protocol::Http => "http/1.1",
                Protocol::Http2 => "h2",
                Protocol::Tcp => "",
            }
            .to_string(),
            (None, Tls::Plaintext) => String::new(),
        };
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        for line in &self.header_lines {
            let Some((k, v)) = line.split_once(':') else {
                return Err(format!("header {line:?} is not `Name: value`"));
            };
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mode = self.mode.unwrap_or(if router {
            Mode::Gateway
        } else {
            Mode::Outbound
        });
        Ok(Call {
            mode,
            address: self
                .address
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "1.3.3.7".into()),
            port: self.port,
            protocol: self.protocol,
            tls: self.tls,
            alpn,
            sni,
            host,
            path: self
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            method: self.method.clone().unwrap_or_else(|| "GET".into()),
            headers,
            mtls_secret: self.mtls_secret.clone().unwrap_or_else(|| "default".into()),
            principal: self.principal.clone(),
        })
    }
}

impl Call {
    /// Plain HTTP (what an HTTP connection manager can read without terminating TLS).
    pub fn is_http(&self) -> bool {
        self.protocol != Protocol::Tcp
    }

    /// The value of a request header as Envoy's route matching sees it, pseudo-headers
    /// included.
    pub fn header(&self, name: &str) -> Option<&str> {
        match name {
            ":authority" | "host" => Some(self.host.as_str()),
            ":path" => Some(self.path.as_str()),
            ":method" => Some(self.method.as_str()),
            ":scheme" => Some(if self.tls == Tls::Plaintext {
                "http"
            } else {
                "https"
            }),
            _ => self
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_istiods_simulator() {
        let c = CallSpec {
            port: 80,
            tls: Tls::Tls,
            host: Some("foo".into()),
            ..Default::default()
        }
        .resolve(false)
        .expect("valid");
        assert_eq!(c.address, "1.3.3.7");
        assert_eq!(c.sni, "foo");
        assert_eq!(c.alpn, "http/1.1");
        assert_eq!(c.path, "/");
        assert_eq!(c.mode, Mode::Outbound);
        let m = CallSpec {
            port: 80,
            tls: Tls::Mtls,
            protocol: Protocol::Tcp,
            ..Default::default()
        }
        .resolve(true)
        .expect("valid");
        assert_eq!(m.alpn, "istio");
        assert_eq!(m.sni, "");
        assert_eq!(m.mode, Mode::Gateway);
    }

    #[test]
    fn alpn_without_tls_is_refused() {
        let e = CallSpec {
            port: 80,
            alpn: Some("h2".into()),
            ..Default::default()
        }
        .resolve(false);
        assert!(e.is_err());
    }
}
