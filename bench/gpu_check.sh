#!/usr/bin/env bash
# One prepared check of the WebGPU backend on a machine with a real GPU
# (x86-64 Linux; written for an NVIDIA H200). Installs nothing from the
# network: Deno must be carried in (./.bench/deno or .bench/deno.gz, $DENO, or on PATH), and
# when the system has no Vulkan loader, carried Debian packages in .gl/ are
# unpacked (libvulkan1 and friends, fetched beforehand with
# `apt-get download`).
#
# It runs, each under its own time limit, and writes to $OUT
# (default .bench/gpu_check/):
#   env.txt           GPU, driver, Deno, the WebGPU adapter and its features
#   test.txt          deno test tests/gpu_backend_test.ts
#   bench_s4.txt/json bench/gpu_bench.ts at 1/4 width (quick, always finishes)
#   bench_full.txt/json  bench/gpu_bench.ts at full SDXL size (fixtures generated here, ~7.2 GB)
#   resize_full.txt   the CLI end to end with -d gpu, cold norms (spn_ckpt), wall time and peak RSS
#   upload.txt        bench/gpu_upload_bench.ts: file reads vs writeBuffer vs the norms passes
#
# The stage limits (env 60 s, test 90, bench_s4 90, bench_full 240, resize_full 60, upload 60) add up to 10 minutes; the
# stages seen on an H200 took about 70 s in all (full-size fixtures: 31 s), so the whole check fits one
# 10-minute device command. A stage that runs out of time is killed, its
# output so far is kept, and the script goes on (exit status 1 at the end).
#
# From a session that has the device tool: `gzip -9 -c "$(readlink -f "$(command -v deno)")"
# > .bench/deno.gz` (the binary itself is over the 64 MiB a call can carry), fetch the Vulkan
# loader packages into .gl/ as the device README says, then one call:
#   run(command: "bash bench/gpu_check.sh", carry: [".bench/deno.gz", ".gl"], timeout_s: 600)
# and copy the figures from $OUT/*.txt into bench/RESULTS.md.
#
# Usage: bash bench/gpu_check.sh        (GPU_CHECK_FULL=0 skips the full-size stages;
#                                        GPU_CHECK_FULL_SECONDS changes bench_full's limit, default 240)

set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.bench/gpu_check}"
mkdir -p "$OUT"

if [ -z "${DENO:-}" ] && [ ! -x ./.bench/deno ] && [ -f ./.bench/deno.gz ]; then
  gzip -dc ./.bench/deno.gz >./.bench/deno && chmod +x ./.bench/deno
fi
if [ -n "${DENO:-}" ]; then
  :
elif [ -x ./.bench/deno ]; then
  DENO=./.bench/deno
elif command -v deno >/dev/null 2>&1; then
  DENO=deno
else
  echo "gpu_check: no deno (put the binary at ./.bench/deno or on PATH)" | tee "$OUT/env.txt"
  exit 2
fi

# Vulkan loader: unpack the carried packages when the system has none.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  if compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
fi
# The NVIDIA driver's ICD, when the loader would not find it by itself.
NV_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$NV_ICD" ] &&
  ! compgen -G "/usr/share/vulkan/icd.d/nvidia*" >/dev/null &&
  ! compgen -G "/etc/vulkan/icd.d/nvidia*" >/dev/null; then
  export VK_DRIVER_FILES="$NV_ICD"
fi
# Mesa's and wgpu's window-system probes want a runtime dir; give them one.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
fi

{
  echo "# date: $(date -u +%FT%TZ)"
  echo "# host: $(uname -srm), $(nproc) cores"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "# deno: $("$DENO" --version | head -1)"
  echo "# VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  timeout 60 "$DENO" eval '
    const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
    if (!a) { console.log("WebGPU adapter: none"); Deno.exit(0); }
    console.log("WebGPU adapter:", JSON.stringify({
      description: a.info.description, vendor: a.info.vendor, architecture: a.info.architecture,
      device: a.info.device, fallback: a.info.isFallbackAdapter }));
    console.log("features:", [...a.features].sort().join(" "));
    console.log("limits:", JSON.stringify({
      maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
      maxBufferSize: a.limits.maxBufferSize,
      maxComputeWorkgroupsPerDimension: a.limits.maxComputeWorkgroupsPerDimension }));'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
run() { # run NAME SECONDS COMMAND...: output to $OUT/NAME.txt, keeps going on failure
  local name=$1 seconds=$2
  shift 2
  echo "== $name (limit ${seconds}s)"
  local t0=$SECONDS
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/$name.txt"
  [ "$rc" -eq 0 ] || status=1
}

run test 90 "$DENO" test -A tests/gpu_backend_test.ts
run bench_s4 90 "$DENO" run -A bench/gpu_bench.ts --scale 0.25 --json "$OUT/bench_s4.json"
if [ "${GPU_CHECK_FULL:-1}" != 0 ]; then
  run bench_full "${GPU_CHECK_FULL_SECONDS:-240}" \
    "$DENO" run -A bench/gpu_bench.ts --scale 1 --json "$OUT/bench_full.json"
  # End to end on the GPU: cold spectral norms + decomposition + write (fixtures from above).
  run resize_full 60 /usr/bin/time -v "$DENO" run -A cli.ts .bench/sdxl_base_full.safetensors \
    .bench/lora_r32.safetensors -d gpu --no_norms_cache -r spn_ckpt=1,thr=-2 -o /tmp/resize-lora-gpu-check -vv
  run upload 60 "$DENO" run -A bench/gpu_upload_bench.ts
fi
exit "$status"
