//! The stable fuzz driver (cargo-fuzz needs nightly): for every target, each file of its
//! seed corpus (`corpus/<target>/`), then a deterministic mutational loop, a seeded
//! xorshift applying byte flips, inserts, deletes, splices between corpus entries and
//! values parsers trip on, `PARLEY_FUZZ_ITERS` times (`PARLEY_FUZZ_SEED` picks another
//! sequence). A failure names the target, the seed and the iteration and leaves the input in
//! `target/fuzz-failures/`; put it in the target's corpus once fixed, and it is replayed on
//! every run from then on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use parley_fuzz::{TARGETS, Target};

/// Mutated inputs per target by default: the whole binary stays well under 30 s in a debug
/// build on two cores. `make fuzz` runs many more.
const DEFAULT_ITERS: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x7061_726c_6579_f022;

/// Mutants are cut to this, so a run of repeats cannot make one iteration slow.
const MAX_INPUT: usize = 64 * 1024;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that parsers of JSON, forms, MIME, SMTP and signatures trip on.
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b",",
    b"=",
    b"&",
    b"%",
    b"%00",
    b"%ff",
    b"%C3%A9",
    b"+",
    b"@",
    b"<",
    b">",
    b" ",
    b"\t",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\"\"",
    b"{}",
    b"[]",
    b"null",
    b"true",
    b"-",
    b".",
    b"\r\n.\r\n",
    b"\r\n\r\n",
    b"=?utf-8?B?0JjQstCw0L0=?=",
    b"=?koi8-r?Q?=F0=D2?=",
    b"--",
    b"\xd0",
    b"\xf0\x9f\x98\x80",
    b"\xe2\x82\xac",
    b"\xc3\xa9",
    b"sha256=",
    b"#",
    b"?",
    b"://",
    b":443",
    b"[::1]",
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
    b"\r\n--b\r\n",
];

/// Numbers at the edges of the integer and float types the parsers read into.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"255",
    b"65535",
    b"4294967296",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999",
    b"1e999",
    b"-1e-999",
    b"0.5",
    b"1.7976931348623157e308",
    b"-0",
    b"1E2",
];

/// One mutation of `input`, now and then taking from `corpus`.
fn mutate_once(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(15) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next() as u8;
        }
        2 => input.insert(rng.below(len + 1), rng.next() as u8),
        3 if len > 0 => {
            input.remove(rng.below(len));
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(32));
            input.drain(at..at + n);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let chunk = input[at..at + 1 + rng.below((len - at).min(64))].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, chunk);
        }
        6 => {
            let token = rng.pick(INTERESTING);
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        7 if len > 0 => {
            let token = rng.pick(INTERESTING);
            let at = rng.below(len);
            let end = (at + token.len()).min(len);
            input.splice(at..end, token.iter().copied());
        }
        8 => {
            // Splice a piece of another corpus entry in.
            let other = rng.pick(corpus);
            if !other.is_empty() {
                let from = rng.below(other.len());
                let piece = &other[from..from + 1 + rng.below((other.len() - from).min(256))];
                let at = rng.below(len + 1);
                input.splice(at..at, piece.iter().copied());
            }
        }
        9 => {
            // Crossover: this one's head, another's tail.
            let other = rng.pick(corpus);
            let cut = rng.below(len + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[rng.below(other.len() + 1)..]);
        }
        10 if len > 0 => {
            // Empty a quoted string: JSON values, quoted MIME parameters.
            let from = rng.below(len);
            if let Some(open) = input[from..].iter().position(|&b| b == b'"').map(|i| from + i)
                && let Some(close) = input[open + 1..].iter().position(|&b| b == b'"')
            {
                input.drain(open + 1..open + 1 + close);
            }
        }
        11 if len > 0 => {
            // Replace a number with one at the edge of a type.
            let from = rng.below(len);
            if let Some(start) = input[from..].iter().position(u8::is_ascii_digit).map(|i| from + i) {
                let end = input[start..].iter().position(|b| !b.is_ascii_digit()).map_or(len, |i| start + i);
                input.splice(start..end, rng.pick(NUMBERS).iter().copied());
            }
        }
        12 => {
            // A long run of one token.
            let token = rng.pick(INTERESTING);
            let times = 1 + rng.below(4096 / token.len().max(1));
            let at = rng.below(len + 1);
            input.splice(at..at, token.repeat(times));
        }
        13 if len > 0 => input.truncate(rng.below(len)),
        14 if len > 0 => {
            let i = rng.below(len);
            input[i] = if input[i].is_ascii_lowercase() {
                input[i].to_ascii_uppercase()
            } else {
                input[i].to_ascii_lowercase()
            };
        }
        _ => input.push(rng.next() as u8),
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, corpus, input);
    }
    input.truncate(MAX_INPUT);
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The seed inputs of a target, by file name, in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = crate_dir().join("corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seed inputs", dir.display());
    files
}

