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
//! (the long-running fuzzer), included here as a module. (That fuzzer runs
//! its loop in a child process, so an input that aborts the process is
//! counted and kept; here an abort fails the whole test binary, which CI
//! reports just the same.)
//!
//! proptest runs with a fixed seed, so a run is repeatable; another seed
//! explores other inputs: `PROPTEST_RNG_SEED=7 cargo test --release --test
//! fuzz`. Failures the fuzzers found are kept, minimised, in `regressions`.
//! For longer runs: `cargo run --release --example fuzz_readers -- --minutes 5`.

mod common;

#[path = "../examples/fuzz_readers.rs"]
mod engine;

use std::path::PathBuf;
use std::sync::OnceLock;

use engine::{Env, FileSpec, Input, Mutation, Reader};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Where to write the input being read (for a post-mortem when a run
/// aborts); unset by default.
const WITNESS_ENV: &str = "PDEVI_FUZZ_WITNESS";

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
            engine::describe(input, 1500)
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
            engine::describe(base, 1500)
        );
    }
}

/// One mutation of a valid input, weighted towards the changes that
/// reach the parsers (header bytes, numbers, words).
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

/// The tests of one reader: `valid`, `mutated` and `random`.
macro_rules! fuzz_reader {
    ($module:ident, $name:literal, gpu: $gpu:expr, mutated: $nm:expr, random: $nr:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn valid() {
                check_valid($name, $gpu);
            }

            proptest! {
                #![proptest_config(config($nm))]
                #[test]
                fn mutated((base, muts) in mutated_inputs()) {
                    check($name, $gpu, base, &muts)?;
                }
            }

            proptest! {
                #![proptest_config(config($nr))]
                #[test]
                fn random((base, muts) in random_inputs()) {
                    check($name, $gpu, base, &muts)?;
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
fuzz_reader!(mlp_gpu, "mlp-gpu", gpu: true, mutated: 256, random: 128);
fuzz_reader!(encoder, "encoder", gpu: true, mutated: 256, random: 128);
fuzz_reader!(encoder_asset, "encoder-asset", gpu: true, mutated: 64, random: 32);
fuzz_reader!(surrogate, "surrogate", gpu: true, mutated: 256, random: 128);

/// Failures found by fuzzing, minimised: each input must be accepted or
/// rejected with an error naming the file.
mod regressions {
    use super::*;

    /// A safetensors file holding no tensors, with `meta` as its metadata.
    fn empty_safetensors(name: &str, meta: &str) -> FileSpec {
        let header = format!("{{\"__metadata__\":{meta}}}");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        FileSpec::safetensors(name, bytes)
    }

    /// `net.json` of one layer of `out` units beside the valid
    /// `net.safetensors` of the first MLP base.
    fn weights_with_layer(out: &str) -> Input {
        let (_, r) = find("mlp-weights", false);
        let mut input = r.bases[0].clone();
        let json = format!(
            r#"{{"input": 1, "layers": [{{"out": {out}, "act": "identity"}}], "head": {{"kind": "plain"}}}}"#
        );
        assert_eq!(input.files[0].name, "net.json");
        input.files[0] = FileSpec::text("net.json", json.into_bytes());
        input
    }

    mod child {
        use super::*;

        /// `load_weights` sizes its parameter vector from the JSON before
        /// looking at the tensors: 2e11 parameters abort the process.
        #[test]
        fn weights_json_with_a_huge_layer() {
            let input = weights_with_layer("100000000000");
            if let Err(e) = check_input("mlp-weights", false, &input, "a layer of 1e11 units") {
                panic!("{e}");
            }
        }

        /// ... and a layer of 2^63 - 1 units overflows the count: a panic.
        #[test]
        fn weights_json_with_an_overflowing_layer() {
            let input = weights_with_layer("9223372036854775807");
            if let Err(e) = check_input("mlp-weights", false, &input, "a layer of 2^63 - 1 units") {
                panic!("{e}");
            }
        }

        /// ... and with 2^64 - 1 units the count wraps around to 11 in a
        /// release build: writing the first layer's 12 weights panics.
        #[test]
        fn weights_json_with_a_wrapping_layer() {
            let (_, r) = find("mlp-weights", false);
            let mut input = r.bases[0].clone();
            let json = &mut input.files[0];
            assert_eq!(json.name, "net.json");
            let text = String::from_utf8(json.bytes.clone()).unwrap();
            assert!(text.contains("\"out\": 2\n"), "{text}");
            let text = text.replace("\"out\": 2\n", "\"out\": 18446744073709551615\n");
            *json = FileSpec::text("net.json", text.into_bytes());
            if let Err(e) = check_input(
                "mlp-weights",
                false,
                &input,
                "a last layer of 2^64 - 1 units",
            ) {
                panic!("{e}");
            }
        }

        /// An unknown `problem` in a training set's metadata: the error
        /// does not say which file.
        #[test]
        fn simset_with_an_unknown_problem() {
            let input = Input {
                files: vec![empty_safetensors(
                    "set.safetensors",
                    r#"{"format":"pdevi-simset","problem":"darcy3d"}"#,
                )],
            };
            if let Err(e) = check_input("simset", false, &input, "metadata problem = darcy3d") {
                panic!("{e}");
            }
        }

        /// An unknown `family` in encoder.json: the error does not say
        /// which file.
        #[test]
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
            if let Err(e) = check_input(
                "encoder",
                true,
                &input,
                "the small encoder with family \"gelu\"",
            ) {
                panic!("{e}");
            }
        }
    }
}
