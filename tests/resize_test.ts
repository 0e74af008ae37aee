/**
 * The pipeline as a library: merges, pass-through, size targets, determinism,
 * metadata, output dtypes and the norms cache (docs/design.md).
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { plan, resize, type ResizeOptions } from "../src/resize.ts";
import { collectLogs } from "../src/log.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import type { Backend, BaseWeightRef } from "../src/linalg/backend.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { BackendError, OutputError } from "../src/errors.ts";
import { delegating } from "./delegating_backend.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
const BASE = join(FIXTURES, "micro_sdxl_base.safetensors");
const LORA_A = join(FIXTURES, "microA_r8_te.safetensors");
const LOCON = join(FIXTURES, "microB-locon-r8c4.safetensors");
const DORA = join(FIXTURES, "microE_dora_r4.safetensors");

const backend = await createCpuBackend({ workers: 1 });

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function options(dir: string, more: Partial<ResizeOptions>): ResizeOptions {
  return {
    checkpoint: BASE,
    loras: [LOCON],
    outputFolder: dir,
    normsCache: false,
    backend,
    ...more,
  };
}

/** Dense ΔW = alpha/rank · up · down of one layer of a file, in f64. */
async function delta(f: SafetensorsFile, layer: string): Promise<Float64Array> {
  const up = await f.readFloat64(`${layer}.lora_up.weight`);
  const down = await f.readFloat64(`${layer}.lora_down.weight`);
  const info = f.info(`${layer}.lora_down.weight`);
  const r = info.shape[0];
  const alpha = f.has(`${layer}.alpha`) ? await f.readScalar(`${layer}.alpha`) : r;
  const out = up.length / r;
  const inFlat = down.length / r;
  const d = new Float64Array(out * inFlat);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < r; k++) {
      const u = (up[i * r + k] * alpha) / r;
      for (let j = 0; j < inFlat; j++) d[i * inFlat + j] += u * down[k * inFlat + j];
    }
  }
  return d;
}

