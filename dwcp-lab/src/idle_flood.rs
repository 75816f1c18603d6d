//! An idle-connection flood against an HTTP listener, and how long a request takes while it
//! lasts: the API must still answer while an attacker holds thousands of connections that
//! never send a byte (the `attacks` benchmark's `api_ok_under_idle_flood`).
//!
//! Over TCP the flood comes from many sources, [`CONNECTIONS_PER_SOURCE`] connections from
//! each of 127.0.0.2, 127.0.0.3, …: from one source the listener's per-source limit would
//! close all but a few hundred at once, and what is measured is whether the slots the
//! listener has left serve the operator (a distributed attacker's case).

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::net::{TcpSocket, TcpStream, UnixStream};

/// Connections of a TCP flood per source address: below the API's per-source limit.
pub const CONNECTIONS_PER_SOURCE: usize = 100;

/// Where the flood goes.
#[derive(Clone, Debug)]
pub enum FloodTarget {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A flood's outcome.
#[derive(Debug)]
pub struct IdleFlood<T> {
    /// Connections opened and held.
    pub opened: usize,
    /// Of those, still open after the request: the server did not shed them to answer.
    pub still_open: usize,
    /// How long the request took, and what it gave.
    pub took: Duration,
    pub answer: T,
}

enum Idle {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Idle {
    /// Open: no end of file and no error from a read that finds nothing to read.
    fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        let read = match self {
            Idle::Tcp(s) => s.try_read(&mut byte),
            Idle::Unix(s) => s.try_read(&mut byte),
        };
        matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Opens `n` connections to `target` (over TCP, one on 127.0.0.1) that send nothing, then
/// runs `request` (a client's request to the same server) while they are held, timing it;
/// the connections close when it returns. Raises this process's open-files limit first: `n` connections need `n`
/// descriptors here, and as many again in a server running in this process.
pub async fn under_idle_flood<F, T>(
    target: &FloodTarget,
    n: usize,
    request: F,
) -> std::io::Result<IdleFlood<T>>
where
    F: Future<Output = T>,
{
    dwcp_agent::http::raise_fd_limit(2 * n as u64 + dwcp_agent::http::FD_RESERVE);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(match target {
            FloodTarget::Tcp(addr) => {
                let source = u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2))
                    + (i / CONNECTIONS_PER_SOURCE) as u32;
                let socket = TcpSocket::new_v4()?;
                socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
                Idle::Tcp(socket.connect(*addr).await?)
            }
            FloodTarget::Unix(path) => Idle::Unix(UnixStream::connect(path).await?),
        });
    }
    // Let the server accept them all before the request joins the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let answer = request.await;
    let took = start.elapsed();
    let still_open = held.iter().filter(|c| c.is_open()).count();
    Ok(IdleFlood {
        opened: held.len(),
        still_open,
        took,
        answer,
    })
}
