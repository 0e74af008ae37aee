/**
 * Fuzzer settings: a fixed seed and a small case count in the default test
 * run (fast, reproducible in CI); `FUZZ_RUNS=20000` (and optionally
 * `FUZZ_SEED=…`) for long runs, e.g.
 * `FUZZ_RUNS=20000 deno test -A tests/robust_fuzz_test.ts`.
 */

/** `fc.assert` parameters: the CI default unless the environment asks for more. */
export function fuzzRuns(ciRuns: number, ciSeed = 42): { seed: number; numRuns: number } {
  const runs = Number(Deno.env.get("FUZZ_RUNS"));
  const seed = Number(Deno.env.get("FUZZ_SEED"));
  return {
    seed: Number.isInteger(seed) ? seed : ciSeed,
    numRuns: Number.isInteger(runs) && runs > 0 ? runs : ciRuns,
  };
}
