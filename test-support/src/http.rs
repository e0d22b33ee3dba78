//! [`HttpServer`]: a small HTTP/1.1 file server on 127.0.0.1 for download tests, with byte
//! ranges (so that a client can resume) and a switch that cuts the next response short.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A request the server answered: the path and the `Range` header, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request path, e.g. `/app.tar.gz`.
    pub path: String,
    /// The value of the `Range` header, e.g. `bytes=100-`.
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Vec<u8>>,
    /// Bytes of the body sent before the connection is closed, for the next response.
    cut_after: Option<usize>,
    /// Whether `Range` is honoured.
    ranges: bool,
    requests: Vec<Request>,
}

/// A running server; stopped (its thread joined) when dropped.
pub struct HttpServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts a server on a free port of 127.0.0.1 that honours byte ranges.
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            ranges: true,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let state = state.clone();
                        std::thread::spawn(move || serve(stream, &state));
                    }
                }
            })
        };
        HttpServer {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Serves `data` at `path` (starting with `/`).
    pub fn set(&self, path: &str, data: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), data.to_vec());
    }

    /// Cuts the next response off after `bytes` bytes of its body: the client sees a
    /// connection closed early.
    pub fn cut_next_after(&self, bytes: usize) {
        self.state.lock().unwrap().cut_after = Some(bytes);
    }

    /// Whether `Range` headers are honoured (the default) or ignored, as by a server that
    /// cannot resume.
    pub fn honour_ranges(&self, yes: bool) {
        self.state.lock().unwrap().ranges = yes;
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let (data, cut, ranges) = {
        let mut s = state.lock().unwrap();
        s.requests.push(Request {
            path: path.clone(),
            range: range.clone(),
        });
        (s.files.get(&path).cloned(), s.cut_after.take(), s.ranges)
    };
    let mut stream = stream;
    let Some(data) = data else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range.filter(|_| ranges).and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    });
    let (head, body) = match start {
        Some(start) if start >= data.len() => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                data.len()
            );
            (head, &data[..0])
        }
        Some(start) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len() - 1,
                data.len(),
                data.len() - start
            ),
            &data[start..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: {}\r\nConnection: close\r\n\r\n",
                data.len(),
                if ranges { "bytes" } else { "none" }
            ),
            &data[..],
        ),
    };
    let body = match cut {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}
