//! Envelope encode/decode and `Tags` dispatch.
//!
//! `cargo bench -p gossip --bench codec -- --warm-up-time 1 --measurement-time 3`
//! (figures in BENCHMARKS.md).
//!
//! On Linux the time measured is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! so figures stay meaningful on a loaded machine; `BENCH_CLOCK=wall` measures wall time.

use std::hint::black_box;

use bytes::Bytes;
use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput};
use gossip::{Message, Tag, Tags};
use serde::{Deserialize, Serialize};

/// The README's message type. serde encodes `Vec<u8>` element by element.
#[derive(Tag, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Commit {
    key: String,
    value: Vec<u8>,
}

/// The same with `bytes::Bytes`, which serde encodes as one byte string (a memcpy).
#[derive(Tag, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct CommitBytes {
    key: String,
    value: Bytes,
}

/// Key and value for a payload of exactly `size` bytes (for sizes up to 16 KiB).
fn parts(size: usize) -> (String, Vec<u8>) {
    let key = "bench/key/0123456789".to_owned(); // 20 bytes + 1 length byte
    // Length prefixes: 1 byte up to 250, 3 bytes (0xfb + u16) above.
    let value_len = if size - 22 <= 250 {
        size - 22
    } else {
        size - 24
    };
    (key, (0..value_len).map(|i| i as u8).collect())
}

fn payload_len<T: Tag>(value: &T) -> usize {
    gossip::codec::encode(value, usize::MAX).unwrap().len() - gossip::codec::HEADER_LEN
}

fn bench_type<T: Tag + Clone, M: Measurement>(
    c: &mut Criterion<M>,
    group: &str,
    make: impl Fn(usize) -> T,
) {
    let limit = gossip::codec::DEFAULT_MAX_MESSAGE_SIZE;
    let mut group = c.benchmark_group(group);
    for size in [100, 4096] {
        let value = make(size);
        assert_eq!(payload_len(&value), size, "payload size");
        let bytes = gossip::codec::encode(&value, limit).unwrap();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &value, |b, v| {
            b.iter(|| gossip::codec::encode(black_box(v), limit).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| {
                let msg = Message::from_envelope(black_box(bytes.clone())).unwrap();
                msg.decode::<T>().unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("encode+decode", size), &value, |b, v| {
            b.iter(|| {
                let bytes = gossip::codec::encode(black_box(v), limit).unwrap();
                Message::from_envelope(bytes)
                    .unwrap()
                    .decode::<T>()
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn codec<M: Measurement>(c: &mut Criterion<M>) {
    bench_type(c, "envelope-vec", |size| {
        let (key, value) = parts(size);
        Commit { key, value }
    });
    bench_type(c, "envelope-bytes", |size| {
        let (key, value) = parts(size);
        CommitBytes {
            key,
            value: value.into(),
        }
    });
    // bincode alone, without the envelope: the floor.
    let config = bincode::config::standard();
    let mut group = c.benchmark_group("bincode-alone-vec");
    for size in [100, 4096] {
        let (key, value) = parts(size);
        let value = Commit { key, value };
        group.bench_with_input(BenchmarkId::new("encode+decode", size), &value, |b, v| {
            b.iter(|| {
                let bytes = bincode::serde::encode_to_vec(black_box(v), config).unwrap();
                let (v, _): (Commit, usize) =
                    bincode::serde::decode_from_slice(&bytes, config).unwrap();
                v
            })
        });
    }
    group.finish();
}

macro_rules! sixteen {
    ($($name:ident),* $(,)?) => {
        $(
            #[derive(Tag, Serialize, Deserialize, Debug)]
            #[allow(dead_code)]
            struct $name(u64);
        )*

        #[derive(Tags, Debug)]
        #[allow(dead_code)]
        enum Inbox {
            $($name($name),)*
        }

        fn one_of_each() -> Vec<Message> {
            vec![$(Message::encode(&$name(7), 64).unwrap()),*]
        }
    };
}

sixteen!(
    M00, M01, M02, M03, M04, M05, M06, M07, M08, M09, M10, M11, M12, M13, M14, M15
);

fn dispatch<M: Measurement>(c: &mut Criterion<M>) {
    let messages = one_of_each();
    let mut group = c.benchmark_group("tags-dispatch-16");
    group.bench_function("first-variant", |b| {
        b.iter(|| Inbox::from_message(black_box(messages[0].clone())).unwrap())
    });
    group.bench_function("last-variant", |b| {
        b.iter(|| Inbox::from_message(black_box(messages[15].clone())).unwrap())
    });
    group.throughput(Throughput::Elements(16));
    group.bench_function("all-16", |b| {
        b.iter(|| {
            for msg in &messages {
                black_box(Inbox::from_message(black_box(msg.clone())).unwrap());
            }
        })
    });
    group.finish();
}

/// The calling thread's CPU time, in nanoseconds.
#[cfg(target_os = "linux")]
mod cpu {
    use criterion::measurement::{Measurement, ValueFormatter, WallTime};

    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }

    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }

    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

    fn now() -> u64 {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub struct ThreadCpu;

    static WALL: WallTime = WallTime;

    impl Measurement for ThreadCpu {
        type Intermediate = u64;
        type Value = u64;

        fn start(&self) -> u64 {
            now()
        }
        fn end(&self, start: u64) -> u64 {
            now() - start
        }
        fn add(&self, a: &u64, b: &u64) -> u64 {
            a + b
        }
        fn zero(&self) -> u64 {
            0
        }
        fn to_f64(&self, value: &u64) -> f64 {
            *value as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            // Nanoseconds, like wall time.
            WALL.formatter()
        }
    }
}

fn run<M: Measurement>(mut c: Criterion<M>) {
    codec(&mut c);
    dispatch(&mut c);
    c.final_summary();
}

fn main() {
    let wall = std::env::var("BENCH_CLOCK").is_ok_and(|v| v == "wall");
    #[cfg(target_os = "linux")]
    if !wall {
        return run(Criterion::default()
            .with_measurement(cpu::ThreadCpu)
            .configure_from_args());
    }
    let _ = wall;
    run(Criterion::default().configure_from_args());
}
