//! Running one check: a TCP connect, or an HTTP/1.1 GET whose status line is compared with
//! the expected statuses. Plain HTTP only (no TLS).

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::{CheckFailure, CheckTarget};

/// Largest response head read before giving up.
const MAX_HEAD: usize = 16 * 1024;

fn io_failure(e: io::Error) -> CheckFailure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => CheckFailure::Refused,
        io::ErrorKind::TimedOut => CheckFailure::Timeout,
        _ => CheckFailure::Io {
            message: e.to_string(),
        },
    }
}

/// Runs one check within `timeout`; returns how long a success took.
pub async fn run_check(target: &CheckTarget, timeout: Duration) -> Result<Duration, CheckFailure> {
    let start = Instant::now();
    let work = async {
        match target {
            CheckTarget::Tcp { addr } => TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(io_failure),
            CheckTarget::Http {
                addr,
                host,
                path,
                expect_status,
            } => http_get(*addr, host, path, expect_status).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CheckFailure::Timeout),
    }
}

async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    expect_status: &[u16],
) -> Result<(), CheckFailure> {
    let mut stream = TcpStream::connect(addr).await.map_err(io_failure)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dwcp-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_failure)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let n = stream.read_buf(&mut buf).await.map_err(io_failure)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let got = response.code.unwrap_or(0);
                return if expect_status.contains(&got) {
                    Ok(())
                } else {
                    Err(CheckFailure::BadStatus {
                        got,
                        expected: expect_status.to_vec(),
                    })
                };
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(CheckFailure::BadResponse {
                    message: e.to_string(),
                })
            }
        }
        if n == 0 {
            return Err(CheckFailure::BadResponse {
                message: "connection closed before the end of the response head".into(),
            });
        }
        if buf.len() > MAX_HEAD {
            return Err(CheckFailure::BadResponse {
                message: "response head larger than 16 KiB".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves every connection with `answer` after reading the request head.
    async fn serve(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        got += s.read(&mut buf[got..]).await.unwrap();
                    }
                    let _ = s.write_all(answer).await;
                });
            }
        });
        addr
    }

    fn http(addr: SocketAddr, expect: &[u16]) -> CheckTarget {
        CheckTarget::Http {
            addr,
            host: "svc".into(),
            path: "/healthz".into(),
            expect_status: expect.to_vec(),
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn http_status_is_compared() {
        let ok = serve(b"HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n").await;
        assert!(run_check(&http(ok, &[200, 204]), T).await.is_ok());
        assert_eq!(
            run_check(&http(ok, &[200]), T).await,
            Err(CheckFailure::BadStatus {
                got: 204,
                expected: vec![200]
            })
        );
    }

    #[tokio::test]
    async fn garbage_and_truncated_answers_fail() {
        let garbage = serve(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        assert!(matches!(
            run_check(&http(garbage, &[200]), T).await,
            Err(CheckFailure::BadResponse { .. })
        ));
        let short = serve(b"HTTP/1.1 200 OK\r\nContent-").await;
        assert_eq!(
            run_check(&http(short, &[200]), T).await,
            Err(CheckFailure::BadResponse {
                message: "connection closed before the end of the response head".into()
            })
        );
    }

    #[tokio::test]
    async fn tcp_refused_and_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(run_check(&CheckTarget::Tcp { addr }, T).await.is_ok());
        // Accepts (the kernel completes the handshake) but never answers the GET.
        assert_eq!(
            run_check(&http(addr, &[200]), Duration::from_millis(100)).await,
            Err(CheckFailure::Timeout)
        );
        drop(l);
        assert_eq!(
            run_check(&CheckTarget::Tcp { addr }, T).await,
            Err(CheckFailure::Refused)
        );
    }
}
