/**
 * LyCORIS LoHa and LoKr files through every entry point (`resize`, `plan`, `inspect`, merges) on
 * the CPU backend: exactness and optimal truncation against dense references
 * (lycoris_resize_cases.ts; the WebGPU run is lycoris_resize_gpu_test.ts), and bad input.
 */

import { main } from "../cli.ts";
import { inspect, LoraError, plan, resize } from "../mod.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { sdxlLoraLayers } from "../src/testing/synthetic_lora.ts";
import { lohaTensors, lokrTensors } from "../src/testing/synthetic_lycoris.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { jacobiSingularValues } from "./jacobi_svd.ts";
import {
  checkKeepEverything,
  checkOptimalTruncation,
  checkSubspace,
  type Fixture,
  formTensors,
  inputDelta,
  SCALE,
  writeFixture,
} from "./lycoris_resize_cases.ts";

const DIR = await Deno.makeTempDir({ prefix: "lycoris_resize_test_" });
const FIXTURE: Fixture = await writeFixture(DIR);
const cpu = { device: "cpu" as const, normsCache: false as const };

Deno.test("a file mixing LoRA, LoHa and LoKr layers, kept at every nonzero dimension, is written as LoRA layers ComfyUI maps, each ΔW the dense ΔW within F16 rounding (CPU)", async () => {
  await checkKeepEverything(FIXTURE, "cpu");
});

Deno.test("with size=, each LoRA, LoHa and LoKr layer's error is the Eckart–Young optimum at the rank it keeps (CPU)", async () => {
  await checkOptimalTruncation(FIXTURE, "cpu");
});

Deno.test("inspect shows each layer's type and its rank as an exact LoRA: r for LoRA, r1·r2 for LoHa, rank(W1)·rank(W2) for LoKr", async () => {
  for (const checkpoint of [undefined, FIXTURE.base]) {
    const result = await inspect({ lora: FIXTURE.mixed, checkpoint, ...cpu });
    assertEquals(result.layers.map((l) => l.name), FIXTURE.layers.map((l) => l.spec.name));
    for (const [i, l] of FIXTURE.layers.entries()) {
      const row = result.layers[i];
      assertEquals(row.type, l.form === "lora" ? "lora" : l.form === "loha" ? "loha" : "lokr");
      if (l.form === "lora") assertEquals(row.rank, 4);
      else if (l.form === "loha") assertEquals(row.rank, 9);
      else {
        const dense = inputDelta(FIXTURE, l);
        const sigma = jacobiSingularValues(dense.v, dense.rows, dense.cols);
        const rank = sigma.filter((s) => s > 1e-9 * sigma[0]).length;
        assertEquals(row.rank, rank, `${l.spec.name} (${l.form})`);
      }
      // With the base, a conv layer shows its kernel (the factors are flat over in·kh·kw).
      if (checkpoint && l.spec.kernel === 3) assertEquals(row.kind, "conv", l.spec.name);
    }
  }
});

Deno.test("plan (dry run) sizes a LyCORIS conversion exactly as resize writes it, with the original's keys and kohya's", async () => {
  const options = { checkpoint: FIXTURE.base, loras: [FIXTURE.mixed], ...cpu };
  for (const recipes of ["fro_ckpt=1,thr=-2:spn_lora=1,params=0.5,size=0.01", "sv_fro=0.9"]) {
    const planned = await plan({ ...options, recipes });
    const written = await resize({ ...options, recipes, outputFolder: `${DIR}/plan` });
    for (const [i, o] of written.outputs.entries()) {
      assertEquals(planned.outputs[i].bytes, o.bytes);
      assertEquals((await Deno.stat(o.path)).size, o.bytes);
      assert(o.rankAfter > 0 && o.rankAfter < o.rankBefore, `${recipes}: ${o.rankAfter}`);
    }
  }
});

Deno.test("subspace scores of LoRA, LoHa and LoKr layers are |uᵀ·W·v| of each dimension's singular vectors (CPU)", async () => {
  await checkSubspace(FIXTURE, "cpu");
});

Deno.test("a LyCORIS conversion larger than its input is warned about; a size= target is not", async () => {
  const lokr = `${DIR}/lokr_full.safetensors`;
  const specs = FIXTURE.layers.filter((l) => l.spec.kernel === 0).map((l) => l.spec);
  await writeSafetensors(lokr, specs.flatMap((l) => lokrTensors(l, { factor: 4 })));
  const inputMiB = (await Deno.stat(lokr)).size / 2 ** 20;
  for (
    const [recipes, warned] of [["fro_lora=1,thr=-30", true], [
      `fro_lora=1,size=${inputMiB}`,
      false,
    ]] as const
  ) {
    const lines: string[] = [];
    const { outputs: [o] } = await plan({
      checkpoint: FIXTURE.base,
      loras: [lokr],
      recipes,
      log: (level, message) => void (level === "WARNING" && lines.push(message)),
      ...cpu,
    });
    assertEquals(o.bytes > inputMiB * 2 ** 20, warned, recipes);
    assertEquals(
      lines.some((l) => l.includes("larger than its LoHa/LoKr input")),
      warned,
      lines.join("\n"),
    );
  }
});