function relDiff(a: Float64Array, b: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

Deno.test("a weighted merge resizes the weighted sum of the deltas", async () => {
  await withDir(async (dir) => {
    const spec = `${LOCON}:0.7,${join(FIXTURES, "microB-locon-r8c4.safetensors")}:-0.2`;
    const { outputs } = await resize(options(dir, { loras: [spec], recipes: "spn_lora=1,thr=-9" }));
    assertEquals(outputs.length, 1);
    assert(
      outputs[0].path.endsWith("microB(0.70+-0.20)_spnlora1_th-9.safetensors"),
      outputs[0].path,
    );
    await using out = await SafetensorsFile.open(outputs[0].path);
    await using input = await SafetensorsFile.open(LOCON);
    for (
      const layer of ["lora_unet_input_blocks_1_0_emb_layers_1", "lora_unet_output_blocks_2_2_conv"]
    ) {
      const want = (await delta(input, layer)).map((v) => 0.5 * v);
      // Nothing pruned (thr=-9): only F16 rounding of the output separates them.
      assert(relDiff(await delta(out, layer), want) < 2e-3, layer);
    }
  });
});

Deno.test("unsupported tensors pass through unchanged; --drop_unmapped drops them", async () => {
  await withDir(async (dir) => {
    await using src = await SafetensorsFile.open(LOCON);
    const tensors = await Promise.all(
      src.names.map(async (name) => {
        const t = src.info(name);
        return { name, dtype: t.dtype, shape: t.shape, data: await src.readBytes(name) };
      }),
    );
    const extra = [
      {
        name: "lora_unet_foo_bar.hada_t1", // Tucker LoHa: not converted
        dtype: "F16" as const,
        shape: [2, 2],
        data: encodeFloats([1, 2, 3, 4], "F16"),
      },
      {
        name: "lora_unet_nonexistent_layer.lora_down.weight",
        dtype: "F32" as const,
        shape: [1, 3],
        data: encodeFloats([1, 2, 3], "F32"),
      },
      {
        name: "lora_unet_nonexistent_layer.lora_up.weight",
        dtype: "F32" as const,
        shape: [2, 1],
        data: encodeFloats([1, 2], "F32"),
      },
      { name: "step", dtype: "I64" as const, shape: [], data: new Uint8Array(8).fill(1) },
    ];
    const input = join(dir, "mixed.safetensors");
    await writeSafetensors(input, [...tensors, ...extra], { metadata: src.metadata });

    const { log, records } = collectLogs();
    const { outputs } = await resize(options(dir, { loras: [input], log }));
    await using out = await SafetensorsFile.open(outputs[0].path);
    const hada = await out.readBytes("lora_unet_foo_bar.hada_t1");
    assertEquals(hada, extra[0].data); // F16 → F16: bytes unchanged
    assertEquals(out.info("lora_unet_nonexistent_layer.lora_down.weight").dtype, "F16"); // cast
    assertEquals(Array.from(await out.readFloat32("lora_unet_nonexistent_layer.lora_up.weight")), [
      1,
      2,
    ]);
    assertEquals(await out.readBytes("step"), extra[3].data); // integers are never cast
    const warnings = records.filter(([l]) => l === "WARNING").map(([, m]) => m);
    assertEquals(warnings.length, 1, warnings.join("\n"));
    assert(
      /Copying 4 tensors .* 1 LoRA layers with no base weight, 1 Tucker LoHa tensors, 1 other tensors/
        .test(warnings[0]),
      warnings[0],
    );

    const dropped = collectLogs();
    const second = await resize(
      options(join(dir, "drop"), { loras: [input], dropUnmapped: true, log: dropped.log }),
    );
    await using out2 = await SafetensorsFile.open(second.outputs[0].path);
    assert(!out2.has("step") && !out2.has("lora_unet_foo_bar.hada_t1"));
    assert(dropped.records.some(([l, m]) =>
      l === "WARNING" &&
      m ===
        "LoRA key 'lora_unet_nonexistent_layer' found in file but is not mapped to any base layer by the checkpoint's key_mapper."
    ));
  });
});

Deno.test("size= (file accounting) never exceeds the target, and one more dim would", async () => {
  await withDir(async (dir) => {
    for (const size of [0.04, 0.06, 0.08]) {
      const { outputs } = await resize(options(dir, { recipes: `spn_lora=1,size=${size}` }));
      const o = outputs[0];
      const bytes = (await Deno.stat(o.path)).size;
      assertEquals(bytes, o.bytes);
      assert(bytes <= size * 2 ** 20, `${bytes} > ${size} MiB`);
      assert(o.cut && o.cut.nextBytes > size * 2 ** 20, "the next dimension must not fit");
    }
  });
});

Deno.test("the same inputs give the same bytes; ss_network_dim and alpha are updated as kohya does", async () => {
  await withDir(async (dir) => {
    const a = await resize(options(join(dir, "a"), { loras: [DORA] }));
    const b = await resize(options(join(dir, "b"), { loras: [DORA] }));
    const bytesA = await Deno.readFile(a.outputs[0].path);
    assertEquals(bytesA, await Deno.readFile(b.outputs[0].path));
    await using f = await SafetensorsFile.open(a.outputs[0].path);
    assertEquals(f.metadata.ss_network_dim, "Dynamic");
    assertEquals(
      f.metadata.resize_params,
      '{"recipe_str": "fro_ckpt=1,thr=-3.5", "weights": {"spn_lora": 0.0, "spn_ckpt": 0.0, "subspace": 0.0, "fro_lora": 0.0, "fro_ckpt": 1.0, "params": 0.0}, "target_size": null, "threshold": -3.5, "rescale": 1.0}',
    );
    const sha = createHash("sha256").update(bytesA.subarray(f.dataStart)).digest("hex");
    assertEquals(f.metadata.sshs_model_hash, sha);

    // Keeping everything of a uniform LoRA keeps its rank and alpha.
    const all = await resize(
      options(join(dir, "c"), {
        loras: [DORA],
        recipes: "spn_lora=1,thr=-99",
        outputDtype: "BF16",
      }),
    );
    await using g = await SafetensorsFile.open(all.outputs[0].path);
    assertEquals([g.metadata.ss_network_dim, g.metadata.ss_network_alpha], ["4", "4.0"]);
    assert(g.tensors.every((t) => t.dtype === "BF16"));
  });
});

Deno.test("a LoRA without __metadata__ is read as empty metadata", async () => {
  await withDir(async (dir) => {
    await using src = await SafetensorsFile.open(LOCON);
    const tensors = await Promise.all(src.names.map(async (name) => {
      const t = src.info(name);
      return { name, dtype: t.dtype, shape: t.shape, data: await src.readBytes(name) };
    }));
    const input = join(dir, "bare.safetensors");
    await writeSafetensors(input, tensors);
    const { outputs } = await resize(options(dir, { loras: [input] }));
    await using f = await SafetensorsFile.open(outputs[0].path);
    assert(f.metadata.resize_params.startsWith('{"recipe_str"'));
  });
});

/** A backend that counts the base weights it is asked to read, and can fail. */
function spy(inner: Backend, failAfter = Infinity): Backend & { reads: BaseWeightRef[] } {
  const reads: BaseWeightRef[] = [];
  return {
    reads,
    ...delegating(inner, {
      baseNorms(weights, which, opts) {
        if (reads.length >= failAfter) return Promise.reject(new Error("interrupted"));
        reads.push(...weights);
        return inner.baseNorms(weights, which, opts);
      },
      subspaceScales(requests, opts) {
        reads.push(...requests.map((r) => r.weight));
        return inner.subspaceScales(requests, opts);
      },
    }),
  };
}

Deno.test("norms cache: a second run reads no base weight; a changed checkpoint is recomputed", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache");
    const first = spy(backend);
    const recipes = "fro_ckpt=1,thr=-3.5:spn_ckpt=1,thr=-2.5";
    const r1 = await plan(
      options(dir, { loras: [LORA_A], normsCache: cache, backend: first, recipes }),
    );
    assert(first.reads.length > 900, `${first.reads.length} weights read`);
    const second = spy(backend);
    const r2 = await plan(
      options(dir, { loras: [LORA_A], normsCache: cache, backend: second, recipes }),
    );
    assertEquals(second.reads.length, 0);
    assertEquals(r2.outputs.map((o) => o.bytes), r1.outputs.map((o) => o.bytes));

    // Same path, different content.
    const base = join(dir, "base.safetensors");
    await Deno.copyFile(BASE, base);
    const third = spy(backend);
    await plan(
      options(dir, {
        checkpoint: base,
        loras: [LORA_A],
        normsCache: cache,
        backend: third,
        recipes,
      }),
    );
    assertEquals(third.reads.length, 0); // a copy has the same fingerprint
    const bytes = await Deno.readFile(base);
    bytes[bytes.length - 1] ^= 0x55; // last data byte: an F16 VAE weight
    bytes[Math.floor(bytes.length / 2)] ^= 0x55;
    await Deno.writeFile(base, bytes);
    const fourth = spy(backend);
    await plan(
      options(dir, {
        checkpoint: base,
        loras: [LORA_A],
        normsCache: cache,
        backend: fourth,
        recipes,
      }),
    );
    assert(fourth.reads.length > 900);
  });
});

