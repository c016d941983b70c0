//! Discovery over QUIC on loopback, measured in one run against in-run baselines:
//! - ping-pong round trip over QUIC (one stream per request, as every request does) against
//!   the same framed JSON ping over one tokio TCP connection;
//! - registration throughput with 64 concurrent clients (connection-bound instances);
//! - write → event latency with 1,000 subscribers (p50 / p99 over every delivery);
//! - one change fanned out to 10,000 subscribers (p50 / p99 / last delivery).
//!
//! Run: `cargo bench -p sextant-benches --bench quic`. Prints numbers; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sextant_core::{Change, Instance, Record, Scope, ServiceKey};
use sextant_proto::{Binding, FrameDecoder, Request, Response, encode};
use sextant_quic::client::{Client, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn tcp_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            s.set_nodelay(true).ok();
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    decoder.push(&buf[..n]);
                    while let Ok(Some(Request::Ping { nonce })) = decoder.decode::<Request>() {
                        let frame = encode(&Response::Pong { nonce }).expect("encode");
                        if s.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn tcp_ping(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(n);
    for nonce in 0..n as u64 {
        let start = Instant::now();
        s.write_all(&encode(&Request::Ping { nonce }).expect("encode")).await.expect("write");
        loop {
            if let Some(Response::Pong { .. }) = decoder.decode::<Response>().expect("frame") {
                break;
            }
            let k = s.read(&mut buf).await.expect("read");
            decoder.push(&buf[..k]);
        }
        out.push(start.elapsed());
    }
    out
}

/// The transport floor: a bare quinn echo server (one stream per round trip, same TLS and
/// transport settings), no sextant code.
fn raw_quinn_server(files: &tls::TlsFiles) -> SocketAddr {
    let config = tls::server_config(files, None, 1024).expect("tls");
    let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(bytes) = recv.read_to_end(1024).await {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    addr
}

async fn raw_quinn_ping(conn: &quinn::Connection, n: usize) -> Vec<Duration> {
    let ping = encode(&Request::Ping { nonce: 1 }).expect("encode");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        send.write_all(&ping).await.expect("write");
        send.finish().expect("finish");
        recv.read_to_end(1024).await.expect("read");
        out.push(start.elapsed());
    }
    out
}

fn instance(service: &str, n: u32) -> Instance {
    Instance::new(ServiceKey::parse(service).expect("service"), std::net::Ipv4Addr::from(0x0a00_0000 + n).into(), 8080)
}

/// `subscribers` watches on `service`, spread over `connections` clients; returns a receiver
/// of (delivery instant, port of the upserted instance).
async fn subscribers(
    options: &ClientOptions,
    service: &str,
    connections: usize,
    subscribers: usize,
) -> (Vec<Client>, tokio::sync::mpsc::UnboundedReceiver<(Instant, u16)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    let mut ready = Vec::new();
    for c in 0..connections {
        let client = Client::connect(options.clone()).await.expect("connect");
        for _ in 0..subscribers / connections {
            let mut w = client.watch(Scope::Service(ServiceKey::parse(service).expect("service")));
            let tx = tx.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                while let Some(Ok(item)) = w.next().await {
                    match item.event.change {
                        Change::Reset { .. } => {
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                        }
                        Change::Upsert { record: Record::Instance(i) } => {
                            let _ = tx.send((Instant::now(), i.port));
                        }
                        _ => {}
                    }
                }
            });
        }
        clients.push(client);
        if c % 10 == 9 {
            tokio::task::yield_now().await;
        }
    }
    for r in ready {
        let _ = r.await;
    }
    (clients, rx)
}

/// A server on an embedded store in a fresh directory; the options to reach it.
async fn start_server(dir: &std::path::Path) -> (ClientOptions, tls::TlsFiles) {
    let files = tls::ensure_dev_certs(dir).expect("certs");
    let store = EmbeddedStore::open(&dir.join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store, 64 * 1024).await.expect("registry");
    let config = tls::server_config(&files, None, 1024).expect("tls");
    let server = QuicServer::bind("127.0.0.1:0".parse().expect("addr"), config, registry, ServerOptions::default())
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    (ClientOptions::new(vec![addr], files.ca.clone()), files)
}

/// Ping-pong: sextant's `ping` (one QUIC stream per request, the whole stack on both ends),
/// a bare quinn echo (the transport floor) and the framed JSON ping over one tokio TCP
/// connection, interleaved in rounds so all three see the same machine. The servers run on
/// `servers` (another runtime, or the current one), the clients on the current runtime.
async fn ping_pong(label: &str, servers: tokio::runtime::Handle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let (options, files, tcp_addr, raw_addr) = servers
        .spawn(async move {
            let (options, files) = start_server(&path).await;
            let tcp = tcp_echo_server().await;
            let raw = raw_quinn_server(&files);
            (options, files, tcp, raw)
        })
        .await
        .expect("servers");
    let client = Client::connect(options).await.expect("connect");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    endpoint.set_default_client_config(tls::client_config(&files.ca, None).expect("tls"));
    let raw = endpoint.connect(raw_addr, "localhost").expect("connect").await.expect("handshake");
    for _ in 0..200 {
        client.ping().await.expect("warm up");
    }
    let _ = tcp_ping(tcp_addr, 200).await;
    let _ = raw_quinn_ping(&raw, 200).await;
    let (mut quic, mut tcp, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        for _ in 0..1000 {
            quic.push(client.ping().await.expect("ping"));
        }
        tcp.extend(tcp_ping(tcp_addr, 1000).await);
        bare.extend(raw_quinn_ping(&raw, 1000).await);
    }
    for v in [&mut quic, &mut tcp, &mut bare] {
        v.sort();
    }
    let (q50, t50, b50) = (us(percentile(&quic, 0.5)), us(percentile(&tcp, 0.5)), us(percentile(&bare, 0.5)));
    println!(
        "ping-pong, {label}: sextant quic p50 {q50:.1} us p99 {:.1} us; bare quinn p50 {b50:.1} us; tcp p50 {t50:.1} us p99 {:.1} us; quic/tcp p50 = {:.2}x (bare quinn/tcp {:.2}x)",
        us(percentile(&quic, 0.99)),
        us(percentile(&tcp, 0.99)),
        q50 / t50,
        b50 / t50
    );
}