Deno.test("a LoHa layer's dora_scale is carried to its LoRA layer unchanged, as a LoRA's is", async () => {
  const path = `${DIR}/loha_dora.safetensors`;
  const spec = FIXTURE.layers.find((l) => l.form === "loha" && l.spec.kernel === 0)!.spec;
  const dora: TensorSource = {
    name: `${spec.name}.dora_scale`,
    dtype: "F16",
    shape: [spec.out, 1],
    data: encodeFloats(Float32Array.from({ length: spec.out }, (_, i) => 1 + i / 64), "F16"),
  };
  await writeSafetensors(path, [...lohaTensors(spec, { rank: 2 }), dora]);
  const { outputs: [o] } = await resize({
    checkpoint: FIXTURE.base,
    loras: [path],
    outputFolder: `${DIR}/dora_out`,
    ...cpu,
  });
  await using file = await SafetensorsFile.open(o.path);
  assertEquals(await file.readBytes(dora.name), dora.data);
  assert(file.has(`${spec.name}.lora_down.weight`) && !file.has(`${spec.name}.hada_w1_a`));
});

Deno.test("a module with both a LoRA pair and LoHa factors is a one-line error naming the layer", async () => {
  const tensors = [
    ...lohaTensors(LINEAR, { rank: 2 }),
    ...formTensors(LINEAR, "lora").filter((t) => !t.name.endsWith(".alpha")),
  ];
  await rejectsBadInput("clash", tensors, new RegExp(`layer '${LINEAR.name}' modifies a module`));
});

Deno.test("merges refuse LyCORIS layers with one line", async () => {
  const loha = `${DIR}/loha_only.safetensors`;
  const lohaLayers = FIXTURE.layers.filter((l) => l.form === "loha").map((l) => l.spec);
  await writeSafetensors(loha, lohaLayers.flatMap((l) => lohaTensors(l, { rank: 3 })));
  const e = await assertRejects(
    () => plan({ checkpoint: FIXTURE.base, loras: [`${FIXTURE.mixed}:0.5,${loha}:0.5`], ...cpu }),
    LoraError,
    /is a (LoHa|LoKr) layer; LyCORIS layers cannot be merged/,
  );
  assert(!e.message.includes("\n"), e.message);
});

Deno.test("Tucker LoHa layers are copied unchanged and reported; the output keeps LyCORIS's network module for them", async () => {
  const [a, b] = FIXTURE.layers.filter((l) => l.spec.kernel === 3).map((l) => l.spec);
  const path = `${DIR}/tucker.safetensors`;
  const tucker: TensorSource = {
    name: `${b.name}.hada_t1`,
    dtype: "F16",
    shape: [2, 2, 3, 3],
    data: encodeFloats(new Float32Array(36).fill(0.5), "F16"),
  };
  await writeSafetensors(path, [
    ...lohaTensors(a, { rank: 2 }),
    ...lohaTensors(b, { rank: 2 }),
    tucker,
  ], {
    metadata: { ss_network_module: "lycoris.kohya" },
  });
  const lines: string[] = [];
  const { outputs: [o] } = await resize({
    checkpoint: FIXTURE.base,
    loras: [path],
    outputFolder: `${DIR}/tucker_out`,
    log: (level, message) => void (level === "WARNING" && lines.push(message)),
    ...cpu,
  });
  assert(lines.some((l) => l.includes("6 Tucker LoHa tensors")), lines.join("\n"));
  await using file = await SafetensorsFile.open(o.path);
  const names = file.tensors.map((t) => t.name);
  assert(names.includes(`${a.name}.lora_down.weight`) && names.includes(tucker.name), `${names}`);
  assertEquals(file.metadata.ss_network_module, "lycoris.kohya");
});

/** Writes `tensors` (plus one valid LoHa layer) and checks resize fails with `expected`, writing nothing. */
async function rejectsBadInput(
  what: string,
  tensors: TensorSource[],
  expected: RegExp,
): Promise<void> {
  const path = `${DIR}/${what}.safetensors`;
  const good =
    FIXTURE.layers.find((l) =>
      l.form === "loha" && l.spec.name !== LINEAR.name && l.spec.name !== CONV.name
    )!.spec;
  await writeSafetensors(path, [...lohaTensors(good, { rank: 2 }), ...tensors]);
  const outputFolder = `${DIR}/${what}_out`;
  const e = await assertRejects(
    () => resize({ checkpoint: FIXTURE.base, loras: [path], outputFolder, ...cpu }),
    LoraError,
    expected,
  );
  assert(!e.message.includes("\n"), `one line: ${e.message}`);
  assert(e.message.includes(path), `names the file: ${e.message}`);
  await assertRejects(() => Deno.stat(outputFolder), Deno.errors.NotFound);
}