Deno.test("norms cache: an interrupted run keeps what it computed", async () => {
  await withDir(async (dir) => {
    const cache = join(dir, "cache");
    const failing = spy(backend, 64);
    await assertRejects(
      () => plan(options(dir, { loras: [LORA_A], normsCache: cache, backend: failing })),
      Error,
      "interrupted",
    );
    const again = spy(backend);
    await plan(options(dir, { loras: [LORA_A], normsCache: cache, backend: again }));
    const distinct = new Set(failing.reads.map((r) => `${r.offset}`)).size;
    assert(distinct >= 64);
    const total = new Set([...failing.reads, ...again.reads].map((r) => `${r.offset}`)).size;
    assertEquals(new Set(again.reads.map((r) => `${r.offset}`)).size, total - distinct);
  });
});

Deno.test("dry run plans the same file a write produces, and writes nothing", async () => {
  await withDir(async (dir) => {
    for (const recipes of ["fro_ckpt=1,thr=-3", "spn_lora=1,size=0.07"]) {
      const planned = await plan(options(dir, { recipes }));
      assertEquals(planned.outputs[0].written, false);
      await assertRejects(() => Deno.stat(planned.outputs[0].path), Deno.errors.NotFound);
      const done = await resize(options(dir, { recipes }));
      assertEquals(done.outputs[0].path, planned.outputs[0].path);
      assertEquals((await Deno.stat(done.outputs[0].path)).size, planned.outputs[0].bytes);
    }
  });
});

