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
import { join } from "node:path";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { resize } from "../src/resize.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { type Matrix, matrix, multiply, svd } from "./reference/matrix.ts";
import { rng } from "./rng.ts";
import { delegating } from "./delegating_backend.ts";
import { kohyaLayerTensors } from "./lora_tensors.ts";

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

/**
 * LAYERS decomposed whole and trimmed to 64 dimensions, through a backend that counts the
 * layers of each later `decompose` call.
 */
async function decomposedBothWays(cpu: Backend) {
  const calls: number[] = [];
  const backend = counting(cpu, calls);
  const full = await decomposeLayers(backend, LAYERS);
  const trimmed = await decomposeLayers(backend, LAYERS, { heldDimensions: 64 });
  calls.length = 0;
  return { backend, calls, full, trimmed };
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
  const { backend, calls, full, trimmed } = await decomposedBothWays(cpu);
  const within = [[0, 5, 63], [1, 39], [0, 2, 10]];
  assertEquals(await rebuilt(backend, trimmed, within), await rebuilt(backend, full, within));
  assertEquals(calls, [], "the leading transforms serve keeps within them");
  const past = [[0, 64, 95], [0, 39], [3, 127]];
  assertEquals(await rebuilt(backend, trimmed, past), await rebuilt(backend, full, past));
  assertEquals(calls, [2], "layers a and c are decomposed again, in one call");
});

Deno.test("resizing a rank-96 LoRA keeps the optimal rank-k layers past the 64 held dimensions and within them", async () => {
  // Two SD1.5 attention layers (kohya names), rank 96, 320 × 320 and 320 × 768: their
  // decompositions have 96 dimensions, so they are trimmed to 64 until a rebuild.
  const layers = [
    { name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", inFlat: 320 },
    { name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", inFlat: 768 },
  ];
  const out = 320, rank = 96, alpha = 48;
  const next = rng(96);
  const dir = await Deno.makeTempDir();
  try {
    const dense = new Map<string, Matrix>();
    const tensors = layers.flatMap(({ name, inFlat }) => {
      // A decaying spectrum: column j of up scaled by 0.97^j.
      const up = Float32Array.from({ length: out * rank }, (_, i) => next() * 0.97 ** (i % rank));
      const down = Float32Array.from({ length: rank * inFlat }, next);
      const dw = multiply(matrix(out, rank, up), matrix(rank, inFlat, down));
      dense.set(name, matrix(out, inFlat, dw.data.map((x) => x * alpha / rank)));
      return kohyaLayerTensors(name, { out, rank, inShape: [inFlat], up, down, alpha });
    });
    const lora = join(dir, "r96.safetensors");
    await writeSafetensors(lora, tensors);
    for (const k of [80, 20]) {
      const { outputs: [output] } = await resize({
        loras: [lora],
        recipes: `rank=${k}`,
        outputFolder: join(dir, `k${k}`),
        outputDtype: "F32",
      });
      await using f = await SafetensorsFile.open(output.path);
      for (const { name, inFlat } of layers) {
        const up = await f.readFloat64(`${name}.lora_up.weight`);
        const down = await f.readFloat64(`${name}.lora_down.weight`);
        const a = await f.readScalar(`${name}.alpha`);
        assertEquals(f.info(`${name}.lora_down.weight`).shape, [k, inFlat]);
        const got = multiply(matrix(out, k, up), matrix(k, inFlat, down)).data.map((x) =>
          x * a / k
        );
        const want = dense.get(name)!;
        const s = svd(want).s;
        // Eckart–Young: the best rank-k error is the energy of the dropped singular values.
        const optimum = s.slice(k).reduce((n, x) => n + x * x, 0);
        const total = s.reduce((n, x) => n + x * x, 0);
        const error = want.data.reduce((n, x, i) => n + (x - got[i]) ** 2, 0);
        assert(
          Math.abs(error - optimum) <= 1e-6 * total,
          `${name} at ${k}: ${error} vs ${optimum}`,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("trimmed decomposition in slices stops at the caller's abort and at a failing slice", async () => {
  await using cpu = await createCpuBackend({ workers: 2, inlineWork: 0 });
  const aborted = new AbortController();
  const reason = new Error("stop");
  let calls = 0;
  const abortingAfterOne = delegating(cpu, {
    decompose: async (layers, o) => {
      const d = await cpu.decompose(layers, o);
      if (++calls === 1) aborted.abort(reason);
      return d;
    },
  });
  const stopped = await decomposeLayers(abortingAfterOne, LAYERS, {
    heldDimensions: 64,
    sliceBytes: 1,
    signal: aborted.signal,
  }).then(() => undefined, (e) => e);
  assertEquals(stopped, reason);
  const failing = delegating(cpu, {
    decompose: (layers, o) =>
      calls++ === 2 ? Promise.reject(new Error("bad")) : cpu.decompose(layers, o),
  });
  calls = 0;
  const failed = await decomposeLayers(failing, LAYERS, { heldDimensions: 64, sliceBytes: 1 })
    .then(() => undefined, (e) => e);
  assert(failed instanceof Error && failed.message === "bad", `${failed}`);
});

Deno.test("layers kept past their held dimensions are decomposed again run by run, each run's results before the next's", async () => {
  await using cpu = await createCpuBackend({ workers: 2, inlineWork: 0 });
  const { backend, calls, full, trimmed } = await decomposedBothWays(cpu);
  const keep = [[0, 64, 95], [0, 39], [3, 127]];
  const order: number[] = [], progress: [number, number][] = [];
  const requests = LAYERS.map((layer, i) => ({
    layer,
    decomposition: trimmed[i],
    keep: keep[i],
    rescale: 1,
  }));
  const out = await rebuildLayers(backend, requests, {
    sliceBytes: 1, // a run for each layer decomposed again
    onResult: (n) => order.push(n),
    onProgress: (done, total) => progress.push([done, total]),
  });
  assertEquals(calls, [1, 1], "layers a and c, one run each");
  assertEquals(out.map((f) => [f.up.bytes, f.down.bytes]), await rebuilt(backend, full, keep));
  // Run by run: layer a alone first; b and c, rebuilt together, in either order.
  assertEquals(order[0], 0);
  assertEquals(order.toSorted(), [0, 1, 2]);
  assertEquals(progress.at(-1), [3, 3]);
  assert(progress.every(([d], i) => i === 0 || d >= progress[i - 1][0]), `${progress}`);
});
