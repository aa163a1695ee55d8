#!/usr/bin/env bash
# Every benchmark of the engine on whatever GPU this machine has, as JSON
# lines in one file (default bench-device.jsonl), in a few minutes:
#
#   bench/device.sh [--quick] [--out FILE]
#
# Needs the project's Rust toolchain and a Vulkan (or Metal/DX12/GL) driver;
# `--quick` runs reduced sizes (for a software GPU, e.g. to test the script).
# Each step is timed and a failing step is recorded, not fatal, so one run
# always gives whatever figures the machine can give.
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
out=bench-device.jsonl
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: bench/device.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
: > "$out"
# Seconds since a `date +%s%N` stamp, with millisecond digits (no bc needed).
since() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
note() { printf '{"bench":"device.sh","step":"%s","status":"%s","seconds":%s}\n' "$1" "$2" "$3" >> "$out"; }
# A string as a JSON string (quotes, backslashes, tabs and newlines escaped).
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/\\n/g')"; }

step() {
  local name="$1"; shift
  local t0=$(date +%s%N)
  echo "== $name: $*" >&2
  if "$@" 2>>"$out.log" | grep '^{' >> "$out"; then
    note "$name" ok "$(since $t0)"
  else
    note "$name" failed "$(since $t0)"
    echo "   $name failed (see $out.log)" >&2
  fi
}

if ! cargo build --release --bin pdevi 2>>"$out.log"; then
  echo "cargo build failed (see $out.log)" >&2
  exit 1
fi
pdevi=target/release/pdevi

# The driver check: the adapter pdevi picks, as one JSON line.
if info=$(./$pdevi info 2>>"$out.log"); then
  printf '{"bench":"info","text":%s}\n' "$(json_str "$info")" >> "$out"
else
  note info failed 0
  echo "no GPU adapter (see $out.log)" >&2
fi

if [ "$quick" = 1 ]; then
  step solver ./$pdevi bench solver --sizes 32,64 --batches 1,16 --precond jacobi,mg --layout narrow,wide --min-seconds 0.5
  step vi ./$pdevi bench vi --n 32 --d 32 --steps 10 --precond jacobi,mg
  step mlp ./$pdevi bench mlp --sizes 256 --steps 16
  step render ./$pdevi bench render --n 32 --d 16 --count 40
  step residual ./$pdevi bench residual --n 16 --d 16 --reps 2
  vi_steps=50; vi_n=32
else
  step solver ./$pdevi bench solver --sizes 64,128,256,512 --batches 1,16,64 --precond jacobi,mg --layout narrow,wide
  step vi ./$pdevi bench vi --n 64 --d 64 --steps 50 --precond jacobi,mg
  step mlp ./$pdevi bench mlp
  step render ./$pdevi bench render
  step residual ./$pdevi bench residual --n 32 --d 32
  vi_steps=2000; vi_n=64
fi

# A whole darcy2d inference: full-rank VI from the Laplace start.
run_dir=$(mktemp -d)
t0=$(date +%s%N)
if ./$pdevi run --problem darcy2d --n $vi_n --d $vi_n --steps $vi_steps --family full-rank \
    --precond mg --quiet --out "$run_dir" >/dev/null 2>>"$out.log"; then
  printf '{"bench":"run","n":%d,"steps":%d,"wall_seconds":%s,"metrics":%s}\n' \
    $vi_n $vi_steps "$(since $t0)" "$(tr -d '\n' < "$run_dir/metrics.json")" >> "$out"
  note run ok "$(since $t0)"
else
  note run failed "$(since $t0)"
fi
echo "wrote $out ($(grep -c '^{' "$out") lines)" >&2
