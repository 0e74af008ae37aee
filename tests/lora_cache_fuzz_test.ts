/**
 * Fuzzers of what is read from files besides the header: the LoRA layer
 * parser (alpha values and dtypes, shapes, NaN and ∞ in factors) and the
 * norms-cache loader (any JSON, any values). Fixed seed and small case count
 * by default; `FUZZ_RUNS=20000` runs long (see tests/fuzz.ts).
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { fuzzRuns } from "./fuzz.ts";
import { LoraError, OutputError, SafetensorsError } from "../src/errors.ts";
import { RANK_LIMIT_FLOOR, readLoraFile } from "../src/lora/lora_file.ts";
import { checkFiniteAlphas, checkFiniteDecompositions } from "../src/finite_checks.ts";
import { svdFromGrams } from "../src/linalg/gram_svd.ts";
import { Kernels } from "../src/linalg/wasm/kernels.ts";
import { decodeFloats, type DType, dtypeSize, encodeFloats } from "../src/safetensors/dtype.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { NormsCache } from "../src/norms_cache.ts";

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

const FLOATS = ["F16", "BF16", "F32", "F64"] as const;

/** Little-endian bytes of `values` in any dtype (integers truncated, as a cast would). */
function bytesOf(values: readonly number[], dtype: DType): Uint8Array {
  if ((FLOATS as readonly string[]).includes(dtype)) return encodeFloats(values, dtype as "F32");
  const out = new Uint8Array(values.length * dtypeSize(dtype));
  const view = new DataView(out.buffer);
  values.forEach((v, i) => {
    const n = Number.isFinite(v) ? Math.trunc(v) : 0;
    if (dtype === "I64") view.setBigInt64(i * 8, BigInt(n), true);
    else if (dtype === "U8") view.setUint8(i, n & 0xff);
    else view.setInt32(i * 4, n, true);
  });
  return out;
}

const special = fc.constantFrom(NaN, Infinity, -Infinity);
const element = fc.oneof(
  { weight: 20, arbitrary: fc.double({ min: -4, max: 4, noNaN: true }) },
  { weight: 1, arbitrary: special },
);

interface LayerCase {
  name: string;
  rank: number;
  out: number;
  inShape: number[];
  upShape: number[];
  upDType: DType;
  downDType: DType;
  alpha?: { dtype: DType; value: number };
  elements: number[];
}

/** Mostly `usual`, sometimes `rare` (each hostile choice is rare, so whole files often load). */
function mostly<T>(usual: fc.Arbitrary<T>, ...rare: fc.Arbitrary<T>[]): fc.Arbitrary<T> {
  return fc.oneof({ weight: 12 * rare.length, arbitrary: usual }, ...rare);
}

const layerArb: fc.Arbitrary<LayerCase> = fc.record({
  name: fc.constantFrom("lora_unet_a", "lora_te1_b", "x\ny", "lora_unet_c\x1b"),
  rank: mostly(
    fc.integer({ min: 1, max: 5 }),
    fc.constant(0),
    fc.constant(RANK_LIMIT_FLOOR + 3),
  ),
  out: mostly(fc.integer({ min: 1, max: 4 }), fc.constant(0)),
  inShape: mostly<number[]>(
    fc.oneof(
      fc.tuple(fc.integer({ min: 1, max: 4 })),
      fc.tuple(fc.integer({ min: 1, max: 2 }), fc.constant(2), fc.constant(1)),
    ),
    fc.constant([0]),
  ),
  upTail: mostly<number[]>(fc.constantFrom([], [1, 1]), fc.constant([2, 1])),
  upRankDelta: mostly(fc.constant(0), fc.constant(1)),
  upDType: mostly<DType>(fc.constantFrom(...FLOATS), fc.constant("I32")),
  downDType: mostly<DType>(fc.constantFrom(...FLOATS), fc.constant("U8")),
  alpha: fc.option(
    fc.record({
      dtype: fc.constantFrom<DType>("F16", "BF16", "F32", "F64", "I64", "U8"),
      value: mostly(fc.double({ min: -8, max: 64, noNaN: true }), special, fc.constant(1e300)),
    }),
    { nil: undefined },
  ),
  elements: fc.array(element, { minLength: 64, maxLength: 64 }),
}).map((l) => ({
  name: l.name,
  rank: l.rank,
  out: l.out,
  inShape: l.inShape,
  upShape: [l.out, l.rank + l.upRankDelta, ...l.upTail],
  upDType: l.upDType,
  downDType: l.downDType,
  alpha: l.alpha,
  elements: l.elements,
}));

