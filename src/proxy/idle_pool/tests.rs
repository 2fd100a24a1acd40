use super::*;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::upstreams::peer::Peer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair: the gateway's end as Pingora's stream, and the backend's end.
async fn pair() -> (Stream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let ours: Stream = Box::new(L4Stream::from(ours.expect("connect")));
    (ours, theirs.expect("accept").0)
}

fn peer() -> HttpPeer {
    HttpPeer::new("127.0.0.1:1", false, String::new())
}

fn idle(stream: Stream, expires_in: Duration) -> Idle {
    Idle {
        stream,
        expires: Instant::now() + expires_in,
    }
}

fn pool_with(key: u64, stack: Vec<Idle>) -> IdlePool {
    let pool = IdlePool::default();
    pool.stacks.lock().expect("lock").insert(key, stack);
    pool
}

#[tokio::test]
async fn an_open_quiet_connection_is_reused_newest_first() {
    let (older, mut older_backend) = pair().await;
    let (newer, mut newer_backend) = pair().await;
    let pool = pool_with(
        peer().reuse_hash(),
        vec![
            idle(older, Duration::from_secs(60)),
            idle(newer, Duration::from_secs(60)),
        ],
    );
    let Some(UpstreamSession::H1(mut session)) =
        pool.take(&peer(), peer().reuse_hash()).map(|s| *s)
    else {
        panic!("no session");
    };
    assert_eq!(pool.len(), 1);
    // The session is on the newer connection: what it writes arrives there.
    let mut header = pingora_http::RequestHeader::build("GET", b"/health", None).expect("header");
    header.insert_header("host", "b").expect("host");
    session
        .write_request_header(Box::new(header))
        .await
        .expect("write");
    let mut got = [0u8; 4];
    newer_backend.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"GET ");
    let mut nothing = [0u8; 1];
    let quiet =
        tokio::time::timeout(Duration::from_millis(50), older_backend.read(&mut nothing)).await;
    assert!(quiet.is_err(), "the older connection stays idle");
}

#[tokio::test]
async fn closed_dirty_and_expired_connections_are_never_handed_out() {
    let (closed, closed_backend) = pair().await;
    drop(closed_backend);
    let (dirty, mut dirty_backend) = pair().await;
    dirty_backend
        .write_all(b"HTTP/1.1 200 OK\r\n")
        .await
        .expect("write");
    let (expired, _expired_backend) = pair().await;
    // Let the close and the stray bytes reach our ends.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pool = pool_with(
        peer().reuse_hash(),
        vec![
            idle(expired, Duration::ZERO),
            idle(dirty, Duration::from_secs(60)),
            idle(closed, Duration::from_secs(60)),
        ],
    );
    assert!(pool.take(&peer(), peer().reuse_hash()).is_none());
    assert_eq!(pool.len(), 0, "each was closed on the way");
}

#[tokio::test]
async fn the_sweep_closes_what_expired_or_its_backend_closed() {
    let (kept, mut kept_backend) = pair().await;
    let (closed, closed_backend) = pair().await;
    drop(closed_backend);
    let (expired, mut expired_backend) = pair().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pool = pool_with(
        peer().reuse_hash(),
        vec![
            idle(kept, Duration::from_secs(60)),
            idle(closed, Duration::from_secs(60)),
            idle(expired, Duration::from_millis(10)),
        ],
    );
    pool.sweep(Instant::now() + Duration::from_millis(20));
    assert_eq!(pool.len(), 1);
    // The expired one was closed by us: its backend reads the end of the stream.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), expired_backend.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0))), "{n:?}");
    let quiet = tokio::time::timeout(Duration::from_millis(50), kept_backend.read(&mut buf)).await;
    assert!(quiet.is_err(), "the live one stays open");
}

#[test]
fn any_configured_keepalive_gives_an_expiry_without_overflow() {
    let now = Instant::now();
    assert_eq!(expiry(now, Duration::ZERO), None, "zero: not kept");
    assert_eq!(
        expiry(now, Duration::from_secs(60)),
        Some(now + Duration::from_secs(60))
    );
    let longest = expiry(now, Duration::MAX).expect("capped, not overflowed");
    assert!(longest > now + Duration::from_secs(300 * 24 * 3600));
}
