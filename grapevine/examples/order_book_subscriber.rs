//! Follows a live order book over UDP multicast: the subscribing half of
//! Grapevine's two-terminal demo.
//!
//! It binds a [`Subscriber`] of an [`OrderBook`] on the default group
//! 239.255.77.77, port 7777, over loopback, and waits for a publisher. Once
//! one is heard it shows the sync progress (snapshot positions received out
//! of the cycle's leaf count), says when the replica is synced, then once a
//! second prints the replica's top of book, the sequence number it reflects,
//! whether it is consistent (equal to the publisher's book as of that
//! sequence number), how many levels are stale and how many gaps it has
//! recovered from. It also reports a publisher going silent, coming back or
//! restarting (then it clears the replica and resyncs). Ctrl-C stops it.
//!
//! Run it with the publisher, in two terminals, in either order:
//!
//! ```sh
//! cargo run --example order_book_publisher
//! cargo run --example order_book_subscriber
//! ```
//!
//! To watch recovery from loss without touching the network, drop a share of
//! the received datagrams on purpose: `cargo run --example
//! order_book_subscriber -- --loss 0.01` drops 1 % of them. Each loss shows up
//! as a gap; the levels it touched are stale until the publisher's snapshot
//! cycle repairs them, and the replica is consistent again a cycle later.
//!
//! Options (after `--`):
//!
//! * `--loss P`: drop each received datagram with probability P (default 0);
//! * `--port P` and `--group G`: where to listen (default 7777 and
//!   239.255.77.77; the publisher must be given the same).

use std::error::Error;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use grapevine::order_book::{OrderBook, TopOfBook};
use grapevine::{Event, Status, Subscriber};

/// Command-line options.
struct Options {
    loss: f64,
    group: IpAddr,
    port: u16,
}

const USAGE: &str = "\
usage: cargo run --example order_book_subscriber -- [options]
  --loss P     drop each received datagram with probability P (default 0)
  --port P     UDP port (default 7777)
  --group G    multicast group (default 239.255.77.77)";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        loss: 0.0,
        group: IpAddr::from([239, 255, 77, 77]),
        port: 7777,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value {value:?} for {flag}: {e}");
        match flag.as_str() {
            "--loss" => options.loss = value.parse().map_err(|e| bad(&e))?,
            "--port" => options.port = value.parse().map_err(|e| bad(&e))?,
            "--group" => options.group = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return if message.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Gap and repair lines printed per second at most; the rest are counted.
const EVENT_LINES_PER_SECOND: u32 = 5;

/// How often the sync progress is shown while syncing.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let mut builder = Subscriber::<OrderBook>::builder()
        .group(options.group)
        .port(options.port);
    if options.loss > 0.0 {
        builder = builder.simulate_loss(grapevine::io::Loss::new(options.loss, 1)?);
    }
    let mut subscriber = builder.bind().await?;
    let group = subscriber.group_addr();
    println!("waiting for a publisher on {group} ...");
    if options.loss > 0.0 {
        println!(
            "simulating loss: dropping {:.1} % of received datagrams",
            options.loss * 100.0
        );
    }

    let start = Instant::now();
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut last_progress = None;
    // Gap and repair lines left this second, and how many were not printed.
    let mut event_lines = EVENT_LINES_PER_SECOND;
    let mut unprinted = 0u32;
    // Whether the replica has been consistent in this publisher session.
    let mut ever_consistent = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            event = subscriber.next_event() => {
                let Some(event) = event else {
                    return Err("the subscriber's background task stopped".into());
                };
                // Gaps and repairs can come many a second under loss: print a
                // few, count the rest.
                let line = describe(&event, &subscriber, ever_consistent);
                match event {
                    Event::Consistency { consistent: true } => ever_consistent = true,
                    Event::PublisherRestarted { .. } => ever_consistent = false,
                    _ => {}
                }
                let Some(line) = line else {
                    continue;
                };
                if matches!(event, Event::Gap { .. } | Event::Consistency { .. }) {
                    if event_lines == 0 {
                        unprinted += 1;
                        continue;
                    }
                    event_lines -= 1;
                }
                println!("[{:>4}s] {line}", start.elapsed().as_secs());
            }
            _ = ticks.tick() => {
                let now = Instant::now();
                let (status, top) = snapshot(&subscriber);
                if status.session.is_some() && status.publisher_alive && !status.synced {
                    // Syncing: show how far through a snapshot cycle it is.
                    let progress = (status.cycle_progress, status.leaves);
                    if last_progress != Some(progress) {
                        last_progress = Some(progress);
                        let cycle = match status.cycle_progress {
                            Some((seen, count)) => {
                                format!("{seen}/{count} positions of the current cycle")
                            }
                            None => "waiting for a snapshot cycle to begin".to_string(),
                        };
                        println!(
                            "[{:>4}s] syncing: {cycle}, {} levels held",
                            start.elapsed().as_secs(),
                            status.leaves
                        );
                    }
                }
                if now < next_report {
                    continue;
                }
                while next_report <= now {
                    next_report += Duration::from_secs(1);
                }
                event_lines = EVENT_LINES_PER_SECOND;
                if status.synced && status.publisher_alive {
                    let stats = subscriber.stats();
                    let mut line = format!(
                        "[{:>4}s] seq {:>7}  {:<10}  {top}  levels {:>6}  stale {}  gaps {}",
                        start.elapsed().as_secs(),
                        status.seq,
                        state_word(&status),
                        status.leaves,
                        status.stale_leaves,
                        stats.protocol.gaps,
                    );
                    if options.loss > 0.0 {
                        line += &format!("  dropped {}", stats.simulated_drops);
                    }
                    if unprinted > 0 {
                        line += &format!("  (+{unprinted} gap/repair events not shown)");
                    }
                    println!("{line}");
                }
                unprinted = 0;
            }
            result = &mut ctrl_c => {
                result?;
                break;
            }
        }
    }

    let (status, top) = snapshot(&subscriber);
    subscriber.shutdown().await;
    println!(
        "stopped at seq {} ({}, {top})",
        status.seq,
        state_word(&status)
    );
    Ok(())
}

