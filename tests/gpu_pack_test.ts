import { StoredFloatData } from "../src/linalg/backend.ts";
import { Format, Packer } from "../src/linalg/gpu/pack.ts";
import { assertEquals } from "./assert.ts";

Deno.test("Packer: bytes in place, stored data read from its file, float64 as df32 pairs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-pack-" });
  try {
    // A file whose bytes 3…9 are three halves (a stored factor starting at an odd offset).
    const halves = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const path = `${dir}/f.bin`;
    await Deno.writeFile(path, new Uint8Array([9, 9, 9, ...halves, 9]));
    const stored = new StoredFloatData("F16", { path, offset: 3, byteLength: 6 });
    const p = new Packer();
    const a = p.add("F32", new Uint8Array([7, 7, 7, 7]));
    const b = p.addData(stored);
    const c = p.addData({ dtype: "BF16", bytes: new Uint8Array([8, 8]) });
    const d = p.addFloat64(new Float64Array([1 / 3]));
    assertEquals([a, b, c, d], [
      { format: Format.F32, base: 0 },
      { format: Format.F16, base: 2 }, // word 1, in halves
      { format: Format.BF16, base: 6 }, // word 3 (three halves round up to two words)
      { format: Format.DF32, base: 2 }, // word 4 (pairs start on even words), in pairs
    ]);
    const out = p.finish();
    assertEquals(out.byteLength, 6 * 4);
    assertEquals(Array.from(out.subarray(0, 16)), [7, 7, 7, 7, ...halves, 0, 0, 8, 8, 0, 0]);
    const pair = new Float32Array(out.buffer, 16, 2);
    assertEquals(pair[0], Math.fround(1 / 3));
    assertEquals(pair[1], Math.fround(1 / 3 - Math.fround(1 / 3)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
