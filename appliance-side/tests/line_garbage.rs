//! A noisy line: a proxy between a real host-mode tether and the real server injects megabytes
//! of random bytes, flips bytes inside real frames and cuts pieces out of them, in both
//! directions. The session carries on: corrupted frames are dropped by the decoders, their data is
//! retransmitted, every byte arrives once, and the server's link counters show the damage.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use appliance::store::logs::Stream;
use appliance::store::records::{self, NewContainer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Damage budget per direction: garbage stops once this much has been injected, so the test ends.
const GARBAGE_PER_DIRECTION: u64 = 2 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Forwards `from` to `to`, damaging the stream on the way; counts the garbage it added and the
/// chunks it corrupted.
async fn mangle<R, W>(
    mut from: R,
    mut to: W,
    seed: u64,
    garbage: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        let budget_left = garbage.load(Ordering::Relaxed) < GARBAGE_PER_DIRECTION;
        if budget_left {
            match rng.below(8) {
                // Flip one byte of a real frame: its CRC fails, it must be resent.
                0 => {
                    let i = rng.below(chunk.len() as u64) as usize;
                    chunk[i] ^= 1 + rng.below(255) as u8;
                    hits.fetch_add(1, Ordering::Relaxed);
                }
                // Cut a piece out: a truncated frame, glued to the start of another.
                1 if chunk.len() > 16 => {
                    let a = rng.below(chunk.len() as u64 - 8) as usize;
                    let b = a + 1 + rng.below((chunk.len() - a - 1) as u64) as usize;
                    chunk.drain(a..b);
                    hits.fetch_add(1, Ordering::Relaxed);
                }
                // A burst of line noise before the real bytes (zeros included: fake delimiters).
                2..=5 => {
                    let len = 1024 + rng.below(14 * 1024) as usize;
                    let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    garbage.fetch_add(len as u64, Ordering::Relaxed);
                    if to.write_all(&noise).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

struct Damage {
    garbage: [Arc<AtomicU64>; 2],
    hits: [Arc<AtomicU64>; 2],
}

/// Accepts tether's connections on `listen` and proxies each to the server at `upstream`.
async fn proxy(listen: &Path, upstream: std::path::PathBuf, damage: &Damage) {
    let listener = tokio::net::UnixListener::bind(listen).unwrap();
    let (g0, g1, h0, h1) = (
        damage.garbage[0].clone(),
        damage.garbage[1].clone(),
        damage.hits[0].clone(),
        damage.hits[1].clone(),
    );
    tokio::spawn(async move {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while let Ok((guest, _)) = listener.accept().await {
            let Ok(server) = tokio::net::UnixStream::connect(&upstream).await else {
                continue;
            };
            let (gr, gw) = guest.into_split();
            let (sr, sw) = server.into_split();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            tokio::spawn(mangle(gr, sw, seed, g0.clone(), h0.clone()));
            tokio::spawn(mangle(sr, gw, seed ^ 0xabcdef, g1.clone(), h1.clone()));
        }
    });
}

#[test]
fn megabytes_of_line_noise_both_ways_lose_nothing() {
    let home = TempHome::new("noise");
    let rt = runtime();
    let server = start_server(&rt, &home);
    // Stdin (server -> guest) comes back on stdout (guest -> server): both directions carry data.
    let (record, _) = records::create(
        &home,
        &NewContainer {
            args: vec!["/bin/cat".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            open_stdin: true,
            ..Default::default()
        },
    )
    .unwrap();
    let id = record.id;
    let damage = Damage {
        garbage: [Arc::default(), Arc::default()],
        hits: [Arc::default(), Arc::default()],
    };
    let proxy_sock = home.root().join("proxy.sock");
    rt.block_on(proxy(&proxy_sock, home.channel_socket(), &damage));
    let mut child = spawn_tether_on(&home, &id, &proxy_sock);
    let input: Vec<u8> = {
        let mut rng = Rng(42);
        (0..1 << 20).map(|_| rng.next() as u8).collect()
    };
    rt.block_on(async {
        let c = loop {
            if let Some(c) = server.container(&id) {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut sent = 0;
        while sent < input.len() {
            sent += c.write_stdin(1, &input[sent..], false);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while c.write_stdin(1, &[], true) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert_eq!(wait_exit(&mut child, 240), 0, "cat ends when stdin closes");
    let out = main_log(&home, &id, Stream::Stdout);
    assert_eq!(out.len(), input.len(), "every byte arrives, once");
    assert!(out == input, "the bytes are exactly the input");
    let g = [0, 1].map(|i| damage.garbage[i].load(Ordering::Relaxed));
    let h = [0, 1].map(|i| damage.hits[i].load(Ordering::Relaxed));
    assert!(
        g.iter().all(|x| *x >= GARBAGE_PER_DIRECTION) && h.iter().all(|x| *x > 0),
        "the proxy did its damage: garbage {g:?} bytes, corrupted chunks {h:?}"
    );
    let link = &state(&home, &id)["link"];
    eprintln!("link counters: {link}; injected garbage {g:?}, corrupted chunks {h:?}");
    let n = |k: &str| link[k].as_u64().unwrap_or(0);
    // Guest -> server: the server's decoder threw the noise away and saw the gaps it left.
    assert!(n("bytes_dropped") >= g[0], "{link}");
    assert!(n("frames_rejected") > 0 && n("gaps") > 0, "{link}");
    // Server -> guest: stdin chunks tether never acknowledged were resent.
    assert!(n("retransmits") > 0, "{link}");
}
