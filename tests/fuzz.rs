//! Nothing lost, nothing crashes: property-based fuzzing of every file
//! reader of the engine (observation CSVs, run configs, `.npy` arrays and
//! vectors, training sets, MLP weights, encoder and surrogate folders).
//!
//! For each reader, proptest feeds (a) random bytes and random token soup
//! and (b) mutations of valid files written by the engine's own writers
//! (bytes flipped, inserted or deleted, truncation, lines duplicated,
//! dropped or swapped, numbers replaced by NaN/inf/huge/negative/off-grid
//! values, words by other words of the format, floats in the data by
//! NaN/inf). Every input must be accepted or rejected with an error whose
//! message names the file (or, for folder readers, the folder); a panic is
//! a failure reported with the input. The unmutated valid files must be
//! accepted.
//!
//! The readers, inputs and mutations live in `examples/fuzz_readers.rs`
//! (the long-running fuzzer), included here as a module. Each reader's
//! properties run in a child process (this test binary, filtered to that
//! reader's `#[ignore]`d `child` tests), so that an input that aborts the
//! process (a huge allocation, a stack overflow) fails that reader's test
//! with the input that was being read, instead of killing the whole run.

mod common;

#[path = "../examples/fuzz_readers.rs"]
mod engine;

use std::path::PathBuf;
use std::sync::OnceLock;

use engine::{Env, FileSpec, Input, Mutation, Reader};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Set in a child process: where to write the input being read.
const WITNESS_ENV: &str = "PDEVI_FUZZ_WITNESS";

/// A reader's child process taking longer than this is taken to hang.
const CHILD_LIMIT_S: u64 = 300;

/// The readers and their environment, without and with a GPU.
fn fixture(gpu: bool) -> &'static (Env, Vec<Reader>) {
    static CPU: OnceLock<(Env, Vec<Reader>)> = OnceLock::new();
    static GPU: OnceLock<(Env, Vec<Reader>)> = OnceLock::new();
    let build = |ctx| {
        let env = Env::new(ctx);
        let readers = engine::readers(&env);
        (env, readers)
    };
    if gpu {
        GPU.get_or_init(|| build(Some(common::ctx())))
    } else {
        CPU.get_or_init(|| build(None))
    }
}

/// proptest settings: `cases` inputs, no regression files, a fixed seed
/// (so a run is repeatable) unless `PROPTEST_RNG_SEED` picks another.
fn config(cases: u32) -> Config {
    let default = Config::default();
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        rng_seed: match default.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0x5EED_F022),
            chosen => chosen,
        },
        ..default
    }
}

fn find(name: &str, gpu: bool) -> (&'static Env, &'static Reader) {
    let (env, readers) = fixture(gpu);
    let r = readers
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no reader {name}"));
    (env, r)
}