Deno.test("an output never replaces an input", async () => {
  await withDir(async (dir) => {
    await Deno.copyFile(LOCON, join(dir, "m.safetensors"));
    await Deno.copyFile(LOCON, join(dir, "m_frockpt1_th-3.5.safetensors"));
    await assertRejects(
      () =>
        resize(options(dir, {
          loras: [join(dir, "m.safetensors"), join(dir, "m_frockpt1_th-3.5.safetensors")],
        })),
      OutputError,
      "would overwrite the input",
    );
  });
});

Deno.test("the summary's relative error matches the written file", async () => {
  await withDir(async (dir) => {
    const { outputs } = await resize(
      options(dir, { recipes: "spn_lora=1,thr=-0.8", outputDtype: "F32" }),
    );
    const o = outputs[0];
    await using out = await SafetensorsFile.open(o.path);
    await using input = await SafetensorsFile.open(LOCON);
    let num = 0;
    let den = 0;
    for (const l of o.layers) {
      const want = await delta(input, l.name);
      const got = l.kept > 0 ? await delta(out, l.name) : new Float64Array(want.length);
      for (let i = 0; i < want.length; i++) {
        num += (got[i] - want[i]) ** 2;
        den += want[i] ** 2;
      }
    }
    assertRelClose(o.relativeError, Math.sqrt(num / den), 1e-3);
    assert(o.relativeError > 0.01, "the recipe must prune something");
  });
});

globalThis.addEventListener("unload", () => backend.close());

Deno.test("several recipes share one rebuild, and write exactly what each writes alone", async () => {
  await withDir(async (dir) => {
    const recipes = [
      "spn_lora=1,thr=-1.2",
      "fro_ckpt=1,thr=-3",
      "subspace=1,thr=-0.8",
      "spn_lora=1,size=0.05",
      "fro_ckpt=1,thr=-3,rescale=0.5", // a second rebuild group
    ];
    // Each output dtype: the kept columns are gathered in elements of 2 and 4 bytes.
    for (const outputDtype of ["F16", "F32", "BF16"] as const) {
      const at = (name: string) => join(dir, outputDtype, name);
      const together = await resize(
        options(at("together"), { recipes: recipes.join(":"), outputDtype }),
      );
      assertEquals(together.outputs.length, recipes.length);
      for (const [i, recipe] of recipes.entries()) {
        const alone = await resize(options(at(`alone${i}`), { recipes: recipe, outputDtype }));
        assertEquals(
          await Deno.readFile(together.outputs[i].path),
          await Deno.readFile(alone.outputs[0].path),
          `${recipe} (${outputDtype})`,
        );
      }
    }
  });
});

