//! A counting TCP proxy between the children and PostgreSQL, run by the
//! parent on threads of its own (so its CPU is not the measured process's).
//!
//! It forwards bytes unchanged and reads the protocol's message framing on
//! the way: from the client, `Sync` and simple `Query` messages (round
//! trips) and `Execute` and `Query` messages (statements); from the server,
//! `ReadyForQuery` with status idle (a transaction ended: what
//! `pg_stat_database.xact_commit` counts, seen on the wire). Counts are kept
//! per `application_name` (read from the startup message), so each child
//! names its connections and reads only its own counts.
//!
//! A child asks for its counts on the control port: it sends the
//! application name and a newline, and reads back
//! `round_trips statements transactions`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Counts of one application name.
#[derive(Debug, Default)]
struct Counts {
    round_trips: AtomicU64,
    statements: AtomicU64,
    transactions: AtomicU64,
}

type Table = Arc<Mutex<HashMap<String, Arc<Counts>>>>;

/// A running proxy: where clients connect, and where they read counts.
#[derive(Debug, Clone, Copy)]
pub struct Proxy {
    /// Address that forwards to the server.
    pub data: SocketAddr,
    /// Address that answers count requests.
    pub control: SocketAddr,
}

/// Starts the proxy in front of `upstream` (host:port).
pub fn start(upstream: String) -> std::io::Result<Proxy> {
    let data = TcpListener::bind("127.0.0.1:0")?;
    let control = TcpListener::bind("127.0.0.1:0")?;
    let proxy = Proxy {
        data: data.local_addr()?,
        control: control.local_addr()?,
    };
    let table: Table = Arc::default();
    let t = table.clone();
    thread::spawn(move || {
        for conn in data.incoming().flatten() {
            let (t, up) = (t.clone(), upstream.clone());
            thread::spawn(move || {
                if let Ok(server) = TcpStream::connect(&up) {
                    pipe(conn, server, t);
                }
            });
        }
    });
    thread::spawn(move || {
        for conn in control.incoming().flatten() {
            let table = table.clone();
            thread::spawn(move || answer(conn, &table));
        }
    });
    Ok(proxy)
}

fn answer(conn: TcpStream, table: &Table) {
    let mut name = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut name).is_err() {
        return;
    }
    let c = table.lock().unwrap().get(name.trim()).cloned();
    let line = match c {
        Some(c) => format!(
            "{} {} {}\n",
            c.round_trips.load(Ordering::Relaxed),
            c.statements.load(Ordering::Relaxed),
            c.transactions.load(Ordering::Relaxed)
        ),
        None => "0 0 0\n".to_string(),
    };
    let _ = (&conn).write_all(line.as_bytes());
}

/// Reads counts of `app` from a proxy's control port (a child's side).
pub fn counts(control: &str, app: &str) -> std::io::Result<[u64; 3]> {
    let mut s = TcpStream::connect(control)?;
    s.write_all(format!("{app}\n").as_bytes())?;
    let mut line = String::new();
    s.read_to_string(&mut line)?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 3 {
        return Err(std::io::Error::other(format!("bad count line {line:?}")));
    }
    Ok([v[0], v[1], v[2]])
}

/// Incremental reader of the message framing of one direction.
struct Framing {
    /// The first message of a client connection has no type byte.
    untyped_first: bool,
    head: Vec<u8>,
    /// Body bytes of the current message still to pass.
    skip: usize,
    kind: u8,
    /// Offset into the current body (to read `ReadyForQuery`'s status).
    at: usize,
    body: Vec<u8>,
}

impl Framing {
    fn new(untyped_first: bool) -> Framing {
        Framing {
            untyped_first,
            head: Vec::with_capacity(5),
            skip: 0,
            kind: 0,
            at: 0,
            body: Vec::new(),
        }
    }

