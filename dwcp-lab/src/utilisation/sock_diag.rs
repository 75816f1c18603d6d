//! Payload bytes TCP sockets have received, read from the kernel (sock_diag, `tcp_info`) in a
//! few milliseconds: goodput over any window, without relying on a load generator's own
//! accounting (several iperf3 clients do not start their clocks together).

use std::ops::RangeInclusive;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("sock_diag socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag answer: {0}")]
    Decode(String),
    #[error("sock_diag: the kernel answered error {0}")]
    Kernel(i32),
}

/// Sums `tcpi_bytes_received` over the IPv4 TCP sockets of the calling thread's network
/// namespace whose local port is in `local_ports` (run it inside a namespace with
/// `Netns::run_in`).
pub fn tcp_bytes_received(local_ports: RangeInclusive<u16>) -> Result<u64, SockDiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: SocketId::new_v4(),
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut total = 0u64;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..size])
                .map_err(|e| SockDiagError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                    if local_ports.contains(&r.header.socket_id.source_port) =>
                {
                    for nla in &r.nlas {
                        if let Nla::TcpInfo(info) = nla {
                            total += info.bytes_received;
                        }
                    }
                }
                NetlinkPayload::Done(_) => return Ok(total),
                NetlinkPayload::Error(e) => {
                    return Err(SockDiagError::Kernel(e.code.map_or(0, |c| c.get())))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Bytes sent over a loopback connection are counted on the receiving socket only.
    #[test]
    fn counts_what_a_socket_received() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let before = tcp_bytes_received(port..=port).unwrap();
        client.write_all(&[7u8; 12_345]).unwrap();
        let mut got = vec![0u8; 12_345];
        server.read_exact(&mut got).unwrap();
        let after = tcp_bytes_received(port..=port).unwrap();
        assert_eq!(after - before, 12_345);
        // The client's port saw none of it.
        let cport = client.local_addr().unwrap().port();
        assert_eq!(tcp_bytes_received(cport..=cport).unwrap(), 0);
    }
}
