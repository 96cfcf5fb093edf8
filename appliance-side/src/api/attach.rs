//! Docker's hijacked streams: `POST /containers/{id}/attach` and `POST /exec/{id}/start`. The
//! HTTP connection is upgraded (101, `Upgrade: tcp`) and becomes a raw duplex: the session's
//! output goes out (8-byte-header framing without a tty, raw with one), stdin comes in. Each client
//! has its own bounded event buffer; one that falls behind is told and dropped.

use std::sync::Arc;
use std::time::Duration;

use guestinfo::contract::MAIN_SESSION;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{Control, SessionId};

use crate::api::body;
use crate::api::http::{error, query, read_json_body};
use crate::api::stdcopy;
use crate::api::{Api, ApiResponse};
use crate::server::container::Container;
use crate::server::events::Event;
use crate::server::follow::{Next, SessionFollower};
use crate::store::execs::Started;
use crate::store::logs::Stream;
use crate::store::state::ContainerStatus;

struct Plumbing {
    container: Arc<Container>,
    session: SessionId,
    tty: bool,
    want_out: bool,
    want_err: bool,
    stdin: bool,
    close_stdin_on_eof: bool,
    detach_keys: Vec<u8>,
    events: tokio::sync::broadcast::Receiver<Event>,
}

fn upgraded_response(tty: bool) -> ApiResponse {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Connection", "Upgrade")
        .header("Upgrade", "tcp")
        .header(
            "Content-Type",
            if tty {
                "application/vnd.docker.raw-stream"
            } else {
                "application/vnd.docker.multiplexed-stream"
            },
        )
        .body(body::empty())
        .expect("static")
}

pub async fn attach(api: Arc<Api>, reference: &str, mut req: Request<Incoming>) -> ApiResponse {
    let rec = match api.resolve(reference) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let q = query(&req);
    let detach_keys = match q.get("detachKeys").filter(|k| !k.is_empty()) {
        Some(spec) => match stdcopy::parse_detach_keys(spec) {
            Some(k) => k,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid detach keys {spec:?}: use e.g. ctrl-p,ctrl-q"),
                )
            }
        },
        None => vec![0x10, 0x11],
    };
    let flag = |k: &str| matches!(q.get(k).map(String::as_str), Some("1") | Some("true"));
    let want = Wanted {
        tty: rec.tty,
        out: flag("stdout"),
        err: flag("stderr"),
        stdin: flag("stdin") && rec.open_stdin,
        // dockerd closes the process's stdin when this client's ends only with StdinOnce and
        // without a tty: a tty client that leaves (its detach keys) leaves the shell running.
        close_stdin_on_eof: rec.options.stdin_once && !rec.tty,
        detach_keys,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let running = api.running_soon(&rec).await;
    let status = api.state(&rec.id).status;
    let source = match running {
        Ok(c) => {
            // Subscribed before the release, so none of the output is missed.
            let events = c.events.subscribe();
            // A main session configured to wait for its first attach may start now.
            let _ = c.send_control(Control::Release {
                session: MAIN_SESSION,
            });
            Source::Running(c, events)
        }
        // `docker run` and `start -a` attach before they start: wait for the VM, then
        // follow from its first byte (start holds the process until this attach listens).
        Err(_) if status == ContainerStatus::Created => Source::Starting {
            pending: api.engine.attach_pending(&rec.id),
            old_boot: api.state(&rec.id).boot,
        },
        Err(_) => {
            return error(
                StatusCode::CONFLICT,
                "You cannot attach to a stopped container, start it first",
            )
        }
    };
    let api2 = api.clone();
    let id = rec.id.clone();
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let (c, events) = match source {
            Source::Running(c, events) => (c, events),
            Source::Starting { pending, old_boot } => {
                let Some(c) = wait_for_boot(&api2, &id, &old_boot).await else {
                    return;
                };
                let events = c.events.subscribe();
                // Listening now: the engine may release the process.
                drop(pending);
                (c, events)
            }
        };
        run(TokioIo::new(io), want.plumbing(c, MAIN_SESSION, events)).await;
    });
    upgraded_response(rec.tty)
}

/// Where an attach's output comes from.
enum Source {
    Running(Arc<Container>, tokio::sync::broadcast::Receiver<Event>),
    Starting {
        pending: crate::engine::PendingAttach,
        old_boot: String,
    },
}

/// What an attach asked for.
struct Wanted {
    tty: bool,
    out: bool,
    err: bool,
    stdin: bool,
    close_stdin_on_eof: bool,
    detach_keys: Vec<u8>,
}

impl Wanted {
    fn plumbing(
        self,
        container: Arc<Container>,
        session: SessionId,
        events: tokio::sync::broadcast::Receiver<Event>,
    ) -> Plumbing {
        Plumbing {
            container,
            session,
            tty: self.tty,
            want_out: self.out,
            want_err: self.err,
            stdin: self.stdin,
            close_stdin_on_eof: self.close_stdin_on_eof,
            detach_keys: self.detach_keys,
            events,
        }
    }
}

