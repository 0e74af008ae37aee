/**
 * LoHa and LoKr layers through the WebGPU backend against dense f64 references (the cases of
 * lycoris_cases.ts), on whatever adapter this machine has. As in gpu_backend_test.ts, the GPU
 * work runs in a `deno run` child (see webgpu_child.ts); without an adapter every test is
 * reported as ignored.
 */

import type { Backend } from "../src/linalg/backend.ts";
import { createGpuBackend } from "../src/linalg/gpu/backend.ts";
import { requestAdapter } from "../src/linalg/gpu/device.ts";
import { checkCase, LYCORIS_CASES } from "./lycoris_cases.ts";
import { runDeno } from "./webgpu_child.ts";

const CHILD = import.meta.main;
const RESULTS = "lycoris_gpu_test results: ";
const name = (what: string) =>
  `${what}: kept at every dimension, the output ΔW is the dense ΔW within F16 rounding, and a truncation at k has the Eckart–Young error (WebGPU)`;

if (CHILD) {
  const adapter = await requestAdapter();
  let outcomes: Record<string, string | null> | null = null;
  if (adapter !== null) {
    outcomes = {};
    const backend: Backend = await createGpuBackend({ adapter });
    try {
      for (const c of LYCORIS_CASES) {
        try {
          await checkCase(backend, c);
          outcomes[name(c.what)] = null;
        } catch (e) {
          outcomes[name(c.what)] = e instanceof Error ? e.stack ?? e.message : String(e);
        }
      }
    } finally {
      await backend.close();
    }
  }
  console.log(RESULTS + JSON.stringify(outcomes));
} else {
  const results = await runInChild();
  if (results === null) {
    console.log("lycoris_gpu_test: no WebGPU adapter on this machine; GPU tests are skipped");
  }
  for (const c of LYCORIS_CASES) {
    Deno.test({
      name: name(c.what),
      ignore: results === null,
      fn: () => {
        const outcome = results!.get(name(c.what));
        if (outcome === undefined) throw new Error(`the child did not run '${name(c.what)}'`);
        if (outcome !== null) throw new Error(`in the child: ${outcome}`);
      },
    });
  }
}

/** Each test's failure (null: passed) in a child run, or null when the child has no adapter. */
async function runInChild(): Promise<Map<string, string | null> | null> {
  const { code, stdout, stderr } = await runDeno(["run", "-A", new URL(import.meta.url).pathname]);
  const line = stdout.find((l) => l.startsWith(RESULTS));
  if (code !== 0 || line === undefined) {
    throw new Error(`lycoris_gpu_test child exited with ${code}:\n${stderr.join("\n")}`);
  }
  const parsed = JSON.parse(line.slice(RESULTS.length));
  return parsed === null ? null : new Map(Object.entries(parsed));
}
