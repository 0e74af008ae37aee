/**
 * False numbers are never believed: NaN or ∞ in a LoRA factor, an alpha or a
 * base weight fails with one line naming the file and the tensor, writing
 * nothing; a damaged, foreign or unwritable norms cache never breaks a run,
 * and its invalid values are recomputed (same output bytes as a cold run).
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import {
  assertFailsCleanly,
  assertNoControlCharacters,
  BASE,
  copyWithElement,
  LOCON,
  run,
  snapshot,
  withDir,
} from "./hostile.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";

const LAYER = "lora_unet_input_blocks_1_0_emb_layers_1";

async function baseKeyOf(layer: string): Promise<string> {
  await using base = await BaseCheckpoint.open(BASE);
  return base.lookup(layer)!.key;
}

Deno.test("NaN or ∞ in a LoRA factor names the file, the tensor and the element", async () => {
  await withDir(async (dir) => {
    for (
      const [half, index, value] of [["down", 3, NaN], ["up", 7, -Infinity], [
        "up",
        0,
        Infinity,
      ]] as const
    ) {
      const lora = join(dir, `bad_${half}_${index}.safetensors`);
      const tensor = `${LAYER}.lora_${half}.weight`;
      await copyWithElement(LOCON, lora, { tensor, index, value });
      await assertFailsCleanly([BASE, lora, "--no_norms_cache", "-o", join(dir, "out")], {
        dir,
        patterns: [
          new RegExp(`^error: ${lora}: tensor '${tensor}': element ${index} is ${value}$`),
        ],
      });
    }
  });
});

Deno.test("a NaN alpha names the file and the alpha tensor", async () => {
  await withDir(async (dir) => {
    const lora = join(dir, "alpha.safetensors");
    await copyWithElement(LOCON, lora, { tensor: `${LAYER}.alpha`, index: 0, value: NaN });
    await assertFailsCleanly([BASE, lora, "--no_norms_cache"], {
      dir,
      patterns: [
        new RegExp(`^error: ${lora}: tensor '${LAYER}\\.alpha': alpha NaN is not a finite number$`),
      ],
    });
  });
});

Deno.test("NaN in a base weight fails naming the checkpoint and the weight; the cache stores nothing", async () => {
  await withDir(async (dir) => {
    const key = await baseKeyOf(LAYER);
    const base = join(dir, "base.safetensors");
    await copyWithElement(BASE, base, { tensor: key, index: 2, value: NaN });
    const cache = join(dir, "cache");
    await Deno.mkdir(cache);
    await assertFailsCleanly([base, LOCON, "--norms_cache", cache, "-o", join(dir, "out")], {
      dir,
      patterns: [
        new RegExp(
          `^error: ${base}: tensor '${key.replaceAll(".", "\\.")}': its Frobenius norm is NaN`,
        ),
      ],
    });
    // A subspace recipe reads the weight through its subspace scales instead.
    await assertFailsCleanly([base, LOCON, "--no_norms_cache", "-r", "subspace,thr=-3"], {
      dir,
      patterns: [
        new RegExp(
          `^error: ${base}: tensor '${key.replaceAll(".", "\\.")}': subspace scale \\d+ is NaN`,
        ),
      ],
    });
  });
});

/** A cold run's output bytes, then the cache file it wrote. */
async function coldRun(
  dir: string,
): Promise<{ output: Record<string, string>; cacheFile: string }> {
  const cache = join(dir, "cache");
  const r = await run([BASE, LOCON, "-d", "cpu", "--norms_cache", cache, "-o", join(dir, "cold")]);
  assertEquals(r.code, 0, r.stderr.join("\n"));
  const [name] = [...Deno.readDirSync(cache)].map((e) => e.name);
  return { output: await snapshot(join(dir, "cold")), cacheFile: join(cache, name) };
}

/** A warm run into `out`: its exit code, warnings and output bytes. */
async function warmRun(dir: string, out: string, cache = join(dir, "cache")) {
  const r = await run([BASE, LOCON, "-d", "cpu", "--norms_cache", cache, "-o", join(dir, out)]);
  assertEquals(r.code, 0, r.stderr.join("\n"));
  assertNoControlCharacters(r.stderr);
  return {
    warnings: r.stderr.filter((l) => l.startsWith("WARNING:root:") && /cache|norms/.test(l)),
    output: await snapshot(join(dir, out)),
  };
}

function assertValidCache(text: string): void {
  const body = JSON.parse(text);
  const values = Object.values(body.norms as Record<string, Record<string, unknown>>);
  assert(values.length > 0);
  for (const v of values) {
    for (const n of Object.values(v)) {
      assert(typeof n === "number" && n >= 0 && isFinite(n), `${n}`);
    }
  }
}

Deno.test("invalid cached norms ('abc', -1, null, NaN) are ignored, recomputed and rewritten", async () => {
  await withDir(async (dir) => {
    const cold = await coldRun(dir);
    const body = JSON.parse(await Deno.readTextFile(cold.cacheFile));
    const keys = Object.keys(body.norms);
    const bad = ["abc", -1, null, "NaN", [], 1e400];
    keys.forEach((k, i) => body.norms[k] = { frobenius: bad[i % bad.length] });
    await Deno.writeTextFile(cold.cacheFile, JSON.stringify(body));
    const warm = await warmRun(dir, "warm");
    assertEquals(warm.output, cold.output, "a damaged cache changed the output");
    assertEquals(warm.warnings.length, 1, warm.warnings.join("\n"));
    assert(warm.warnings[0].includes(`${cold.cacheFile}: ignored ${keys.length} invalid norms`));
    assert(warm.warnings[0].includes(`key '${keys[0]}': frobenius "abc"`), warm.warnings[0]);
    assertValidCache(await Deno.readTextFile(cold.cacheFile));
  });
});

