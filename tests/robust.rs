//! Nothing lost, nothing crashes: oversized requests exit with a message,
//! a run killed after a checkpoint resumes to the very same result, Ctrl-C
//! leaves readable outputs, a second writer of a folder is refused, and
//! `--dry-run` plans without running. These drive the `pdevi` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pdevi() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pdevi"));
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdevi-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(args: &[&str]) -> Output {
    pdevi().args(args).output().expect("the pdevi binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Wait until `path` exists (the child still running), at most `secs`.
fn wait_for(child: &mut Child, path: &Path, secs: u64) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("pdevi exited ({s}) before writing {}", path.display());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{} did not appear within {secs} s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The file is renamed into place whole; give the process a moment to move on.
    std::thread::sleep(Duration::from_millis(200));
}

/// Start `cmd`, wait for its first checkpoint in `dir`, and kill it (SIGKILL).
fn kill_after_checkpoint(mut cmd: Command, dir: &Path) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&mut child, &dir.join("checkpoint.safetensors"), 120);
    child.kill().unwrap();
    let _ = child.wait();
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn oversized_requests_exit_with_a_message_not_an_abort() {
    let out = tmp("oversize");
    let o = out.to_str().unwrap();
    let set = format!("{o}/set.safetensors");
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "--n", "16384", "--out", o],
        vec![
            "run",
            "--problem",
            "poisson1d",
            "--n",
            "10000000000",
            "--out",
            o,
        ],
        vec!["run", "--n", "64", "--d", "100000", "--out", o],
        vec![
            "run",
            "--n",
            "16",
            "--d",
            "4",
            "--samples",
            "10000000",
            "--out",
            o,
        ],
        vec![
            "run",
            "--n",
            "16",
            "--d",
            "4",
            "--steps",
            "100000000000",
            "--out",
            o,
        ],
        vec![
            "mcmc", "--n", "16", "--d", "4", "--chains", "10000000", "--out", o,
        ],
        vec![
            "mcmc",
            "--n",
            "16",
            "--d",
            "4",
            "--samples",
            "100000000",
            "--out",
            o,
        ],
        vec!["simulate", "--count", "1000000000", "--out", &set],
        vec!["calibrate", "--problems", "100000000", "--out", o],
    ];
    for args in cases {
        let r = run(&args);
        let all = text(&r);
        assert!(!r.status.success(), "{args:?} should fail:\n{all}");
        assert_eq!(
            r.status.code(),
            Some(1),
            "{args:?}: a clean error exit:\n{all}"
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("error:"), "{args:?}: one-line error:\n{all}");
        for bad in ["panicked", "stack backtrace", "memory allocation of"] {
            assert!(!err.contains(bad), "{args:?}: {bad}:\n{all}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let (a, b) = (tmp("vi-a"), tmp("vi-b"));
    let common = [
        "run",
        "--problem",
        "darcy2d",
        "--n",
        "16",
        "--d",
        "8",
        "--steps",
        "300",
        "--samples",
        "8",
        "--quiet",
    ];
    // Uninterrupted.
    let r = pdevi()
        .args(common)
        .args(["--out", a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    // Killed (SIGKILL) after its first checkpoint, then resumed.
    let mut cmd = pdevi();
    cmd.args(common)
        .args(["--checkpoint-every", "50", "--out", b.to_str().unwrap()]);
    kill_after_checkpoint(cmd, &b);
    let r = run(&["run", "--resume", b.to_str().unwrap(), "--quiet"]);
    assert!(r.status.success(), "{}", text(&r));
    let m: serde_json::Value = serde_json::from_slice(&bytes(&b.join("metrics.json"))).unwrap();
    let from = m["resumed_from"].as_u64().expect("resumed_from");
    assert!((50..300).contains(&from), "{m}");
    assert_eq!(m["steps_done"], 300);
    // Bit for bit: the same device, the same kernels, the same state.
    for f in ["posterior_mean_xi.npy", "posterior_cov_xi.npy"] {
        assert!(
            bytes(&a.join(f)) == bytes(&b.join(f)),
            "{f} differs after resume from {from}"
        );
    }
    // A resumed run keeps its settings.
    let r = run(&[
        "run",
        "--resume",
        b.to_str().unwrap(),
        "--lr",
        "0.5",
        "--quiet",
    ]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("`lr`"),
        "{}",
        text(&r)
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn killed_mcmc_and_training_resume_to_the_same_result() {
    let (a, b) = (tmp("mc-a"), tmp("mc-b"));
    let common = [
        "mcmc",
        "--problem",
        "darcy2d",
        "--n",
        "16",
        "--d",
        "8",
        "--chains",
        "8",
        "--samples",
        "200",
        "--warmup",
        "200",
        "--quiet",
    ];
    let r = pdevi()
        .args(common)
        .args(["--out", a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let mut cmd = pdevi();
    cmd.args(common)
        .args(["--checkpoint-every", "150", "--out", b.to_str().unwrap()]);
    kill_after_checkpoint(cmd, &b);
    let r = run(&["mcmc", "--resume", b.to_str().unwrap(), "--quiet"]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        bytes(&a.join("samples_xi.npy")) == bytes(&b.join("samples_xi.npy")),
        "MCMC draws differ after resume"
    );

    // Training: an encoder on a small set, killed after epoch 2 of 6.
    let set = a.join("set.safetensors");
    let r = run(&[
        "simulate",
        "--problem",
        "darcy2d",
        "--n",
        "16",
        "--d",
        "8",
        "--count",
        "1200",
        "--quiet",
        "--out",
        set.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let (ta, tb) = (a.join("enc"), b.join("enc"));
    let train = |out: &Path, extra: &[&str]| {
        let mut c = pdevi();
        c.args([
            "train",
            "encoder",
            "--data",
            set.to_str().unwrap(),
            "--epochs",
            "6",
            "--patience",
            "0",
            "--hidden",
            "64",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra);
        c
    };
    let r = train(&ta, &[]).output().unwrap();
    assert!(r.status.success(), "{}", text(&r));
    kill_after_checkpoint(train(&tb, &["--checkpoint-every", "2"]), &tb);
    let r = train(
        &tb,
        &["--checkpoint-every", "2", "--resume", tb.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        bytes(&ta.join("member_0.safetensors")) == bytes(&tb.join("member_0.safetensors")),
        "encoder weights differ after resume"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn ctrl_c_leaves_readable_outputs_and_a_second_writer_is_refused() {
    let out = tmp("sigint");
    let o = out.to_str().unwrap();
    let mut child = pdevi()
        .args([
            "run",
            "--problem",
            "darcy2d",
            "--n",
            "16",
            "--d",
            "8",
            "--steps",
            "1000000",
            "--samples",
            "4",
            "--checkpoint-every",
            "20",
            "--quiet",
            "--out",
            o,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, &out.join("checkpoint.safetensors"), 120);
    // A second run into the same folder while the first writes it.
    let r = run(&[
        "run",
        "--problem",
        "darcy2d",
        "--n",
        "16",
        "--d",
        "8",
        "--steps",
        "5",
        "--out",
        o,
    ]);
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(
        !r.status.success()
            && err.contains("another pdevi")
            && err.contains(&child.id().to_string()),
        "{}",
        text(&r)
    );
    // SIGINT: the step finishes, the outputs are written, exit 130.
    // The shell's builtin `kill`: no procps needed on a bare machine.
    let k = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(k.success());
    let o2 = child.wait_with_output().unwrap();
    assert_eq!(o2.status.code(), Some(130), "{}", text(&o2));
    let err = String::from_utf8_lossy(&o2.stderr);
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    let m: serde_json::Value = serde_json::from_slice(&bytes(&out.join("metrics.json"))).unwrap();
    assert_eq!(m["interrupted"], true, "{m}");
    for f in [
        "posterior_mean_xi.npy",
        "posterior_cov_xi.npy",
        "posterior_mean_z.npy",
        "posterior_std_u.npy",
    ] {
        pdevi::output::io::read_npy(&out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    for f in ["summary.png", "elbo.png"] {
        image::open(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    // No temporary files or lock left behind.
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn dry_run_plans_without_running() {
    let out = tmp("dry");
    let r = run(&[
        "run",
        "--problem",
        "darcy2d",
        "--n",
        "32",
        "--d",
        "16",
        "--dry-run",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("a JSON plan");
    assert_eq!(v["dry_run"], true);
    assert!(v["device_bytes"].as_u64().unwrap() > 100_000, "{v}");
    assert!(v["dispatches_per_step"].as_u64().unwrap() > 0, "{v}");
    assert!(!v["largest_buffers"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        !out.join("posterior_mean_xi.npy").exists(),
        "a dry run writes no posterior"
    );
    let _ = std::fs::remove_dir_all(&out);
}
