import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { defaultCacheDir, fingerprintFile, NormsCache, normsKey } from "../src/norms_cache.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";

async function writeModel(path: string, values: number[]) {
  await writeSafetensors(path, [
    {
      name: "w.weight",
      dtype: "F16",
      shape: [2, values.length / 2],
      data: encodeFloats(values, "F16"),
    },
  ]);
}

Deno.test("fingerprint changes with the content, not with the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeModel(join(dir, "a.safetensors"), [1, 2, 3, 4]);
    await Deno.copyFile(join(dir, "a.safetensors"), join(dir, "b.safetensors"));
    const a = await fingerprintFile(join(dir, "a.safetensors"));
    assertEquals(a, await fingerprintFile(join(dir, "b.safetensors")));
    await writeModel(join(dir, "a.safetensors"), [1, 2, 3, 5]);
    assert(a !== await fingerprintFile(join(dir, "a.safetensors")));
    assertEquals(a.length, 64);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fingerprint samples a large sparse file quickly and sees a changed block", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "big.safetensors");
    const n = 3 * 2 ** 30 / 2; // 3 GiB of F16 zeros, sparse on disk
    // Written by hand: a header and a sparse data section.
    const header = new TextEncoder().encode(
      `{"x":{"dtype":"F16","shape":[${n}],"data_offsets":[0,${2 * n}]}}`,
    );
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(header.length), true);
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    await f.write(prefix);
    await f.write(header);
    await f.truncate(8 + header.length + 2 * n);
    f.close();
    const t0 = performance.now();
    const before = await fingerprintFile(path);
    const ms = performance.now() - t0;
    // Not a timing assertion: a whole read of 3 GiB would take seconds, so only
    // report the time; what is asserted is that an early data block counts.
    console.log(`fingerprint of a 3 GiB file: ${ms.toFixed(1)} ms`);
    const g = await Deno.open(path, { write: true });
    await g.seek(8 + header.length, Deno.SeekMode.Start);
    await g.write(new Uint8Array([1]));
    g.close();
    assert(before !== await fingerprintFile(path));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("norms cache round-trips, merges updates, and ignores a stale checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = join(dir, "m.safetensors");
    await writeModel(model, [1, 2, 3, 4]);
    const location = join(dir, "cache");
    const first = await NormsCache.open(model, { location });
    assertEquals(first.loaded, false);
    await first.update({ "w.weight": { frobenius: 5.5 } });
    await first.update({ "w.weight": { spectral: 5.4 }, "q#1": { frobenius: 1 } });

    const second = await NormsCache.open(model, { location });
    assert(second.loaded);
    assertEquals(second.get("w.weight"), { frobenius: 5.5, spectral: 5.4 });
    assertEquals(second.get("q#1"), { frobenius: 1 });

    // A concurrent writer's entries survive our update.
    const third = await NormsCache.open(model, { location });
    await second.update({ "a": { frobenius: 2 } });
    await third.update({ "b": { frobenius: 3 } });
    const merged = await NormsCache.open(model, { location });
    assertEquals(merged.get("a"), { frobenius: 2 });
    assertEquals(merged.get("b"), { frobenius: 3 });

    // Same path, new content: nothing stale is served.
    await writeModel(model, [9, 9, 9, 9]);
    const fresh = await NormsCache.open(model, { location });
    assertEquals(fresh.loaded, false);
    assertEquals(fresh.get("w.weight"), undefined);
    // No temp files left behind.
    for await (const e of Deno.readDir(location)) assert(e.name.endsWith(".json"), e.name);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a .json location is used as the file; one that holds something else is never overwritten", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = join(dir, "m.safetensors");
    await writeModel(model, [1, 2, 3, 4]);
    const file = join(dir, "norms.json");
    const fresh = await NormsCache.open(model, { location: file });
    assertEquals([fresh.file, fresh.loaded, fresh.warnings], [file, false, []]);
    await fresh.update({ k: { frobenius: 1 } });
    assertEquals(JSON.parse(await Deno.readTextFile(file)).norms.k, { frobenius: 1 });

    await Deno.writeTextFile(file, "{not json");
    const cache = await NormsCache.open(model, { location: file });
    assertEquals(cache.loaded, false);
    assertEquals(cache.warnings.length, 1);
    assert(cache.warnings[0].includes("not a norms cache"), cache.warnings[0]);
    await cache.update({ k: { frobenius: 1 } }); // kept in memory only, silently
    assertEquals(cache.get("k"), { frobenius: 1 });
    assertEquals(await Deno.readTextFile(file), "{not json");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("normsKey and defaultCacheDir", () => {
  assertEquals(normsKey({ key: "a" }), "a");
  assertEquals(normsKey({ key: "a", chunk: { index: 2, count: 3 } }), "a#2");
  assert(defaultCacheDir().endsWith("resize-lora"));
});