/// The runtime of the container's next boot, once its VM has connected (up to the start
/// timeout); `None` if it never does.
async fn wait_for_boot(api: &Api, id: &str, old_boot: &str) -> Option<Arc<Container>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(c) = api.engine.server.container(id) {
            let st = c.state();
            if st.boot != old_boot && !st.boot.is_empty() && st.connected {
                return Some(c);
            }
        }
        if tokio::time::Instant::now() >= deadline || !api.engine.home().container(id).exists() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn exec_start(api: Arc<Api>, id: &str, mut req: Request<Incoming>) -> ApiResponse {
    let exec = match api.exec(id) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (_, body) = match read_json_body(req).await {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let detach = body["Detach"].as_bool().unwrap_or(false);
    let rec = match api.resolve(&exec.container) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let c = match api.running_soon(&rec).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let claimed = api.engine.execs.claim_session(id, || c.new_exec_session());
    // Subscribe before the exec exists, so none of its output can be missed.
    let events = c.events.subscribe();
    let session = match claimed {
        Ok(Some(Started::Fresh(session))) => {
            if let Err(e) = c.send_control(Control::Exec {
                session,
                name: exec.id.clone(),
                spec: exec.spec.clone(),
            }) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            session
        }
        // Extension: re-attaching to a running exec (a client cut off by an appliance restart
        // gets its session back). Docker answers 409 here; so do we for anything else.
        Ok(Some(Started::Already(session)))
            if !detach
                && api
                    .state(&exec.container)
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.running) =>
        {
            session
        }
        Ok(Some(Started::Already(_))) => {
            return error(
                StatusCode::CONFLICT,
                format!("exec {id} has already been started"),
            )
        }
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("No such exec instance: {id}"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store exec {id}: {e}"),
            )
        }
    };
    if detach {
        return Response::builder()
            .status(StatusCode::OK)
            .body(body::empty())
            .expect("static");
    }
    let plumbing = Plumbing {
        container: c,
        session,
        tty: exec.spec.tty,
        want_out: exec.attach_stdout,
        want_err: exec.attach_stderr,
        stdin: exec.attach_stdin,
        // As dockerd: an exec's stdin closes with the client's, unless it has a tty.
        close_stdin_on_eof: !exec.spec.tty,
        detach_keys: vec![0x10, 0x11],
        events,
    };
    tokio::spawn(async move {
        if let Ok(io) = on_upgrade.await {
            run(TokioIo::new(io), plumbing).await;
        }
    });
    upgraded_response(exec.spec.tty)
}

async fn run<IO>(io: IO, p: Plumbing)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let stdin_task = if p.stdin {
        let c = p.container.clone();
        let (session, keys, close) = (p.session, p.detach_keys.clone(), p.close_stdin_on_eof);
        Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if close {
                            c.write_stdin(session, &[], true);
                        }
                        return false;
                    }
                    Ok(n) => n,
                };
                let (data, detached) = match stdcopy::detach_at(&buf[..n], &keys) {
                    Some(before) => (before, true),
                    None => (&buf[..n], false),
                };
                let mut sent = 0;
                while sent < data.len() {
                    sent += c.write_stdin(session, &data[sent..], false);
                    if sent < data.len() {
                        // Bounded buffer full: the process is not reading; wait, don't grow.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if detached {
                    return true;
                }
            }
        }))
    } else {
        None
    };
    let mut follower = SessionFollower::new(p.container.clone(), p.events, p.session, p.tty);
    let mut stdin_task = stdin_task;
    loop {
        let next = tokio::select! {
            n = follower.next() => n,
            d = async { stdin_task.as_mut().expect("guarded").await }, if stdin_task.is_some() => {
                stdin_task = None;
                if d.unwrap_or(false) {
                    break; // detach keys: leave the session running, stdin open
                }
                continue; // stdin ended; output continues until the session exits
            }
        };
        let mut out = Vec::new();
        match next {
            Next::Event(Event::Output { stream, bytes, .. }) => {
                let wanted = match stream {
                    Stream::Stdout => p.want_out,
                    Stream::Stderr => p.want_err,
                };
                if wanted {
                    stdcopy::frame(p.tty, stream, &bytes, &mut out);
                }
            }
            Next::Event(Event::StartFailed { message, .. }) => {
                let line = format!("tether: exec failed: {message}\n");
                stdcopy::frame(p.tty, Stream::Stderr, line.as_bytes(), &mut out);
            }
            Next::Event(_) => {}
            Next::Lagged(n) => {
                let msg =
                    format!("tether: this client fell {n} events behind and was disconnected\n");
                stdcopy::frame(p.tty, Stream::Stderr, msg.as_bytes(), &mut out);
                let _ = wr.write_all(&out).await;
                break;
            }
            Next::Done => break,
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            break;
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let _ = wr.shutdown().await;
}
