/**
 * The end-to-end LyCORIS checks of lycoris_resize_cases.ts through `resize()` on the WebGPU
 * backend, in a `deno run` child (see webgpu_child.ts); without an adapter every test is
 * reported as ignored.
 */

import { requestAdapter } from "../src/linalg/gpu/device.ts";
import {
  checkKeepEverything,
  checkOptimalTruncation,
  checkSubspace,
  type Fixture,
  writeFixture,
} from "./lycoris_resize_cases.ts";
import { runDeno } from "./webgpu_child.ts";

const CHILD = import.meta.main;
const RESULTS = "lycoris_resize_gpu_test results: ";
const CHECKS: Record<string, (f: Fixture) => Promise<void>> = {
  "a file mixing LoRA, LoHa and LoKr layers, kept at every nonzero dimension, is written as LoRA layers ComfyUI maps, each ΔW the dense ΔW within F16 rounding (WebGPU)":
    (f) => checkKeepEverything(f, "gpu"),
  "with size=, each LoRA, LoHa and LoKr layer's error is the Eckart–Young optimum at the rank it keeps (WebGPU)":
    (f) => checkOptimalTruncation(f, "gpu"),
  "subspace scores of LoRA, LoHa and LoKr layers are |uᵀ·W·v| of each dimension's singular vectors (WebGPU)":
    (f) => checkSubspace(f, "gpu"),
};

if (CHILD) {
  const adapter = await requestAdapter();
  let outcomes: Record<string, string | null> | null = null;
  if (adapter) {
    outcomes = {};
    const dir = await Deno.makeTempDir({ prefix: "lycoris_resize_gpu_test_" });
    try {
      const fixture = await writeFixture(dir);
      for (const [name, check] of Object.entries(CHECKS)) {
        try {
          await check(fixture);
          outcomes[name] = null;
        } catch (e) {
          outcomes[name] = e instanceof Error ? e.stack ?? e.message : String(e);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  console.log(RESULTS + JSON.stringify(outcomes));
} else {
  const { code, stdout, stderr } = await runDeno([
    "run",
    "-A",
    new URL(import.meta.url).pathname,
  ]);
  const line = stdout.find((l) => l.startsWith(RESULTS));
  if (code !== 0 || line === undefined) {
    throw new Error(`lycoris_resize_gpu_test child exited with ${code}:\n${stderr.join("\n")}`);
  }
  const parsed: Record<string, string | null> | null = JSON.parse(line.slice(RESULTS.length));
  if (parsed === null) {
    console.log(
      "lycoris_resize_gpu_test: no WebGPU adapter on this machine; GPU tests are skipped",
    );
  }
  for (const name of Object.keys(CHECKS)) {
    Deno.test({
      name,
      ignore: parsed === null,
      fn: () => {
        const outcome = parsed![name];
        if (outcome === undefined) throw new Error(`the child did not run '${name}'`);
        if (outcome !== null) throw new Error(`in the child: ${outcome}`);
      },
    });
  }
}