function tensorsOf(layer: LayerCase): TensorSource[] {
  const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  const fill = (n: number, from: number) =>
    Array.from({ length: n }, (_, i) => layer.elements[(from + i) % layer.elements.length]);
  const down = [layer.rank, ...layer.inShape];
  const tensors: TensorSource[] = [
    {
      name: `${layer.name}.lora_down.weight`,
      dtype: layer.downDType,
      shape: down,
      data: bytesOf(fill(count(down), 0), layer.downDType),
    },
    {
      name: `${layer.name}.lora_up.weight`,
      dtype: layer.upDType,
      shape: layer.upShape,
      data: bytesOf(fill(count(layer.upShape), 7), layer.upDType),
    },
  ];
  if (layer.alpha) {
    const { dtype, value } = layer.alpha;
    tensors.push({ name: `${layer.name}.alpha`, dtype, shape: [], data: bytesOf([value], dtype) });
  }
  return tensors;
}

/** The production decomposition of a layer's stored factors (the Grams formed here, in f64). */
function decompose(
  kernels: Kernels,
  layer: Awaited<ReturnType<typeof readLoraFile>>["layers"][number],
) {
  const { up, down, out, rank: r, inFlat, scale } = layer.factors;
  const b = decodeFloats(up.bytes, up.dtype, Float64Array);
  const a = decodeFloats(down.bytes, down.dtype, Float64Array);
  const gUp = new Float64Array(r * r), gDown = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      for (let o = 0; o < out; o++) gUp[i * r + j] += b[o * r + i] * b[o * r + j];
      for (let c = 0; c < inFlat; c++) gDown[i * r + j] += a[i * inFlat + c] * a[j * inFlat + c];
    }
  }
  return svdFromGrams(kernels, { up: gUp, down: gDown }, { out, rank: r, inFlat, scale });
}

Deno.test("fuzz: the LoRA layer parser yields sane layers or names the file; NaN/∞ factors are named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lora_fuzz_" });
  const path = join(dir, "l.safetensors");
  const kernels = await Kernels.load();
  const seen = { loaded: 0, refused: 0, nonFinite: 0, badAlpha: 0 };
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(layerArb, { minLength: 1, maxLength: 2, selector: (l) => l.name }),
        async (layers) => {
          await writeSafetensors(path, layers.flatMap(tensorsOf));
          let model;
          try {
            model = await readLoraFile(path);
          } catch (e) {
            assert(e instanceof LoraError || e instanceof SafetensorsError, String(e));
            assert(e.message.startsWith(`${path}: `), e.message);
            assert(!CONTROL.test(e.message), JSON.stringify(e.message));
            seen.refused++;
            return;
          }
          seen.loaded++;
          for (const l of model.layers) {
            const { out, rank, inFlat, scale } = l.factors;
            assert(out > 0 && rank > 0 && inFlat > 0, `${l.name}: ${out}×${rank}×${inFlat}`);
            assert(rank <= Math.max(out, inFlat, RANK_LIMIT_FLOOR), `${l.name}: rank ${rank}`);
            assertEquals(Number.isFinite(scale), Number.isFinite(l.alpha), `${l.name}: ${scale}`);
          }
          // A layer to resize with an alpha that is not finite is named (before any decomposition).
          const badAlpha = model.layers.find((l) => !Number.isFinite(l.alpha));
          try {
            checkFiniteAlphas(path, model.layers);
            assertEquals(badAlpha, undefined, "a non-finite alpha was believed");
          } catch (e) {
            assert(e instanceof LoraError, String(e));
            const want = `${path}: tensor '${badAlpha!.name}.alpha': alpha ${badAlpha!.alpha}`;
            assertEquals(e.message, new LoraError(`${want} is not a finite number`).message);
            seen.badAlpha++;
            return;
          }
          const decompositions = model.layers.map((l) => decompose(kernels, l));
          // The first layer (name order) with a NaN or ∞ element, down before up.
          let expected: string | undefined;
          for (const l of model.layers) {
            for (const [half, data] of [["down", l.factors.down], ["up", l.factors.up]] as const) {
              const values = decodeFloats(data.bytes, data.dtype, Float64Array);
              const i = values.findIndex((v) => !Number.isFinite(v));
              if (i >= 0 && expected === undefined) {
                expected = `${path}: tensor '${l.name}.lora_${half}.weight': element ${i} is ${
                  values[i]
                }`;
              }
            }
            if (expected !== undefined) break;
          }
          try {
            checkFiniteDecompositions(path, model.layers, decompositions);
            assertEquals(expected, undefined, "a NaN or ∞ factor was believed");
          } catch (e) {
            assert(e instanceof LoraError, String(e));
            assertEquals((e as Error).message, new LoraError(expected ?? "?").message);
            seen.nonFinite++;
          }
        },
      ),
      fuzzRuns(200),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert(
    seen.loaded > 10 && seen.refused > 10 && seen.nonFinite > 3 && seen.badAlpha > 3,
    JSON.stringify(seen),
  );
});

