/**
 * The run's norms store: one lookup (what this run computed, else the norms cache), and the
 * backend asked only for what neither holds, each base weight once, written to the cache.
 */
import { assertEquals } from "./assert.ts";
import type { Backend, BaseNorms, BaseWeightRef, NormRequest } from "../src/linalg/backend.ts";
import type { LoraLayer } from "../src/lora/lora_file.ts";
import type { PairedLayer } from "../src/lora/pairing.ts";
import { NormsCache } from "../src/norms_cache.ts";
import { NormsStore } from "../src/pipeline/norms_store.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";

const BASE = "tests/fixtures/micro_sdxl_base.safetensors";

/** A backend whose norms are made up from the weight's shape, recording what it is asked. */
function fakeNormsBackend(asked: [string[], NormRequest][]): Backend {
  const fail = () => Promise.reject(new Error("not used"));
  return {
    name: "fake",
    description: "norms from shapes",
    decompose: fail,
    rebuild: fail,
    subspaceScales: fail,
    spectra: fail,
    singularPairs: fail,
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
    baseNorms: (weights: readonly BaseWeightRef[], which: NormRequest) => {
      asked.push([weights.map((w) => `${w.rows}x${w.cols}@${w.offset}`), which]);
      return Promise.resolve(weights.map((w): BaseNorms => ({
        ...(which.frobenius ? { frobenius: w.rows + w.cols / 1000 } : {}),
        ...(which.spectral ? { spectral: w.rows } : {}),
      })));
    },
  };
}

Deno.test("the norms store asks the backend only for what memory and the cache lack", async () => {
  const dir = await Deno.makeTempDir({ prefix: "norms_store_test_" });
  try {
    await using checkpoint = await BaseCheckpoint.open(BASE);
    const cache = await NormsCache.open(BASE, { location: `${dir}/cache.json` });
    const [a, b] = checkpoint.entries().filter((e) => e.chunk === undefined && e.cols > 1);
    // The cache already knows a's Frobenius norm.
    await cache.update({ [a.key]: { frobenius: 42 } });
    const layer = (name: string) => ({ name }) as unknown as LoraLayer;
    const paired = [a, b, a].map((base, i): PairedLayer => ({
      layer: layer(`l${i}`),
      base,
      matchedBy: "standard",
    }));
    const asked: [string[], NormRequest][] = [];
    const store = new NormsStore({
      checkpoint,
      cache,
      backend: fakeNormsBackend(asked),
      log: () => {},
      onProgress: () => {},
    });
    const ref = (e: typeof a) => {
      const w = checkpoint.weightRef(e);
      return `${w.rows}x${w.cols}@${w.offset}`;
    };

    const frobenius = await store.fetch(paired, { frobenius: true, spectral: false });
    assertEquals(asked, [[[ref(b)], { frobenius: true, spectral: false }]]);
    assertEquals(frobenius.map((n) => n.frobenius), [42, b.rows + b.cols / 1000, 42]);

    // Spectral norms: both weights once (a appears twice), merged with what was known.
    const both = await store.fetch(paired, { frobenius: true, spectral: true });
    assertEquals(asked[1], [[ref(a), ref(b)], { frobenius: true, spectral: true }]);
    assertEquals(both[0], { frobenius: a.rows + a.cols / 1000, spectral: a.rows });
    assertEquals(store.get(b), both[1]);

    // Everything known now: no more backend work, and the cache file holds it.
    await store.fetch(paired, { frobenius: true, spectral: true });
    assertEquals(asked.length, 2);
    const reopened = await NormsCache.open(BASE, { location: `${dir}/cache.json` });
    assertEquals(reopened.get(b.key), both[1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
