//! Body of the docker API fuzz target, shared by `fuzz/` (libFuzzer) and the regression test
//! that replays saved inputs in `make test`. Arbitrary bytes arrive as an HTTP connection to the
//! real API (hyper's parser, our routing, query and JSON handling) against a home holding one
//! container record. Whatever the bytes, the server answers or closes; it never panics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{serve_connection, Api};
use crate::home::Home;
use crate::server::Server;
use crate::store::records::{self, NewContainer};

struct Env {
    rt: tokio::runtime::Runtime,
    api: Arc<Api>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("appliance-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = Home::at(&root);
        std::fs::create_dir_all(home.containers()).expect("a temporary home");
        records::create(
            &home,
            &NewContainer {
                name: Some("c1".into()),
                args: vec!["/bin/true".into()],
                ..Default::default()
            },
        )
        .expect("a container record");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let api = rt.block_on(async { Api::new(Server::new(home)) });
        // A fuzzed `/images/create` or `/auth` may name any registry: none off this machine
        // is ever contacted.
        api.engine
            .registries
            .configure(crate::registry::RegistryConfig {
                loopback_only: true,
                timeout: Duration::from_millis(200),
                ..Default::default()
            });
        Env { rt, api }
    })
}

pub fn api_request(data: &[u8]) {
    let env = env();
    env.rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let conn = tokio::spawn(serve_connection(env.api.clone(), server));
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        // A request may legitimately wait (POST /wait on a running container): bound it.
        let _ = tokio::time::timeout(Duration::from_millis(50), async {
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        conn.abort();
    });
}
