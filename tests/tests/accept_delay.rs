//! `accept_queue_delay` against waits measured per connection: a server in
//! the test's own network namespace drains its accept queue in batches
//! every 170 ms while clients connect at 100/s, so each connection waits
//! between 0 and 170 ms in the queue. (A drain period locked to the 100 ms
//! sampling, 200 ms, samples the depth at the same two phases every time:
//! the estimate then read 1.44× the measured mean. The depth is sampled
//! at an instant, not averaged over the tick.) Each client sends the instant its
//! handshake completed; the server measures how long it waited at
//! `accept()`. `governor observe` samples the same port every 100 ms; the
//! estimate (depth over the rate connections entered the queue) averaged
//! over the run must agree with the measured mean.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use governor_engine::{decide::signal::accept_queue_delay_us, snapshot::Snapshot};
use governor_integration::{enter_own_netns, governor_bin, require_root};

#[test]
fn the_estimated_accept_queue_delay_agrees_with_measured_waits() {
    require_root();
    let (estimates, measured) = thread::spawn(|| {
        enter_own_netns();
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let base = Instant::now();
        let waits = Arc::new(Mutex::new(Vec::<f64>::new()));

        // governor observe, started from this thread: it is in our namespace.
        let mut observe = Command::new(governor_bin())
            .args([
                "observe",
                "--format",
                "json",
                "--interval",
                "100ms",
                "--count",
                "45",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("governor observe");
        let mut lines = BufReader::new(observe.stdout.take().expect("stdout")).lines();
        // Its first line: the probes are attached.
        let _ = lines.next();

        let stop = Instant::now() + Duration::from_secs(4);
        let server = {
            let waits = Arc::clone(&waits);
            thread::spawn(move || {
                while Instant::now() < stop + Duration::from_millis(300) {
                    thread::sleep(Duration::from_millis(170));
                    while let Ok((mut s, _)) = listener.accept() {
                        let now = base.elapsed().as_nanos() as u64;
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut b = [0u8; 8];
                        if s.read_exact(&mut b).is_ok() {
                            let sent = u64::from_le_bytes(b);
                            waits
                                .lock()
                                .expect("waits")
                                .push(now.saturating_sub(sent) as f64 / 1e3);
                        }
                    }
                }
            })
        };
        let client = thread::spawn(move || {
            let mut open = Vec::new();
            let mut next = Instant::now();
            while next < stop {
                thread::sleep(next.saturating_duration_since(Instant::now()));
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let at = base.elapsed().as_nanos() as u64;
                    let _ = s.write_all(&at.to_le_bytes());
                    open.push(s);
                }
                next += Duration::from_millis(10);
            }
            thread::sleep(Duration::from_millis(600));
            drop(open);
        });
        let mut estimates = Vec::new();
        for line in lines.map_while(Result::ok) {
            let Ok(snap) = serde_json::from_str::<Snapshot>(&line) else {
                continue;
            };
            let Some(p) = snap.port(port) else { continue };
            if p.accepted == 0 && p.accept_queue == 0 {
                continue;
            }
            if let Some(us) = accept_queue_delay_us(p, snap.interval_ms) {
                estimates.push(us);
            }
        }
        let _ = observe.wait();
        client.join().expect("client");
        server.join().expect("server");
        let measured = waits.lock().expect("waits").clone();
        (estimates, measured)
    })
    .join()
    .expect("test thread");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // The first ticks see the queue filling from empty.
    let steady = &estimates[estimates.len().min(3)..];
    println!(
        "measured: {} waits, mean {:.1} ms; estimated over {} ticks: mean {:.1} ms",
        measured.len(),
        mean(&measured) / 1e3,
        steady.len(),
        mean(steady) / 1e3
    );
    assert!(
        measured.len() >= 300,
        "connections were accepted: {}",
        measured.len()
    );
    assert!(steady.len() >= 20, "ticks with the port: {estimates:?}");
    let ratio = mean(steady) / mean(&measured);
    assert!(
        (0.7..=1.4).contains(&ratio),
        "estimate / measured = {ratio:.2} (estimates {steady:?})"
    );
}