Deno.test("progress: every long step (norms, decomposition, subspace scales, scoring, trade-off curves, rebuild) is counted to its total", async () => {
  await withDir(async (dir) => {
    const seen = new Map<string, { last: number; total: number; steps: number }>();
    await resize(options(dir, {
      recipes: "fro_ckpt=1,thr=-3:spn_lora=1,thr=-1:subspace=1,thr=-2",
      curve: true, // as --report asks: the curves take seconds on a full-size LoRA
      onProgress: (label, done, total) => {
        const s = seen.get(label) ?? { last: 0, total, steps: 0 };
        assert(done > s.last && done <= total && total === s.total, `${label} ${done}/${total}`);
        seen.set(label, { last: done, total, steps: s.steps + 1 });
      },
    }));
    assertEquals([...seen.keys()].sort(), [
      "Norms",
      "Rebuild",
      "SVD",
      "Scoring fro_ckpt=1,thr=-3",
      "Scoring spn_lora=1,thr=-1",
      "Scoring subspace=1,thr=-2",
      "Subspace",
      "Trade-off fro_ckpt=1,thr=-3",
      "Trade-off spn_lora=1,thr=-1",
      "Trade-off subspace=1,thr=-2",
    ]);
    for (const [label, s] of seen) assertEquals(s.last, s.total, label);
  });
});

/** The tensors of a file, for building variants of it. */
async function tensorsOf(path: string) {
  await using src = await SafetensorsFile.open(path);
  const tensors = await Promise.all(src.names.map(async (name) => {
    const t = src.info(name);
    return { name, dtype: t.dtype, shape: t.shape, data: await src.readBytes(name) };
  }));
  return { tensors, metadata: src.metadata };
}

/** An unpaired layer `lora_unet_<stem>` (2 × 3, rank 1) with the given alpha and down values. */
function unpairedLayer(stem: string, alpha: number, down: number[]) {
  const name = `lora_unet_${stem}`;
  return [
    { name: `${name}.alpha`, dtype: "F32" as const, shape: [], data: encodeFloats([alpha], "F32") },
    {
      name: `${name}.lora_down.weight`,
      dtype: "F32" as const,
      shape: [1, 3],
      data: encodeFloats(down, "F32"),
    },
    {
      name: `${name}.lora_up.weight`,
      dtype: "F32" as const,
      shape: [2, 1],
      data: encodeFloats([1, 2], "F32"),
    },
  ];
}

Deno.test("layers that pair with nothing are decomposed early, and a failure among them fails nothing", async () => {
  await withDir(async (dir) => {
    const { tensors, metadata } = await tensorsOf(LOCON);
    // An infinite alpha, which the backend refuses, and NaN weights: both copied unchanged.
    const odd = [
      ...unpairedLayer("nowhere_a", Infinity, [1, 2, 3]),
      ...unpairedLayer("nowhere_b", 1, [NaN, 2, 3]),
    ];
    const input = join(dir, "odd.safetensors");
    await writeSafetensors(input, [...tensors, ...odd], { metadata });
    const decomposed: number[] = [];
    const counting: Backend = delegating(backend, {
      decompose: (layers, opts) => {
        decomposed.push(layers.length);
        return backend.decompose(layers, opts);
      },
    });
    const plain = await resize(options(join(dir, "plain"), {}));
    const { outputs } = await resize(options(dir, { loras: [input], backend: counting }));
    // Every layer first, refused; then the paired ones alone.
    const paired = plain.outputs[0].layers.length;
    assertEquals(decomposed, [paired + 2, paired]);
    await using out = await SafetensorsFile.open(outputs[0].path);
    await using ref = await SafetensorsFile.open(plain.outputs[0].path);
    for (const t of odd) {
      // Cast to the output's F16; these values are exact in it (∞ and NaN included).
      const want = Array.from(new Float32Array(t.data.slice().buffer));
      assertEquals(Array.from(await out.readFloat32(t.name)), want, t.name);
    }
    for (const name of ref.names) {
      if (name.endsWith(".weight")) {
        assertEquals(await out.readBytes(name), await ref.readBytes(name));
      }
    }
  });
});

