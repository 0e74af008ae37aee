/**
 * Runs several command lines through the CLI in this one process and prints, as one JSON line,
 * each one's exit status and what it printed on stderr. The conformance tests run their WebGPU
 * cases here, all in one `deno run` child (WebGPU only on a main thread: webgpu_child.ts),
 * rather than one child per case.
 *
 * ```
 * deno run -A tests/conformance_child.ts '[{"id":"M01","args":["base.safetensors",…]}]'
 * ```
 */
import { main } from "../cli.ts";

/** One command line to run. */
export interface ChildJob {
  readonly id: string;
  readonly args: string[];
}

/** What one command line did. */
export interface ChildResult {
  readonly code: number;
  readonly stderr: string[];
}

if (import.meta.main) {
  const jobs: ChildJob[] = JSON.parse(Deno.args[0]);
  const results: Record<string, ChildResult> = {};
  const { error, log } = console;
  for (const job of jobs) {
    const stderr: string[] = [];
    console.error = (...a: unknown[]) => stderr.push(a.join(" "));
    console.log = () => {};
    try {
      results[job.id] = { code: await main(job.args), stderr };
    } finally {
      console.error = error;
      console.log = log;
    }
  }
  console.log(JSON.stringify(results));
}