const FORMAT = "resize-lora-norms/1";
const FINGERPRINT = "ab".repeat(32);

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
const anyJson: fc.Arbitrary<Json> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.double(),
  fc.constantFrom(-1, 0, 1e308, 3.5),
  fc.string({ maxLength: 4 }),
  fc.constantFrom("abc", "NaN", "1"),
  fc.array(fc.integer(), { maxLength: 2 }),
);
const normsValue: fc.Arbitrary<Json> = fc.oneof(
  fc.record({ frobenius: anyJson }, { requiredKeys: [] }),
  fc.record({ frobenius: anyJson, spectral: anyJson }, { requiredKeys: [] }),
  anyJson,
);
const cacheText = fc.oneof(
  fc.record({
    format: fc.oneof({ weight: 6, arbitrary: fc.constant(FORMAT) }, anyJson),
    fingerprint: fc.oneof({ weight: 6, arbitrary: fc.constant(FINGERPRINT) }, anyJson),
    norms: fc.oneof(
      { weight: 6, arbitrary: fc.dictionary(fc.constantFrom("a", "b", "c#1", "d\n"), normsValue) },
      anyJson,
    ),
  }, { requiredKeys: [] }).map((b) => JSON.stringify(b)),
  anyJson.map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 20 }),
);

/** A finite norm ≥ 0. */
const isNorm = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v >= 0;

Deno.test("fuzz: any norms cache file opens, keeps only valid norms, and is rewritten valid or left alone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cache_fuzz_" });
  const model = join(dir, "m.safetensors");
  await Deno.writeFile(model, new Uint8Array(16));
  const seen = { loaded: 0, foreign: 0, rewritten: 0 };
  try {
    await fc.assert(
      fc.asyncProperty(cacheText, fc.boolean(), async (text, named) => {
        const location = named ? join(dir, "named.json") : join(dir, "folder");
        const file = named ? location : join(location, `${FINGERPRINT.slice(0, 32)}.json`);
        await Deno.mkdir(join(dir, "folder"), { recursive: true });
        await Deno.writeTextFile(file, text);
        const cache = await NormsCache.open(model, { location, fingerprint: FINGERPRINT });
        for (const w of cache.warnings) assert(!CONTROL.test(w), JSON.stringify(w));
        let parsed: Record<string, unknown> | undefined;
        try {
          parsed = JSON.parse(text);
        } catch { /* not JSON */ }
        const body = parsed !== null && typeof parsed === "object" ? parsed : undefined;
        const ours = body?.format === FORMAT;
        const norms = body?.norms as Record<string, Record<string, unknown>> | undefined;
        const usable = ours && norms !== null && typeof norms === "object" && !Array.isArray(norms);
        assertEquals(cache.loaded, usable && body?.fingerprint === FINGERPRINT);
        if (cache.loaded) {
          seen.loaded++;
          for (const [key, value] of Object.entries(norms!)) {
            const got = cache.get(key);
            for (const kind of ["frobenius", "spectral"] as const) {
              const stored = value !== null && typeof value === "object" ? value[kind] : undefined;
              assertEquals(got?.[kind], isNorm(stored) ? stored : undefined, `${key}.${kind}`);
            }
          }
        }
        try {
          await cache.update({ z: { frobenius: 2 } });
        } catch (e) {
          assert(e instanceof OutputError, String(e));
        }
        const after = await Deno.readTextFile(file);
        if (named && !ours) {
          seen.foreign++;
          assertEquals(after, text, "a file that is not a norms cache was overwritten");
        } else {
          seen.rewritten++;
          const written = JSON.parse(after);
          assertEquals(written.norms.z, { frobenius: 2 });
          for (const v of Object.values(written.norms as Record<string, Record<string, unknown>>)) {
            for (const n of Object.values(v)) assert(isNorm(n), `wrote ${n}`);
          }
        }
        assertEquals(
          [...Deno.readDirSync(join(dir, "folder"))].filter((e) => e.name.endsWith(".tmp")),
          [],
        );
      }),
      fuzzRuns(200),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert(seen.loaded > 10 && seen.foreign > 10 && seen.rewritten > 10, JSON.stringify(seen));
});
