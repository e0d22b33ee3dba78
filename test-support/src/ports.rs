//! Loopback ports for the servers tests start (HTTP services, nginx, sshd).
//!
//! A port the kernel picks for `bind(0)` lies in the ephemeral range, which it also hands
//! out as the source port of outgoing connections: between a test learning such a port and
//! its server binding it, a health probe or an SSH connection of another test may take it.
//! These ports come from below that range (20000-31999), each handed out once per process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

const FIRST: u16 = 20000;
const COUNT: u16 = 12000;

/// The next candidate, starting at an offset of the process id so that test processes
/// running side by side start far apart.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// A port on 127.0.0.1 that nothing listens on now and that no other call in this process
/// returned.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// Like [`free_port`], on `address` (another loopback address, `127.0.0.N`).
pub fn free_port_on(address: &str) -> u16 {
    let offset = (std::process::id() % u32::from(COUNT / 16)) as u16 * 16;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = FIRST + (offset + n) % COUNT;
        if TcpListener::bind((address, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on {address} between {FIRST} and {}",
        FIRST + COUNT - 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lie_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (FIRST..FIRST + COUNT).contains(p)));
    }
}