Deno.test("a damaged cache file (norms null, not JSON, no format) warns, is recomputed and rewritten", async () => {
  await withDir(async (dir) => {
    const cold = await coldRun(dir);
    const body = JSON.parse(await Deno.readTextFile(cold.cacheFile));
    for (
      const [text, why] of [
        [JSON.stringify({ ...body, norms: null }), '"norms" is null'],
        ["{truncated", "not JSON"],
        [JSON.stringify({ norms: body.norms }), 'no "format": "resize-lora-norms/1"'],
      ]
    ) {
      await Deno.writeTextFile(cold.cacheFile, text);
      const warm = await warmRun(dir, "warm");
      assertEquals(warm.output, cold.output);
      assertEquals(warm.warnings.length, 1, warm.warnings.join("\n"));
      assert(warm.warnings[0].includes(`damaged norms cache (${why})`), warm.warnings[0]);
      assertValidCache(await Deno.readTextFile(cold.cacheFile));
      assertEquals(
        [...Deno.readDirSync(join(dir, "cache"))].length,
        1,
        "only the cache file, no .tmp",
      );
    }
  });
});

Deno.test("an unwritable cache warns and the run goes on; an unrelated file is never overwritten", async () => {
  await withDir(async (dir) => {
    const cold = await coldRun(dir);
    const taken = join(dir, "taken");
    await Deno.writeTextFile(taken, "not a folder");
    const unrelated = join(dir, "settings.json");
    await Deno.writeTextFile(unrelated, '{"theme": "dark"}');
    const cases: [string, RegExp][] = [
      [taken, /taken\/[0-9a-f]{32}\.json: cannot write the norms cache .*going on without caching/],
      [join(taken, "below"), /cannot write the norms cache .*going on without caching/],
      [unrelated, /settings\.json: not a norms cache \(no "format".*left unchanged/],
    ];
    for (const [location, pattern] of cases) {
      const before = await snapshot(dir);
      const out = `out_${cases.findIndex((c) => c[0] === location)}`;
      const warm = await warmRun(dir, out, location);
      assertEquals(warm.output, cold.output);
      assertEquals(warm.warnings.length, 1, warm.warnings.join("\n"));
      assert(pattern.test(warm.warnings[0]), warm.warnings[0]);
      const after = await snapshot(dir);
      for (const k of Object.keys(after)) if (k.startsWith(out)) delete after[k];
      assertEquals(after, before, "nothing but the output may change");
    }
  });
});

Deno.test("control characters in tensor names are escaped in errors and warnings", async () => {
  await withDir(async (dir) => {
    const { writeSafetensors } = await import("../src/safetensors/writer.ts");
    const { encodeFloats } = await import("../src/safetensors/dtype.ts");
    const name = "lora_unet_x\n\x1b[31mred\u2028";
    const lora = join(dir, "odd.safetensors");
    // up [2, 3] does not chain with down [2, 4]: an error quoting the layer name.
    await writeSafetensors(lora, [
      {
        name: `${name}.lora_down.weight`,
        dtype: "F32",
        shape: [2, 4],
        data: encodeFloats(Array(8).fill(1), "F32"),
      },
      {
        name: `${name}.lora_up.weight`,
        dtype: "F32",
        shape: [2, 3],
        data: encodeFloats(Array(6).fill(1), "F32"),
      },
    ]);
    const line = await assertFailsCleanly([BASE, lora, "--no_norms_cache"], {
      dir,
      patterns: [/layer 'lora_unet_x\\n\\e\[31mred\\u2028'/],
    });
    assert(line.includes("does not chain"), line);
    // A layer that pairs with nothing, beside layers that do, is named in a warning with
    // --drop_unmapped.
    const ok = join(dir, "ok.safetensors");
    const { SafetensorsFile } = await import("../src/safetensors/reader.ts");
    await using locon = await SafetensorsFile.open(LOCON);
    const tensors = await Promise.all(
      locon.tensors.map(async (t) => ({ ...t, data: await locon.readBytes(t.name) })),
    );
    const ones = (n: number) => encodeFloats(Array(n).fill(1), "F32");
    await writeSafetensors(ok, [
      ...tensors,
      { name: `${name}.lora_down.weight`, dtype: "F32", shape: [1, 4], data: ones(4) },
      { name: `${name}.lora_up.weight`, dtype: "F32", shape: [2, 1], data: ones(2) },
    ]);
    const r = await run([
      BASE,
      ok,
      "--no_norms_cache",
      "-d",
      "cpu",
      "--drop_unmapped",
      "-o",
      join(dir, "o"),
    ]);
    assertNoControlCharacters([...r.stderr, ...r.stdout]);
    assert(r.stderr.some((l) => l.includes("lora_unet_x\\n\\e[31mred")), r.stderr.join("\n"));
  });
});