/// The status and the replica's top of book, read so that the top of book
/// is the one as of `status.seq`: the replica may move between the two
/// reads, so read again (a few times at most) when it did.
fn snapshot(subscriber: &Subscriber<OrderBook>) -> (Status, TopOfBook) {
    let mut status = subscriber.status();
    for _ in 0..10 {
        let top = subscriber.read(|book| book.top_of_book());
        let after = subscriber.status();
        if after.seq == status.seq && after.session == status.session {
            return (after, top);
        }
        status = after;
    }
    (status, subscriber.read(|book| book.top_of_book()))
}

/// One word for where the replica stands.
fn state_word(status: &Status) -> &'static str {
    if status.consistent {
        "consistent"
    } else if status.synced {
        "repairing"
    } else {
        "syncing"
    }
}

/// A line for a notable event, `None` for the others. `ever_consistent`:
/// whether the replica has been consistent before in this publisher session.
fn describe(
    event: &Event,
    subscriber: &Subscriber<OrderBook>,
    ever_consistent: bool,
) -> Option<String> {
    let status = subscriber.status();
    Some(match event {
        Event::SessionStarted { session } => {
            format!("publisher heard (session {session}); syncing from its snapshot cycle")
        }
        Event::Synced { seq, elapsed } => format!(
            "synced: every level heard ({} levels) at seq {seq}, {} ms after the publisher's first datagram",
            status.leaves,
            elapsed.as_millis()
        ),
        Event::Consistency { consistent: true } if ever_consistent => {
            format!("repaired: consistent again at seq {}", status.seq)
        }
        Event::Consistency { consistent: true } => format!("consistent at seq {}", status.seq),
        Event::Gap { first, last } => format!(
            "gap: {} deltas lost (seq {first}..={last}); the levels they touched are repaired from snapshots",
            last.0.wrapping_sub(first.0).wrapping_add(1)
        ),
        Event::PublisherRestarted { old, new } => format!(
            "publisher restarted (session {old} -> {new}): replica cleared, resyncing"
        ),
        Event::PublisherGone => format!(
            "publisher gone (no heartbeat); keeping the last book (seq {}, {}); waiting for a publisher on {} ...",
            status.seq,
            subscriber.read(|book| book.top_of_book()),
            subscriber.group_addr()
        ),
        Event::PublisherBack => "publisher back".to_string(),
        Event::ApplyFailed { seq, error, .. } => {
            format!("could not apply seq {seq}: {error} (is the publisher an order book?)")
        }
        _ => return None,
    })
}
