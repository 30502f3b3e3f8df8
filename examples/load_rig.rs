//! The servers `benches/load.sh` measures wikigate against, as one small program.
//!
//! - `load_rig bare LISTEN BODY_FILE [gzip]` — the ceiling: a bare hyper 1 HTTP/1.1 server on
//!   a multi-threaded tokio runtime that answers every request with the bytes of `BODY_FILE`
//!   as `application/json` (gzip-compressed once at start, with `Content-Encoding: gzip`,
//!   when `gzip` is given). Nothing else: no routing, no headers read, no logging.
//! - `load_rig fake LISTEN CONTROL [plain]` — the built-in fake Confluence site on `LISTEN`
//!   (answering like Atlassian's edge, or plain JSON with `plain`), and on `CONTROL` a
//!   plain-text answer with the number of requests the fake has received, so that the script
//!   can tell how many reached upstream during a run.
//!
//! Both print `ready` once listening and run until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wikigate::fake::{FakeConfluence, FakeOptions, Shape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bare", listen, body_file] => {
            let body = Bytes::from(std::fs::read(body_file)?);
            runtime.block_on(respond_with(listen.parse()?, None, move || body.clone()))
        }
        ["bare", listen, body_file, "gzip"] => {
            let body = wikigate::gzip(&std::fs::read(body_file)?);
            let coding = Some("gzip");
            runtime.block_on(respond_with(listen.parse()?, coding, move || body.clone()))
        }
        ["fake", listen, control, ref shape @ ..] => runtime.block_on(async {
            let options = FakeOptions {
                shape: match shape {
                    ["plain"] => Shape::Plain,
                    _ => Shape::Edge,
                },
                // What is measured is wikigate; Atlassian's burst buckets would pace misses.
                bursts: None,
                ..FakeOptions::default()
            };
            let fake = FakeConfluence::start_on_with(listen.parse()?, None, options).await?;
            let fake = Arc::new(fake);
            respond_with(control.parse()?, None, move || {
                Bytes::from(fake.requests().to_string())
            })
            .await
        }),
        _ => Err(
            "usage: load_rig bare LISTEN BODY_FILE [gzip] | load_rig fake LISTEN CONTROL [plain]"
                .into(),
        ),
    }
}

/// Serves HTTP/1.1 on `addr`, answering every request with `body()` (in `coding`).
async fn respond_with(
    addr: SocketAddr,
    coding: Option<&'static str>,
    body: impl Fn() -> Bytes + Clone + Send + Sync + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    println!("ready");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let mut response = Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body()))
                    .expect("static response");
                if let Some(coding) = coding {
                    let value = header::HeaderValue::from_static(coding);
                    response
                        .headers_mut()
                        .insert(header::CONTENT_ENCODING, value);
                }
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
