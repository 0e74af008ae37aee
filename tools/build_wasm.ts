/**
 * Builds `src/linalg/wasm/kernels.wasm` from the AssemblyScript sources in
 * `src/linalg/wasm/assembly/` with a pinned compiler, so the output is
 * byte-for-byte reproducible (`tests/wasm_test.ts` checks that the committed
 * binary matches its sources).
 *
 * Usage: `deno run -A tools/build_wasm.ts [--out PATH]`
 *
 * @module
 */

import { fileURLToPath } from "node:url";

const ROOT = new URL("../src/linalg/wasm/", import.meta.url);

/** The pinned compiler (its own dependencies are pinned exactly, so builds reproduce). */
export const COMPILER = "npm:assemblyscript@0.28.20/asc";

/** The kernels' entry source file. */
export const ENTRY: URL = new URL("assembly/index.ts", ROOT);

/** Where the built binary is kept. */
export const DEFAULT_OUT: URL = new URL("kernels.wasm", ROOT);

/** Compiler flags; changing them changes the binary (rebuild and commit it). */
export const FLAGS: readonly string[] = [
  "--optimizeLevel",
  "3",
  "--shrinkLevel",
  "0",
  "--runtime",
  "stub",
  "--noAssert",
  "--enable",
  "simd",
  "--use",
  "abort=",
  "--disableWarning",
  "112", // v128 parameters of internal helpers: nothing exports them to JavaScript
];

/**
 * Compiles the kernels to `out`.
 *
 * @example
 * ```ts ignore
 * import { buildKernels } from "./build_wasm.ts";
 * await buildKernels(new URL("file:///tmp/kernels.wasm"));
 * ```
 */
export async function buildKernels(out: URL = DEFAULT_OUT): Promise<void> {
  const args = ["run", "-A", COMPILER, fileURLToPath(ENTRY), "--outFile", fileURLToPath(out)];
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [...args, ...FLAGS],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    const text = new TextDecoder().decode(new Uint8Array([...stdout, ...stderr]));
    throw new Error(`asc failed (exit ${code}):\n${text}`);
  }
}

if (import.meta.main) {
  const at = Deno.args.indexOf("--out");
  const out = at >= 0 ? new URL(Deno.args[at + 1], `file://${Deno.cwd()}/`) : DEFAULT_OUT;
  await buildKernels(out);
  const bytes = await Deno.readFile(out);
  console.log(`${fileURLToPath(out)}: ${bytes.byteLength} bytes`);
}
