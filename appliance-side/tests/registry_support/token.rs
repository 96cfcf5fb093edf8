//! A registry token server, as docker's distribution clients expect one (the `auth: token`
//! setup of Debian's docker-registry): `GET /token?service=&scope=` with basic auth answers a
//! JWT (ES256, its certificate in the `x5c` header, which the registry checks against the
//! `rootcertbundle` this writes), and a refresh token too when asked (`offline_token=true`);
//! `POST /token` takes the OAuth2 refresh grant (`grant_type=refresh_token`). Every request
//! is recorded, so a test sees what a client sent. One connection a request, each answered on
//! a thread of its own; stopped on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The service (the registry's name) and the issuer the registry is set up to trust.
pub const SERVICE: &str = "tether-test-registry";
pub const ISSUER: &str = "tether-test-token-server";

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    /// The query's or the form's parameters (a repeated one joined by spaces, as `scope`).
    pub params: HashMap<String, String>,
    /// The user of a basic `Authorization`, if one came.
    pub user: Option<String>,
}

struct State {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    /// Refresh tokens handed out and still good.
    refresh: Mutex<Vec<String>>,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server, stopped on drop.
pub struct TokenServer {
    pub addr: String,
    /// The PEM certificate the registry verifies tokens with.
    pub cert: PathBuf,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Serves tokens to `user` with `password`; its certificate goes into `dir`.
    pub fn start(dir: &std::path::Path, user: &str, password: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![ISSUER.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join("token-server.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .unwrap();
        let state = Arc::new(State {
            user: user.to_string(),
            password: password.to_string(),
            key: signer,
            cert_der: cert.der().to_vec(),
            refresh: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(c, &st));
            }
        });
        Self {
            addr,
            cert: cert_path,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The refresh tokens handed out are no longer good.
    pub fn revoke_all(&self) {
        self.state.refresh.lock().unwrap().clear();
    }

    /// The registry's `auth:` section for this server.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `%XX` and `+` of a query or form value decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (unescape(k), unescape(v));
        m.entry(k)
            .and_modify(|old| {
                old.push(' ');
                old.push_str(&v);
            })
            .or_insert(v);
    }
    m
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT for `sub` granting every action the scopes ask for (`repository:NAME:ACTIONS`).
fn jwt(st: &State, sub: &str, scopes: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
            }))
        })
        .collect();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&st.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", st.requests.lock().unwrap().len()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = st
        .key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64url(sig.as_ref()))
}

fn respond(c: &mut TcpStream, status: &str, body: &serde_json::Value) {
    let body = body.to_string();
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.flush();
}

fn serve(mut c: TcpStream, st: &State) {
    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let mut length = 0;
    let mut user = None;
    let mut password = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse().unwrap_or(0),
            "authorization" => {
                let basic = v
                    .strip_prefix("Basic ")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                if let Some(pair) = basic.map(|b| String::from_utf8_lossy(&b).into_owned()) {
                    let (u, p) = pair.split_once(':').unwrap_or((&pair, ""));
                    user = Some(u.to_string());
                    password = Some(p.to_string());
                }
            }
            _ => {}
        }
    }
    while req.len() < head_end + length {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = if method == "POST" {
        parse_params(&String::from_utf8_lossy(&req[head_end..head_end + length]))
    } else {
        parse_params(query)
    };
    st.requests.lock().unwrap().push(TokenRequest {
        method: method.clone(),
        params: params.clone(),
        user: user.clone(),
    });
    let denied = serde_json::json!({"errors": [{"code": "DENIED", "message": "denied"}]});
    if path != "/token" {
        return respond(&mut c, "404 Not Found", &denied);
    }
    let scopes = params.get("scope").cloned().unwrap_or_default();
    let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    match method.as_str() {
        "GET" => {
            if user.as_deref() != Some(&st.user) || password.as_deref() != Some(&st.password) {
                return respond(&mut c, "401 Unauthorized", &denied);
            }
            let token = jwt(st, &st.user, &scopes);
            let mut answer = serde_json::json!({"token": token, "expires_in": 300});
            if param("offline_token") == "true" {
                let refresh = format!("refresh-{}", st.requests.lock().unwrap().len());
                st.refresh.lock().unwrap().push(refresh.clone());
                answer["refresh_token"] = refresh.into();
            }
            respond(&mut c, "200 OK", &answer)
        }
        "POST" => {
            let good = param("grant_type") == "refresh_token"
                && !param("client_id").is_empty()
                && param("service") == SERVICE
                && st
                    .refresh
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| t == param("refresh_token"));
            if !good {
                return respond(
                    &mut c,
                    "401 Unauthorized",
                    &serde_json::json!({"error": "invalid_grant"}),
                );
            }
            let token = jwt(st, &st.user, &scopes);
            respond(
                &mut c,
                "200 OK",
                &serde_json::json!({"access_token": token, "expires_in": 300, "scope": scopes}),
            )
        }
        _ => respond(&mut c, "405 Method Not Allowed", &denied),
    }
}