/// Run reader `name` on `input`; the outcome and the input unless it was
/// accepted or rejected naming the file. `how` says how the input was made.
fn check_input(name: &str, gpu: bool, input: &Input, how: &str) -> Result<(), String> {
    let (env, r) = find(name, gpu);
    let dir = engine::fresh_dir(r.name);
    if let Some(w) = std::env::var_os(WITNESS_ENV) {
        let _ = std::fs::write(
            PathBuf::from(w),
            format!(
                "reader: {}\nfolder: {}\n{how}\n{}",
                r.name,
                dir.display(),
                engine::describe(input, 2000)
            ),
        );
    }
    let outcome = engine::run_reader(env, r, input, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    if outcome.is_failure() {
        return Err(format!(
            "reader {}: {:?}\nthe error must name {:?}\ninput: {how}\n{}",
            r.name,
            outcome,
            engine::needle(r, input, &dir),
            engine::describe(input, 3000)
        ));
    }
    Ok(())
}

/// [`check_input`] on base `base` (modulo the number of bases) changed by `muts`.
fn check(name: &str, gpu: bool, base: usize, muts: &[Mutation]) -> Result<(), TestCaseError> {
    let (_, r) = find(name, gpu);
    let b = base % r.bases.len();
    let input = engine::mutate(&r.bases[b], muts, r.vocab);
    check_input(name, gpu, &input, &format!("base {b}, mutations {muts:?}"))
        .map_err(TestCaseError::fail)
}

/// Every valid base of `name` is accepted.
fn check_valid(name: &str, gpu: bool) {
    let (env, r) = find(name, gpu);
    for (k, base) in r.bases.iter().enumerate() {
        let dir = engine::fresh_dir(r.name);
        let outcome = engine::run_reader(env, r, base, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            outcome,
            engine::Outcome::Accepted,
            "reader {} refused its valid input {k}:\n{}",
            r.name,
            engine::describe(base, 3000)
        );
    }
}

/// Run the tests `module::child::{tests}` in a child process; a crash
/// there fails this test with the input being read.
fn isolated(module: &str, tests: &[&str]) {
    let names: Vec<String> = tests
        .iter()
        .map(|t| format!("{module}::child::{t}"))
        .collect();
    let filter = format!("{module}::child");
    let expect_tests = names.len();
    let witness = std::env::temp_dir().join(format!(
        "pdevi-fuzz-witness-{}-{}",
        std::process::id(),
        filter.replace(':', "_")
    ));
    let _ = std::fs::remove_file(&witness);
    let log = witness.with_extension("log");
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::fs::File::create(&log).expect("create the child's log");
    let mut child = std::process::Command::new(exe)
        .args(&names)
        .args(["--exact", "--ignored", "--test-threads=1"])
        .env(WITNESS_ENV, &witness)
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .spawn()
        .expect("start the child test process");
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(CHILD_LIMIT_S);
    let status = loop {
        match child.try_wait().expect("wait for the child test process") {
            Some(s) => break Some(s),
            None if std::time::Instant::now() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(12_000)..].iter().collect()
    };
    let inflight =
        || std::fs::read_to_string(&witness).unwrap_or_else(|_| "(no input recorded)".into());
    let Some(status) = status else {
        panic!(
            "{filter}: HUNG: no result after {CHILD_LIMIT_S} s; the input being read:\n{}\n--- child output:\n{tail}",
            inflight()
        );
    };
    if status.success() {
        let ran = text.contains(&format!("test result: ok. {expect_tests} passed"));
        assert!(
            ran,
            "the child process for {filter} did not run {expect_tests} tests:\n{tail}"
        );
        let _ = std::fs::remove_file(&witness);
        return;
    }
    if status.code().is_some() {
        let _ = std::fs::remove_file(&witness);
        panic!("{filter}: a property failed (output of the child process):\n{tail}");
    }
    panic!(
        "{filter}: the process CRASHED ({}) while reading this input (nothing can catch this: \
         an abort or a fatal signal):\n{}\n--- child output:\n{tail}",
        status,
        inflight()
    );
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let u = || any::<usize>();
    let header = || prop::bool::weighted(0.7);
    prop_oneof![
        3 => (u(), u(), any::<u8>(), header()).prop_map(|(file, at, mask, header)| Mutation::Flip {
            file,
            at,
            mask,
            header
        }),
        1 => (u(), u()).prop_map(|(file, at)| Mutation::Truncate { file, at }),
        1 => (u(), u(), prop::collection::vec(any::<u8>(), 0..12), header())
            .prop_map(|(file, at, junk, header)| Mutation::Insert { file, at, junk, header }),
        1 => (u(), u(), u()).prop_map(|(file, at, len)| Mutation::Delete { file, at, len }),
        1 => (u(), u()).prop_map(|(file, at)| Mutation::DupLine { file, at }),
        1 => (u(), u()).prop_map(|(file, at)| Mutation::DropLine { file, at }),
        1 => (u(), u(), u()).prop_map(|(file, a, b)| Mutation::SwapLines { file, a, b }),
        3 => (u(), u(), u()).prop_map(|(file, at, with)| Mutation::Number { file, at, with }),
        3 => (u(), u(), u()).prop_map(|(file, at, with)| Mutation::Word { file, at, with }),
        2 => (u(), u(), u()).prop_map(|(file, at, with)| Mutation::Float { file, at, with }),
    ]
}

/// A base and 1-4 mutations of it.
fn mutated_inputs() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), prop::collection::vec(mutation(), 1..5))
}

/// A base with one of its files replaced by random bytes or random tokens.
fn random_inputs() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    let bytes = (any::<usize>(), prop::collection::vec(any::<u8>(), 0..400))
        .prop_map(|(file, bytes)| Mutation::Bytes { file, bytes });
    let soup = (
        any::<usize>(),
        prop::collection::vec((any::<usize>(), any::<usize>()), 0..40),
    )
        .prop_map(|(file, parts)| Mutation::Soup { file, parts });
    (any::<usize>(), prop_oneof![bytes, soup]).prop_map(|(b, m)| (b, vec![m]))
}

/// The tests of one reader: `valid`, `mutated` and `random` in a child
/// process (`isolated`), each run by the parent test `fuzz`.
macro_rules! fuzz_reader {
    ($module:ident, $name:literal, gpu: $gpu:expr, mutated: $nm:expr, random: $nr:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn fuzz() {
                isolated(stringify!($module), &["valid", "mutated", "random"]);
            }

            mod child {
                use super::super::*;

                #[test]
                #[ignore = "run in a child process by the parent test `fuzz`"]
                fn valid() {
                    check_valid($name, $gpu);
                }

                proptest! {
                    #![proptest_config(config($nm))]
                    #[test]
                    #[ignore = "run in a child process by the parent test `fuzz`"]
                    fn mutated((base, muts) in mutated_inputs()) {
                        check($name, $gpu, base, &muts)?;
                    }
                }

                proptest! {
                    #![proptest_config(config($nr))]
                    #[test]
                    #[ignore = "run in a child process by the parent test `fuzz`"]
                    fn random((base, muts) in random_inputs()) {
                        check($name, $gpu, base, &muts)?;
                    }
                }
            }
        }
    };
}

