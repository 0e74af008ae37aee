/**
 * Wall time and peak RSS of a whole process, for the benchmarks that compare processes side by
 * side: the command runs under GNU time where it exists (else the peak RSS is NaN), and a failed
 * command fails the benchmark with its stderr.
 *
 * @module
 */

/** What one process took. */
export interface ProcessMeasure {
  /** Wall seconds, measured here. */
  readonly seconds: number;
  /** Peak resident memory in MiB (NaN without GNU time). */
  readonly peakMiB: number;
  /** Its standard output. */
  readonly stdout: string;
}

/** Runs `argv` (with `env` added to this process's environment) and measures it. */
export async function measureProcess(
  argv: readonly string[],
  env: Record<string, string> = {},
): Promise<ProcessMeasure> {
  const hasTime = await Deno.stat("/usr/bin/time").then(() => true, () => false);
  const t0 = performance.now();
  const out = await new Deno.Command(hasTime ? "/usr/bin/time" : argv[0], {
    args: hasTime ? ["-f", "%e %M", ...argv] : argv.slice(1),
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${argv.join(" ")} failed:\n${stderr}`);
  const [, kb] = (stderr.trim().split("\n").pop() ?? "").split(" ").map(Number);
  return {
    seconds,
    peakMiB: hasTime ? kb / 1024 : NaN,
    stdout: new TextDecoder().decode(out.stdout),
  };
}

/** Where {@link measureCli} runs the CLI. */
export interface CliRunOptions {
  /** `-d` of the run. */
  readonly device: string;
  /** `-o` of the run. */
  readonly outputFolder: string;
}

/** Runs this repository's CLI with `args` (plus `-d` and `-o`) and measures it. */
export function measureCli(
  args: readonly string[],
  options: CliRunOptions,
): Promise<ProcessMeasure> {
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  return measureProcess([
    Deno.execPath(),
    "run",
    "-A",
    cli,
    ...args,
    "-d",
    options.device,
    "-o",
    options.outputFolder,
  ]);
}
