//! Publishes a live order book over UDP multicast: the publishing half of
//! Grapevine's two-terminal demo.
//!
//! It builds an [`OrderBook`] of 10,000 price levels, binds a [`Publisher`] on
//! the default group 239.255.77.77, port 7777, over loopback (nothing leaves
//! this machine), and publishes a realistic stream of deltas from
//! [`BookDeltaGen`] at a steady 1,000 per second, in small batches every 5 ms.
//! Meanwhile the publisher's background task cycles snapshots of every level
//! and sends heartbeats, which is how subscribers that join late, or lose
//! datagrams, catch up. Once a second it prints the last sequence number, the
//! number of levels, the top of the book, the deltas sent in that second and
//! the snapshot cycles completed so far. Ctrl-C stops it cleanly.
//!
//! Run it with the subscriber, in two terminals, in either order:
//!
//! ```sh
//! cargo run --example order_book_publisher
//! cargo run --example order_book_subscriber
//! ```
//!
//! The subscriber syncs from the snapshot cycle, then follows the deltas and
//! prints the same top of book. Stop the publisher and start it again: the
//! subscriber notices it went silent, then that it restarted, and resyncs.
//!
//! Options (after `--`, as in `cargo run --example order_book_publisher --
//! --rate 5000`):
//!
//! * `--levels N`: price levels of the initial book (default 10,000);
//! * `--rate R`: deltas per second (default 1,000; 0 publishes none);
//! * `--deltas N`: stop publishing deltas after N of them, keep cycling
//!   snapshots (default: never stop), so that both sides settle on the same
//!   sequence number and book;
//! * `--port P` and `--group G`: where to publish (default 7777 and
//!   239.255.77.77; the subscriber must be given the same).

use std::error::Error;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use grapevine::order_book::{BookDeltaGen, OrderBook};
use grapevine::Publisher;

/// Command-line options.
struct Options {
    levels: usize,
    rate: u64,
    deltas: Option<u64>,
    group: IpAddr,
    port: u16,
}

const USAGE: &str = "\
usage: cargo run --example order_book_publisher -- [options]
  --levels N   price levels of the initial book (default 10000)
  --rate R     deltas per second (default 1000; 0: none)
  --deltas N   stop publishing deltas after N (default: never)
  --port P     UDP port (default 7777)
  --group G    multicast group (default 239.255.77.77)";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        levels: 10_000,
        rate: 1_000,
        deltas: None,
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
            "--levels" => options.levels = value.parse().map_err(|e| bad(&e))?,
            "--rate" => options.rate = value.parse().map_err(|e| bad(&e))?,
            "--deltas" => options.deltas = Some(value.parse().map_err(|e| bad(&e))?),
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

async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let book = OrderBook::generate(options.levels, 1);
    // The generator keeps its own copy of the book: every delta it yields is
    // meaningful for the publisher's book as long as all are published.
    let mut deltas = BookDeltaGen::new(&book, 2);
    let publisher = Publisher::builder()
        .group(options.group)
        .port(options.port)
        .bind(book)
        .await?;
    println!(
        "publishing {} levels on {} (loopback), session {}, {} deltas/s; Ctrl-C to stop",
        publisher.leaf_count(),
        publisher.group_addr(),
        publisher.session(),
        options.rate,
    );

    let limit = options.deltas.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut batches = tokio::time::interval(Duration::from_millis(5));
    batches.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut sent_at_last_report = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = batches.tick(), if sent < limit && options.rate > 0 => {
                // Publish whatever is due by now at the configured rate.
                let due = (start.elapsed().as_secs_f64() * options.rate as f64) as u64;
                let batch = due.min(limit).saturating_sub(sent);
                if batch > 0 {
                    publisher.publish_batch((0..batch).map(|_| deltas.next_delta()))?;
                    sent += batch;
                    if sent == limit {
                        println!("published {sent} deltas; now only cycling snapshots");
                    }
                }
            }
            _ = report.tick() => {
                let stats = publisher.stats();
                println!(
                    "[{:>4}s] seq {:>7}  levels {:>6}  {}  {:>5} deltas/s  cycles {}",
                    start.elapsed().as_secs(),
                    publisher.last_seq(),
                    publisher.leaf_count(),
                    publisher.read(|book| book.top_of_book()),
                    sent - sent_at_last_report,
                    stats.protocol.cycles,
                );
                sent_at_last_report = sent;
            }
            result = &mut ctrl_c => {
                result?;
                break;
            }
        }
    }

    let (seq, top) = (publisher.last_seq(), publisher.read(|b| b.top_of_book()));
    publisher.shutdown().await;
    println!("stopped at seq {seq} ({top}) after {sent} deltas");
    Ok(())
}
