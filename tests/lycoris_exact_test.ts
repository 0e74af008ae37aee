/**
 * LoHa and LoKr layers through the CPU backend against dense f64 references (see
 * lycoris_cases.ts).
 */

import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { checkCase, LYCORIS_CASES } from "./lycoris_cases.ts";

for (const c of LYCORIS_CASES) {
  Deno.test(`${c.what}: kept at every dimension, the output ΔW is the dense ΔW within F16 rounding, and a truncation at k has the Eckart–Young error (CPU)`, async () => {
    // Workers only: formed factors must travel to a worker thread.
    await using backend = await createCpuBackend({ workers: 1, inlineWork: 0 });
    await checkCase(backend, c);
  });
}
