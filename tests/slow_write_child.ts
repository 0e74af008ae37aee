/**
 * A real write that stalls half-way, in a child process with the CLI's signal
 * handlers: writes `Deno.args[0]` (a safetensors file of two tensors) whose
 * second tensor's data never comes. Prints `writing <temp path>` once the
 * temporary file holds the first tensor; the parent then signals or kills it.
 */
import { exitCleanlyOnSignals } from "../cli.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { liveTempFiles } from "../src/temp_files.ts";

exitCleanlyOnSignals();
const big = new Uint8Array(8 << 20).fill(1);
await writeSafetensors(Deno.args[0], [
  { name: "a", dtype: "U8", shape: [big.length], data: big },
  {
    name: "b",
    dtype: "U8",
    shape: [4],
    data: () => {
      console.log(`writing ${liveTempFiles()[0]}`);
      return new Promise<Uint8Array>(() => setTimeout(() => {}, 1e9)); // never resolves
    },
  },
]);