/// A single-threaded runtime on its own OS thread (a stand-in for the server's process).
fn server_thread() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        tx.send(rt.handle().clone()).expect("handle");
        rt.block_on(std::future::pending::<()>());
    });
    rx.recv().expect("server runtime")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // 1. Ping-pong, 5 interleaved rounds of 1000 each, in three placements:
    //    - server and client on separate threads, each its own single-threaded runtime (as
    //      two processes would be): the deployment's shape;
    //    - both on one thread: the work each stack does per round trip, nothing else;
    //    - both on one 2-worker runtime: also where the scheduler happened to put the two
    //      ends (a cross-thread wake costs more than a whole TCP round trip), so it swings.
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    client_rt.block_on(ping_pong("server and client on separate threads", server_thread()));
    client_rt.block_on(async { ping_pong("one thread", tokio::runtime::Handle::current()).await });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async { ping_pong("one 2-worker runtime", tokio::runtime::Handle::current()).await });
    // The rest runs in a task on the 2-worker runtime (not on the main thread).
    rt.block_on(async {
        tokio::spawn(rest()).await.expect("bench task");
    });
}

async fn rest() {
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (options, _files) = start_server(dir.path()).await;

        // 2. Registration throughput, 64 concurrent clients.
        let clients: Vec<Client> = {
            let mut v = Vec::new();
            for _ in 0..64 {
                v.push(Client::connect(options.clone()).await.expect("connect"));
            }
            v
        };
        let per = 300u32;
        let start = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let client = client.clone();
                tokio::spawn(async move {
                    for k in 0..per {
                        let i = instance(&format!("load/g/svc-{}", c % 8), c as u32 * per + k);
                        client.register(i, Binding::Connection).await.expect("register");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let elapsed = start.elapsed();
        let total = 64 * per;
        println!(
            "registration: {total} by 64 concurrent clients in {:.2} s = {:.0}/s",
            elapsed.as_secs_f64(),
            f64::from(total) / elapsed.as_secs_f64()
        );
        drop(clients);

        // 3. Write -> event latency with 1,000 subscribers.
        let (subs, mut rx) = subscribers(&options, "lat/g/svc", 50, 1000).await;
        let writer = Client::connect(options.clone()).await.expect("connect");
        let writes = 50u16;
        let mut sent = Vec::new();
        let mut lat = Vec::new();
        for w in 0..writes {
            let mut i = instance("lat/g/svc", u32::from(w));
            i.port = 1000 + w;
            sent.push(Instant::now());
            writer.register(i, Binding::Persistent).await.expect("register");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut got = 0;
            while got < 1000 && Instant::now() < deadline {
                if let Ok(Some((at, port))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    lat.push(at - sent[usize::from(port - 1000)]);
                    got += 1;
                }
            }
        }
        lat.sort();
        println!(
            "write->event, 1000 subscribers x {writes} writes: {} deliveries, p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        drop(subs);

        // 4. One change fanned out to 10,000 subscribers (100 connections x 100 watches),
        //    repeated: a warm-up change, then ROUNDS measured ones 300 ms apart.
        const ROUNDS: u16 = 20;
        let (subs, mut rx) = subscribers(&options, "fan/g/svc", 100, 10_000).await;
        let (mut lasts, mut all) = (Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut i = instance("fan/g/svc", 1);
            i.port = 7000 + round;
            let sent = Instant::now();
            writer.register(i, Binding::Persistent).await.expect("register");
            let mut fan = Vec::with_capacity(10_000);
            while fan.len() < 10_000 {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some((at, port))) if port == 7000 + round => fan.push(at - sent),
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            assert_eq!(fan.len(), 10_000, "round {round}: every subscriber gets the change");
            fan.sort();
            let last = fan.last().copied().unwrap_or_default();
            if round == 0 {
                println!("fan-out warm-up change: last delivery {:.1} ms", ms(last));
                continue;
            }
            lasts.push(last);
            all.extend(fan);
        }
        lasts.sort();
        all.sort();
        println!(
            "fan-out, one change to 10000 subscribers, {ROUNDS} changes: deliveries p50 {:.1} ms p99 {:.1} ms; last delivery of a change: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.99)),
            ms(percentile(&lasts, 0.5)),
            ms(percentile(&lasts, 0.99)),
            ms(lasts.last().copied().unwrap_or_default())
        );
        drop(subs);
    }
}