fuzz_reader!(obs_darcy2d, "obs-darcy2d", gpu: false, mutated: 256, random: 128);
fuzz_reader!(obs_poisson1d, "obs-poisson1d", gpu: false, mutated: 256, random: 128);
fuzz_reader!(config_toml, "config-toml", gpu: false, mutated: 256, random: 128);
fuzz_reader!(npy, "npy", gpu: false, mutated: 256, random: 128);
fuzz_reader!(vector_npy, "vector-npy", gpu: false, mutated: 256, random: 128);
fuzz_reader!(vector_text, "vector-text", gpu: false, mutated: 256, random: 128);
fuzz_reader!(simset, "simset", gpu: false, mutated: 256, random: 128);
fuzz_reader!(mlp_weights, "mlp-weights", gpu: false, mutated: 256, random: 128);
fuzz_reader!(mlp_gpu, "mlp-gpu", gpu: true, mutated: 64, random: 32);
fuzz_reader!(encoder, "encoder", gpu: true, mutated: 128, random: 32);
fuzz_reader!(encoder_asset, "encoder-asset", gpu: true, mutated: 32, random: 16);
fuzz_reader!(surrogate, "surrogate", gpu: true, mutated: 128, random: 32);

/// Failures found by fuzzing, minimised: each input must be accepted or
/// rejected with an error naming the file.
mod regressions {
    use super::*;

    #[test]
    fn fuzz() {
        isolated(
            "regressions",
            &[
                "weights_json_with_a_huge_layer",
                "weights_json_with_an_overflowing_layer",
                "weights_json_with_a_wrapping_layer",
                "simset_with_an_unknown_problem",
                "encoder_with_an_unknown_family",
            ],
        );
    }

    /// A safetensors file holding no tensors, with `meta` as its metadata.
    fn empty_safetensors(name: &str, meta: &str) -> FileSpec {
        let header = if meta.is_empty() {
            "{}".to_string()
        } else {
            format!("{{\"__metadata__\":{meta}}}")
        };
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        FileSpec::safetensors(name, bytes)
    }

    fn weights_with_layer(out: &str) -> Input {
        let json = format!(
            r#"{{"input": 1, "layers": [{{"out": {out}, "act": "identity"}}], "head": {{"kind": "plain"}}}}"#
        );
        Input {
            files: vec![
                FileSpec::text("net.json", json.into_bytes()),
                empty_safetensors("net.safetensors", ""),
            ],
        }
    }

    mod child {
        use super::*;

        /// `load_weights` sizes its parameter vector from the JSON before
        /// looking at the tensors: 2e11 parameters abort the process.
        #[test]
        #[ignore = "run in a child process by the parent test `fuzz`"]
        fn weights_json_with_a_huge_layer() {
            let input = weights_with_layer("100000000000");
            check_input("mlp-weights", false, &input, "a layer of 1e11 units").unwrap();
        }

        /// ... and a layer of 2^63 - 1 units overflows the count: a panic.
        #[test]
        #[ignore = "run in a child process by the parent test `fuzz`"]
        fn weights_json_with_an_overflowing_layer() {
            let input = weights_with_layer("9223372036854775807");
            check_input("mlp-weights", false, &input, "a layer of 2^63 - 1 units").unwrap();
        }

        /// ... and with 2^64 - 1 units the count wraps around to 11 in a
        /// release build: writing the first layer's 12 weights panics.
        #[test]
        #[ignore = "run in a child process by the parent test `fuzz`"]
        fn weights_json_with_a_wrapping_layer() {
            let (_, r) = find("mlp-weights", false);
            let mut input = r.bases[0].clone();
            let json = &mut input.files[0];
            assert_eq!(json.name, "net.json");
            let text = String::from_utf8(json.bytes.clone()).unwrap();
            assert!(text.contains("\"out\": 2\n"), "{text}");
            let text = text.replace("\"out\": 2\n", "\"out\": 18446744073709551615\n");
            *json = FileSpec::text("net.json", text.into_bytes());
            check_input(
                "mlp-weights",
                false,
                &input,
                "a last layer of 2^64 - 1 units",
            )
            .unwrap();
        }

        /// An unknown `problem` in a training set's metadata: the error
        /// does not say which file.
        #[test]
        #[ignore = "run in a child process by the parent test `fuzz`"]
        fn simset_with_an_unknown_problem() {
            let input = Input {
                files: vec![empty_safetensors(
                    "set.safetensors",
                    r#"{"format":"pdevi-simset","problem":"darcy3d"}"#,
                )],
            };
            check_input("simset", false, &input, "metadata problem = darcy3d").unwrap();
        }

        /// An unknown `family` in encoder.json: the error does not say
        /// which file.
        #[test]
        #[ignore = "run in a child process by the parent test `fuzz`"]
        fn encoder_with_an_unknown_family() {
            let (_, r) = find("encoder", true);
            let mut input = r.bases[0].clone();
            let json = &mut input.files[0];
            assert_eq!(json.name, "encoder.json");
            let text = String::from_utf8(json.bytes.clone()).unwrap();
            assert!(text.contains("\"mean-field\""));
            *json = FileSpec::text(
                "encoder.json",
                text.replace("\"mean-field\"", "\"gelu\"").into_bytes(),
            );
            check_input(
                "encoder",
                true,
                &input,
                "the small encoder with family \"gelu\"",
            )
            .unwrap();
        }
    }
}