Deno.test("the first LoRA's decomposition starts before the base is read, and stops when pairing fails", async () => {
  await withDir(async (dir) => {
    const events: string[] = [];
    let signal: AbortSignal | undefined;
    const watching: Backend = delegating(backend, {
      decompose: (layers, opts) => {
        events.push("decompose");
        signal = opts?.signal;
        return backend.decompose(layers, opts);
      },
    });
    const log = (level: string, message: string) =>
      events.push(`${level} ${message.split(" ")[0]}`);
    await resize(options(dir, {
      backend: watching,
      log,
      normsCache: join(dir, "cache"),
      onProgress: (label) => events.push(label),
    }));
    events.length = 0;
    await resize(options(join(dir, "again"), {
      backend: watching,
      log,
      normsCache: join(dir, "cache"),
      onProgress: (label) => events.push(label),
    }));
    const first = (prefix: string) => events.findIndex((e) => e.startsWith(prefix));
    // The log keeps the original's order; the SVD bar appears after the pairing's lines.
    assert(first("decompose") < first("INFO Loading"), events.join(", "));
    assert(first("INFO Loading") < first("INFO Processing"), events.join(", "));
    assert(first("INFO Processing") < first("INFO Mapped"), events.join(", "));
    assert(first("INFO Mapped") < first("SVD"), events.join(", "));
    assert(signal !== undefined && !signal.aborted);

    const { tensors } = await tensorsOf(LOCON);
    const sd15 = join(dir, "sd15.safetensors");
    await writeSafetensors(
      sd15,
      [...tensors, ...unpairedLayer("down_blocks_0_x", 1, [1, 2, 3])]
        .filter((t) => t.name.includes("down_blocks_0_x")),
    );
    await assertRejects(
      () => resize(options(join(dir, "sd15"), { loras: [sd15], backend: watching })),
      Error,
      "matches the base checkpoint",
    );
    assert(signal?.aborted, "the early decomposition was aborted");
  });
});

/** A backend like the shared one whose rebuild is `rebuild`. */
function withRebuild(rebuild: Backend["rebuild"]): Backend {
  return delegating(backend, { rebuild });
}

/** Names in a folder (none when it does not exist). */
function namesIn(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

Deno.test("an output is written while its layers are rebuilt; a failing rebuild leaves no file", async () => {
  await withDir(async (dir) => {
    const expected = await resize(options(join(dir, "whole"), {}));
    const wanted = await Deno.readFile(expected.outputs[0].path);

    // The rebuild hands over its first layer, then waits until the output's temporary file
    // exists: only a writer that starts before the rebuild ends lets it finish in time.
    const streamingDir = join(dir, "streaming");
    let waited = 0;
    const gated = withRebuild(async (requests, o) => {
      const all = await backend.rebuild(requests);
      o?.onResult?.(0, all[0]);
      while (!namesIn(streamingDir).some((n) => n.endsWith(".tmp")) && waited < 5000) {
        await new Promise((r) => setTimeout(r, 5));
        waited += 5;
      }
      all.forEach((f, i) => i > 0 && o?.onResult?.(i, f));
      return all;
    });
    const streamed = await resize(options(streamingDir, { backend: gated }));
    assert(waited < 5000, "the output was not started before the rebuild finished");
    assertEquals(await Deno.readFile(streamed.outputs[0].path), wanted);

    // A rebuild that fails after its first layer: its error, as it is, and nothing written.
    const failingDir = join(dir, "failing");
    const failing = withRebuild(async (requests, o) => {
      const all = await backend.rebuild(requests);
      o?.onResult?.(0, all[0]);
      await new Promise((r) => setTimeout(r, 20)); // the writer is waiting for layer 1
      throw new BackendError("rebuild: layer 1: out of memory");
    });
    await assertRejects(
      () => resize(options(failingDir, { backend: failing })),
      BackendError,
      "rebuild: layer 1: out of memory",
    );
    assertEquals(namesIn(failingDir), []);
  });
});

// Last in this module: the shared backend's worker must not outlive it.
Deno.test("the shared CPU backend closes, and later calls fail", async () => {
  await backend.close();
  await assertRejects(() => plan(options("unused", {})), Error, "closed");
});
