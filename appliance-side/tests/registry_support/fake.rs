//! A registry that serves fixed answers: crafted manifests and blobs (the lies of
//! tests/pull_faults.rs), or an honest image whose blobs can be held back until a test lets
//! them go (a pull kept in flight). One connection a request (`Connection: close`), each
//! answered on a thread of its own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::{sha256_hex, Image};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A gate a held answer waits on; opened once, it stays open.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }
}

/// What the fake serves at one path.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this content type and body.
    Body(&'static str, Vec<u8>),
    /// 200 announcing the whole body's length, then the connection cut halfway.
    Cut(Vec<u8>),
    /// 200 with this blob, once the gate opens.
    Held(Vec<u8>, Gate),
}

/// A registry that serves fixed answers, stopped on drop.
pub struct Fake {
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Paths asked for, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// Serves `routes`; with `answer` false, accepts connections and never answers.
    pub fn start(routes: HashMap<String, Answer>, answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, log) = (stop.clone(), requests.clone());
        let routes = Arc::new(routes);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                if answer {
                    let (routes, log) = (routes.clone(), log.clone());
                    std::thread::spawn(move || serve(c, &routes, &log));
                } else {
                    // Accepted and never answered.
                    held.push(c);
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
            requests,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut c: TcpStream, routes: &HashMap<String, Answer>, log: &Mutex<Vec<String>>) {
    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    log.lock().unwrap().push(path.clone());
    let answer = if path == "/v2/" {
        Some(Answer::Body("application/json", b"{}".to_vec()))
    } else {
        routes.get(&path).cloned()
    };
    let (ctype, body, cut) = match answer {
        Some(Answer::Body(t, b)) => (t, b, false),
        Some(Answer::Cut(b)) => ("application/octet-stream", b, true),
        Some(Answer::Held(b, gate)) => {
            gate.wait();
            ("application/octet-stream", b, false)
        }
        None => {
            let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            let _ = write!(
                c,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(body);
            return;
        }
    };
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let end = if cut { body.len() / 2 } else { body.len() };
    let _ = c.write_all(&body[..end]);
    let _ = c.flush();
}

/// The routes that serve `image` as `repo:v1`, honestly.
pub fn honest(image: &Image, repo: &str) -> HashMap<String, Answer> {
    let mut r = HashMap::new();
    r.insert(
        format!("/v2/{repo}/manifests/v1"),
        Answer::Body(MANIFEST, image.manifest.clone()),
    );
    for b in image.layers.iter().chain([&image.config]) {
        r.insert(
            format!("/v2/{repo}/blobs/sha256:{}", sha256_hex(b)),
            Answer::Body("application/octet-stream", b.clone()),
        );
    }
    r
}