const [LINEAR, CONV] = (() => {
  const specs = sdxlLoraLayers({ scale: SCALE, include: ["unet_attn", "unet_conv3"] });
  return [
    specs.find((s) => s.kernel === 0 && s.out !== s.in * 2)!,
    specs.find((s) => s.kernel === 3)!,
  ];
})();

Deno.test("a LoHa layer with a missing factor is a one-line error naming the tensor, and nothing is written", async () => {
  const tensors = lohaTensors(LINEAR, { rank: 2 }).filter((t) => !t.name.endsWith(".hada_w2_b"));
  await rejectsBadInput(
    "missing",
    tensors,
    new RegExp(`missing factor '${LINEAR.name}\\.hada_w2_b'`),
  );
});

Deno.test("LoHa factors with mismatched Hadamard ranks are a one-line error naming the tensor, and nothing is written", async () => {
  const rank2 = lohaTensors(LINEAR, { rank: 2 }), rank3 = lohaTensors(LINEAR, { rank: 3 });
  const tensors = rank2.map((t) =>
    t.name.includes(".hada_w2_") ? rank3.find((u) => u.name === t.name)! : t
  );
  await rejectsBadInput(
    "ranks",
    tensors,
    new RegExp(
      `tensor '${
        CONV.name === "" ? "" : LINEAR.name
      }\\.hada_w2_b': Hadamard rank 3 does not match rank 2`,
    ),
  );
});

Deno.test("a LoKr layer whose Kronecker shape is not its base weight's is a one-line error naming the layer, and nothing is written", async () => {
  // The conv layer's factors, under the linear layer's name: a different base shape.
  const tensors = lokrTensors({ ...CONV, name: LINEAR.name }, { factor: 4 });
  await rejectsBadInput(
    "kronecker",
    tensors,
    new RegExp(
      `layer '${LINEAR.name}': Kronecker product .* but the base weight is ${LINEAR.out}×${LINEAR.in}`,
    ),
  );
});

Deno.test("a NaN in a LoHa or LoKr factor is a one-line error naming the tensor, and nothing is written", async () => {
  for (
    const [what, tensors, bad] of [
      ["nan_loha", lohaTensors(LINEAR, { rank: 2 }), `${LINEAR.name}.hada_w1_a`],
      [
        "nan_lokr",
        lokrTensors(CONV, { factor: 4, w2: "decomposed", rank: 2 }),
        `${CONV.name}.lokr_w2_b`,
      ],
    ] as const
  ) {
    const poisoned = tensors.map((t) => {
      if (t.name !== bad) return t;
      const values = new Float32Array(t.shape.reduce((a, b) => a * b, 1)).fill(0.25);
      values[3] = NaN;
      return { ...t, data: encodeFloats(values, t.dtype as "F16") };
    });
    await rejectsBadInput(what, poisoned, new RegExp(`tensor '${bad}': value 3 .* is NaN`));
  }
});

/** Runs the command line, capturing what it prints. */
async function cli(args: string[]): Promise<{ code: number; stderr: string[] }> {
  const stderr: string[] = [];
  const { error, log } = console;
  console.error = (...a: unknown[]) => stderr.push(a.join(" "));
  console.log = () => {};
  try {
    return { code: await main([...args, "-d", "cpu", "--no_norms_cache"]), stderr };
  } finally {
    console.error = error;
    console.log = log;
  }
}

Deno.test("the command line: a dry run with a report of a LyCORIS file writes the report only; a NaN factor exits 1 with one error line", async () => {
  const out = `${DIR}/cli_out`, report = `${DIR}/cli_report.html`;
  const dry = await cli([FIXTURE.base, FIXTURE.mixed, "-o", out, "--dry_run", "--report", report]);
  assertEquals(dry.code, 0, dry.stderr.join("\n"));
  await assertRejects(() => Deno.stat(out), Deno.errors.NotFound);
  const html = await Deno.readTextFile(report);
  assert(html.includes("mixed.safetensors") && html.includes("fro_ckpt=1,thr=-3.5"), "the plan");

  const bad = `${DIR}/cli_nan.safetensors`;
  const tensors = lohaTensors(LINEAR, { rank: 2 }).map((t) =>
    t.name.endsWith(".hada_w2_a")
      ? { ...t, data: encodeFloats(new Float32Array(LINEAR.out * 2).fill(NaN), "F16") }
      : t
  );
  await writeSafetensors(bad, tensors);
  const failed = await cli([FIXTURE.base, bad, "-o", out]);
  assertEquals(failed.code, 1, failed.stderr.join("\n"));
  const errors = failed.stderr.filter((l) => l.startsWith("error: "));
  assertEquals(errors.length, 1, failed.stderr.join("\n"));
  assert(errors[0].includes(`tensor '${LINEAR.name}.hada_w2_a'`), errors[0]);
  await assertRejects(() => Deno.stat(out), Deno.errors.NotFound);
});