    /// Feeds bytes; calls `msg(kind, body_prefix)` per complete message,
    /// where the prefix holds the first bytes of the body (all of a startup
    /// message, one byte of others).
    fn feed(&mut self, mut data: &[u8], msg: &mut dyn FnMut(u8, &[u8])) {
        while !data.is_empty() {
            if self.skip == 0 {
                let want = if self.untyped_first { 4 } else { 5 };
                let take = (want - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.head.len() < want {
                    return;
                }
                let (kind, len) = if self.untyped_first {
                    (0, &self.head[0..4])
                } else {
                    (self.head[0], &self.head[1..5])
                };
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                self.kind = kind;
                self.skip = len.saturating_sub(4);
                self.at = 0;
                self.body.clear();
                self.head.clear();
                if self.skip == 0 {
                    msg(self.kind, &[]);
                    self.untyped_first = false;
                    continue;
                }
            }
            let take = self.skip.min(data.len());
            let keep = if self.untyped_first { usize::MAX } else { 1 };
            if self.at < keep {
                let n = take.min(keep - self.at);
                self.body.extend_from_slice(&data[..n]);
            }
            self.at += take;
            self.skip -= take;
            data = &data[take..];
            if self.skip == 0 {
                msg(self.kind, &self.body);
                self.untyped_first = false;
            }
        }
    }
}

/// The `application_name` parameter of a startup message body.
fn app_name(body: &[u8]) -> Option<String> {
    let params = body.get(4..)?; // protocol version
    let mut parts = params.split(|&b| b == 0);
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k == b"application_name" {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        if k.is_empty() {
            break;
        }
    }
    None
}

fn pipe(client: TcpStream, server: TcpStream, table: Table) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let counts: Arc<Mutex<Option<Arc<Counts>>>> = Arc::default();
    let (c2, s2, counts2) = (client.try_clone(), server.try_clone(), counts.clone());
    let (Ok(c2), Ok(s2)) = (c2, s2) else { return };
    // server -> client: transactions ended
    let back = thread::spawn(move || {
        let (mut from, mut to) = (s2, c2);
        let mut f = Framing::new(false);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            f.feed(&buf[..n], &mut |kind, body| {
                if kind == b'Z' && body.first() == Some(&b'I') {
                    if let Some(c) = counts2.lock().unwrap().as_ref() {
                        c.transactions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
    let (mut from, mut to) = (client, server);
    let mut f = Framing::new(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut mine: Option<Arc<Counts>> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        f.feed(&buf[..n], &mut |kind, body| match kind {
            0 => {
                // Startup (or SSL/cancel request): learn the name.
                if let Some(name) = app_name(body) {
                    let c = table.lock().unwrap().entry(name).or_default().clone();
                    *counts.lock().unwrap() = Some(c.clone());
                    mine = Some(c);
                }
            }
            b'S' | b'Q' | b'E' => {
                if let Some(c) = &mine {
                    if kind != b'E' {
                        c.round_trips.fetch_add(1, Ordering::Relaxed);
                    }
                    if kind != b'S' {
                        c.statements.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        });
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    let _ = back.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_split_messages() {
        let mut startup = Vec::new();
        let body = b"\x00\x03\x00\x00user\x00postgres\x00application_name\x00bw_1\x00\x00";
        startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        startup.extend_from_slice(body);
        let mut stream = startup.clone();
        for kind in [b'P', b'B', b'E', b'S', b'Q'] {
            stream.push(kind);
            stream.extend_from_slice(&6u32.to_be_bytes());
            stream.extend_from_slice(b"ab");
        }
        for chunk in [1, 3, 7, 1000] {
            let mut f = Framing::new(true);
            let mut seen = Vec::new();
            let mut name = None;
            for piece in stream.chunks(chunk) {
                f.feed(piece, &mut |k, b| {
                    if k == 0 {
                        name = app_name(b);
                    }
                    seen.push(k);
                });
            }
            assert_eq!(seen, vec![0, b'P', b'B', b'E', b'S', b'Q']);
            assert_eq!(name.as_deref(), Some("bw_1"));
        }
    }
}
