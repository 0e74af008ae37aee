/**
 * WebGPU for the test suite, in `deno run` children only.
 *
 * `deno test` runs each module on a pool thread. Asking for a WebGPU adapter
 * makes wgpu open its GL backend too (Mesa through libglvnd's EGL), which
 * gives that thread an EGL thread state. The pool's threads exit while the
 * test process exits, and libEGL's exit-time teardown frees every thread's
 * state while an exiting thread's destructor frees its own: the same block
 * freed twice ("double free or corruption", "malloc_consolidate(): invalid
 * chunk size", SIGSEGV) after every test has passed. A child's main thread
 * never runs that destructor, so no test module calls `navigator.gpu` itself.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url);

/** What a child printed, by line, and its exit status. */
export interface ChildRun {
  readonly code: number;
  readonly stdout: string[];
  readonly stderr: string[];
}

/** Runs `deno ARGS` in the repository root (colour off) and collects its output. */
export async function runDeno(
  args: string[],
  env: Record<string, string> = {},
): Promise<ChildRun> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const lines = (b: Uint8Array) => new TextDecoder().decode(b).split("\n").filter((l) => l !== "");
  return { code, stdout: lines(stdout), stderr: lines(stderr) };
}

/** Whether this machine has a WebGPU adapter (asked in a child). */
export async function hasWebGpuAdapter(): Promise<boolean> {
  const { code } = await runDeno([
    "eval",
    "Deno.exit((await navigator.gpu?.requestAdapter().catch(() => null)) ? 0 : 3)",
  ]);
  return code === 0;
}
