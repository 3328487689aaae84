//! An open-loop, rate-limited HTTP/1.1 load generator for the latency
//! figures of `benches/compare.sh`. Requests are sent on a fixed schedule
//! (RATE per second over CONNS keep-alive connections) whatever the
//! answers do, and each latency runs from the request's *scheduled* send
//! time, so a stall is charged to every request it delayed (no coordinated
//! omission). Blocking sockets and one thread per connection: the kernel's
//! timers wake a sleeping thread within tens of microseconds, where an
//! async timer wheel would add up to a millisecond.
//!
//! `openloop ADDR PATH RATE SECS CONNS [BEARER]`; prints one line:
//! `sent=N errors=E p50_us=… p90_us=… p99_us=… max_us=…`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: openloop ADDR PATH RATE SECS CONNS [BEARER]");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let path = &args[2];
    let parse = |i: usize| -> f64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("argument {i} is not a number");
            std::process::exit(2)
        })
    };
    let (rate, secs, conns) = (parse(3), parse(4), parse(5) as usize);
    let auth = args
        .get(6)
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}\r\n").into_bytes();
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (addr, request) = (addr.clone(), request.clone());
            let offset = Duration::from_secs_f64(c as f64 / rate);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut conn: Option<TcpStream> = None;
                let mut buf = vec![0u8; 64 * 1024];
                let mut k = 0u32;
                loop {
                    let at = start + offset + interval * k;
                    if (k as usize) * conns + c >= total {
                        break;
                    }
                    k += 1;
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let stream = match conn.as_mut() {
                        Some(s) => s,
                        None => match TcpStream::connect(&addr) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                conn.insert(s)
                            }
                            Err(_) => {
                                errors += 1;
                                continue;
                            }
                        },
                    };
                    if exchange(stream, &request, &mut buf).is_ok() {
                        lat.push(at.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                        conn = None;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap_or_default();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let q = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "sent={} errors={errors} p50_us={} p90_us={} p99_us={} max_us={}",
        all.len(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(1.0)
    );
}

/// Send one request and read one 2xx response with a `content-length`.
fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    s.write_all(request)?;
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let mut body = have - (end + 4);
        while body < len {
            let n = s.read(buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body += n;
        }
        return Ok(());
    }
}