/// Where failing inputs are left: `target/fuzz-failures/`.
fn failures_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("fuzz-failures")
}

/// Runs one input; on a panic, keeps the input and fails naming where it came from.
fn run_one(name: &str, target: Target, input: &[u8], origin: &str, file_stem: &str) {
    let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) else { return };
    let why = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let dir = failures_dir();
    let path = dir.join(format!("{name}-{file_stem}"));
    let kept = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    let kept = match kept {
        Ok(()) => format!("written to {}", path.display()),
        Err(e) => format!("not written ({e})"),
    };
    panic!("fuzz target {name} failed on {origin} ({} bytes, {kept}): {why}", input.len());
}

/// The whole run of one target: its corpus, then its mutants.
fn fuzz(name: &str) {
    let target = TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).expect("a target of that name");
    let files = corpus(name);
    for (file, bytes) in &files {
        run_one(name, target, bytes, &format!("corpus file {file}"), &format!("corpus-{file}"));
    }
    let seeds: Vec<Vec<u8>> = files.into_iter().map(|(_, bytes)| bytes).collect();
    // Each target its own sequence: the seed mixed with the target's name (FNV-1a).
    let seed = env_number("PARLEY_FUZZ_SEED", DEFAULT_SEED);
    let mixed =
        name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut rng = Rng::new(mixed);
    for i in 0..env_number("PARLEY_FUZZ_ITERS", DEFAULT_ITERS) {
        let mut input = rng.pick(&seeds).clone();
        mutate(&mut rng, &seeds, &mut input);
        let origin = format!("PARLEY_FUZZ_SEED={seed} iteration {i}");
        run_one(name, target, &input, &origin, &format!("seed{seed}-iter{i}"));
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz(stringify!($name));
            }
        )*

        /// The targets this binary runs, to check against the library's list.
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

targets!(
    telegram_update,
    telegram_secret,
    whatsapp_webhook,
    whatsapp_signature,
    whatsapp_subscription,
    viber_callback,
    viber_signature,
    twilio_form,
    twilio_signature,
    email,
    email_thread_token,
    send_response,
    sms_segments,
    smtp_command,
    webchat_frame,
    webchat_token,
    normalise,
);

/// Every target runs here, has a seed corpus and a cargo-fuzz binary in `fuzz/`.
#[test]
fn every_target_is_driven_seeded_and_has_a_cargo_fuzz_binary() {
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let mut tested = TESTED.to_vec();
    names.sort_unstable();
    tested.sort_unstable();
    assert_eq!(names, tested, "the driver and the library list different targets");
    let fuzz = crate_dir().join("../../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in names {
        assert!(crate_dir().join("corpus").join(name).is_dir(), "no corpus/{name}");
        let source = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(source.contains(&format!("parley_fuzz::{name}(")), "fuzz_targets/{name}.rs calls another target");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
    }
}

#[test]
fn mutations_are_deterministic_and_bounded() {
    let corpus = vec![b"{\"a\": 1}".to_vec(), b"x=1&y=2".to_vec()];
    let run = || {
        let mut rng = Rng::new(7);
        (0..500)
            .map(|_| {
                let mut input = corpus[0].clone();
                mutate(&mut rng, &corpus, &mut input);
                input
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert!(a.iter().all(|m| m.len() <= MAX_INPUT));
    assert!(a.iter().filter(|m| **m != corpus[0]).count() > 400, "most inputs change");
}
