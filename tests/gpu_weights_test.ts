import { BackendError } from "../src/errors.ts";
import { WeightReader } from "../src/linalg/gpu/weights.ts";
import { assertEquals, assertRejects } from "./assert.ts";

Deno.test("WeightReader: a block of rows or a whole weight, F64 narrowed to F32, truncation named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-weights-" });
  const reader = new WeightReader();
  try {
    // A 3 × 2 F32 weight at byte 4, then a 2 × 2 F64 one.
    const f32 = new Float32Array([1, 2, 3, 4, 5, 6]), f64 = new Float64Array([0.1, 2, 3, 1e300]);
    const path = `${dir}/w.bin`;
    await Deno.writeFile(
      path,
      new Uint8Array([
        0,
        0,
        0,
        0,
        ...new Uint8Array(f32.buffer),
        ...new Uint8Array(f64.buffer),
      ]),
    );
    const into = new Uint8Array(8);
    const rows = reader.readRowsInto(
      { path, dtype: "F32", offset: 4, rows: 3, cols: 2 },
      1,
      1,
      into,
    );
    assertEquals(rows.dtype, "F32");
    assertEquals(Array.from(new Float32Array(rows.bytes.buffer)), [3, 4]);
    const narrow = new Uint8Array(16);
    const ref = { path, dtype: "F64" as const, offset: 28, rows: 2, cols: 2 };
    assertEquals(reader.readRowsInto(ref, 0, 2, narrow).dtype, "F32");
    assertEquals(Array.from(new Float32Array(narrow.buffer)), [Math.fround(0.1), 2, 3, Infinity]);
    const whole = reader.read(ref);
    assertEquals(Array.from(new Float32Array(whole.bytes.buffer)), [
      Math.fround(0.1),
      2,
      3,
      Infinity,
    ]);
    await assertRejects(
      () => Promise.try(() => reader.readRowsInto({ ...ref, rows: 3 }, 2, 1, new Uint8Array(8))),
      BackendError,
      "truncated",
    );
    await assertRejects(
      () => Promise.try(() => reader.readRowsInto(ref, 1, 2, new Uint8Array(16))),
      BackendError,
      "invalid",
    );
  } finally {
    reader.close();
    await Deno.remove(dir, { recursive: true });
  }
});
