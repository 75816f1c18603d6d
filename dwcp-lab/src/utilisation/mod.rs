//! How much of the paths' capacity a split of traffic lets flows use, measured: a lab of
//! rate-limited underlay paths between two regions (`shaped_lab`), TCP load from iperf3 with
//! per-stream results keyed by 5-tuple (`iperf`), and the accounting of configured against
//! achieved shares (`split`), goodput read from the kernel's TCP sockets (`sock_diag`). `cargo xtask bench utilisation` drives them.

pub mod iperf;
pub mod shaped_lab;
pub mod sock_diag;
pub mod split;

pub use iperf::{
    IperfClient, IperfError, IperfReport, IperfRun, IperfServer, StreamResult, TcpLoad,
};
pub use shaped_lab::{ShapedLabError, ShapedPath, ShapedPathsLab, ShaperStats};
pub use split::{
    flows_per_nexthop, jain_index, nexthop_of, shares, split_limited_bps, table_shares,
    tcp_goodput_ceiling, SplitAccuracy,
};
