/**
 * Decompositions trimmed to their leading dimensions between decomposition and rebuild: the
 * same singular values, the same leading transforms, and rebuilds byte-identical to those from
 * untrimmed decompositions, within the leading dimensions and past them (the layer decomposed
 * again).
 */

import { assert, assertEquals } from "./assert.ts";
import type { Backend, LowRankFactors } from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import type { LoraLayer } from "../src/lora/lora_file.ts";
import {
  decomposeLayers,
  isTrimmed,
  type LayerDecomposition,
  rebuildLayers,
} from "../src/pipeline/layer_maths.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { rng } from "./rng.ts";
import { delegating } from "./delegating_backend.ts";

function layer(name: string, out: number, rank: number, inFlat: number, seed: number): LoraLayer {
  const r = rng(seed);
  const f32 = (n: number) => ({
    dtype: "F32" as const,
    bytes: encodeFloats(Array.from({ length: n }, r), "F32"),
  });
  const factors: LowRankFactors = {
    up: f32(out * rank),
    down: f32(rank * inFlat),
    out,
    rank,
    inFlat,
    scale: 0.5,
  };
  return {
    name,
    key: name,
    naming: "kohya",
    factors,
    alpha: 0.5 * rank,
    inShape: [inFlat],
    upShape: [out, rank],
    tensors: [],
  };
}

const LAYERS = [
  layer("a", 120, 96, 150, 1),
  layer("b", 50, 40, 60, 2),
  layer("c", 200, 128, 130, 3),
];

/** A backend that counts the layers each `decompose` call gets. */
function counting(inner: Backend, calls: number[]): Backend {
  return delegating(inner, {
    decompose: (layers, o) => {
      calls.push(layers.length);
      return inner.decompose(layers, o);
    },
  });
}

async function rebuilt(backend: Backend, decompositions: LayerDecomposition[], keep: number[][]) {
  const out = await rebuildLayers(
    backend,
    LAYERS.map((layer, i) => ({
      layer,
      decomposition: decompositions[i],
      keep: keep[i],
      rescale: 1,
    })),
  );
  return out.map((f) => [f.up.bytes, f.down.bytes]);
}

Deno.test("a trimmed decomposition keeps every singular value and the leading dimensions' transforms", async () => {
  await using backend = await createCpuBackend({ workers: 2, inlineWork: 0 });
  const full = await decomposeLayers(backend, LAYERS);
  const progress: number[] = [];
  const trimmed = await decomposeLayers(backend, LAYERS, {
    heldDimensions: 64,
    sliceBytes: 1, // one layer per backend call
    onProgress: (done, total) => {
      assertEquals(total, 3);
      progress.push(done);
    },
  });
  assertEquals(progress.at(-1), 3);
  LAYERS.forEach((l, i) => {
    const f = full[i], t = trimmed[i];
    assertEquals(t.sigma, f.sigma);
    const k = f.sigma.length;
    if (k <= 64) {
      assert(!isTrimmed(t), `${l.name} has ${k} dimensions and stays whole`);
      return;
    }
    assert(isTrimmed(t) && !isTrimmed(f) && "upTransform" in f, l.name);
    assertEquals(t.leading.sigma, f.sigma.slice(0, 64));
    for (let a = 0; a < l.factors.rank; a++) {
      assertEquals(
        t.leading.upTransform.slice(a * 64, a * 64 + 64),
        f.upTransform.slice(a * k, a * k + 64),
      );
      assertEquals(
        t.leading.downTransform.slice(a * 64, a * 64 + 64),
        f.downTransform.slice(a * k, a * k + 64),
      );
    }
  });
});

Deno.test("rebuilds from trimmed decompositions equal those from whole ones, byte for byte, and decompose again only past the leading dimensions", async () => {
  await using cpu = await createCpuBackend({ workers: 2, inlineWork: 0 });
  const calls: number[] = [];
  const backend = counting(cpu, calls);
  const full = await decomposeLayers(backend, LAYERS);
  const trimmed = await decomposeLayers(backend, LAYERS, { heldDimensions: 64 });
  calls.length = 0;
  const within = [[0, 5, 63], [1, 39], [0, 2, 10]];
  assertEquals(await rebuilt(backend, trimmed, within), await rebuilt(backend, full, within));
  assertEquals(calls, [], "the leading transforms serve keeps within them");
  const past = [[0, 64, 95], [0, 39], [3, 127]];
  assertEquals(await rebuilt(backend, trimmed, past), await rebuilt(backend, full, past));
  assertEquals(calls, [2], "layers a and c are decomposed again, in one call");
});
