/**
 * No path a run writes replaces an input or another output of the run, and
 * every such problem, and every unusable input, fails before any work with
 * one line naming the paths; nothing changes on disk.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { assertFailsCleanly, BASE, LOCON, run, snapshot, withDir } from "./hostile.ts";
import { OutputError } from "../src/errors.ts";
import { resize } from "../src/resize.ts";
import type { Backend } from "../src/linalg/backend.ts";
import { checkOutputFolder, OutputPaths, plannedOutputs } from "../src/output_paths.ts";
import { parseRecipes } from "../src/recipe/recipe.ts";

/** The fixtures copied into `dir` (base.safetensors, lora.safetensors). */
async function inputs(dir: string): Promise<{ base: string; lora: string }> {
  const base = join(dir, "base.safetensors"), lora = join(dir, "lora.safetensors");
  await Deno.copyFile(BASE, base);
  await Deno.copyFile(LOCON, lora);
  return { base, lora };
}

const NO_CACHE = "--no_norms_cache";

Deno.test("--report never overwrites the LoRA, the checkpoint, a link to either, or this run's output", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    await Deno.symlink(lora, join(dir, "link.html"));
    await Deno.link(base, join(dir, "hard.html"));
    const output = join(dir, "lora_frockpt1_th-3.5.safetensors");
    for (
      const [report, what] of [
        [lora, lora],
        [base, base],
        [join(dir, "link.html"), lora],
        [join(dir, "hard.html"), base],
      ]
    ) {
      await assertFailsCleanly([base, lora, NO_CACHE, "--report", report], {
        dir,
        patterns: [new RegExp(`the report would overwrite the input ${what}$`)],
      });
    }
    await assertFailsCleanly([base, lora, NO_CACHE, "--report", output], {
      dir,
      patterns: [
        /written twice in one run, by the output of .*lora\.safetensors .* and by the report/,
      ],
    });
  });
});

Deno.test("the norms cache file may not be an input or the report", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    const json = join(dir, "lora.json");
    await Deno.copyFile(lora, json);
    await assertFailsCleanly([base, json, "--norms_cache", json], {
      dir,
      patterns: [/the norms cache would overwrite the input .*lora\.json$/],
    });
    await assertFailsCleanly(
      [base, lora, "--norms_cache", join(dir, "n.json"), "--report", join(dir, "n.json")],
      {
        dir,
        patterns: [/n\.json: written twice in one run, by the norms cache and by the report$/],
      },
    );
  });
});

Deno.test("two LoRAs of one name from two folders into one -o: one line naming both, nothing written", async () => {
  await withDir(async (dir) => {
    const { base } = await inputs(dir);
    for (const sub of ["a", "b"]) {
      await Deno.mkdir(join(dir, sub));
      await Deno.copyFile(LOCON, join(dir, sub, "x.safetensors"));
    }
    await assertFailsCleanly(
      [base, join(dir, "a/x.safetensors"), join(dir, "b/x.safetensors"), NO_CACHE, "-o", dir],
      {
        dir,
        patterns: [
          /x_frockpt1_th-3\.5\.safetensors: written twice in one run/,
          /by the output of \S*a\/x\.safetensors with recipe fro_ckpt=1,thr=-3\.5/,
          /and by the output of \S*b\/x\.safetensors with recipe fro_ckpt=1,thr=-3\.5$/,
        ],
      },
    );
  });
});

Deno.test("recipes whose names collide after rounding fail before work, size= ones before the first write", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    await assertFailsCleanly(
      [base, lora, NO_CACHE, "-r", "fro_ckpt,thr=-3.2:fro_ckpt,thr=-3.204"],
      {
        dir,
        patterns: [
          /th-3\.2\.safetensors: written twice in one run, by .*thr=-3\.2 and by .*thr=-3\.204$/,
        ],
      },
    );
    // size=0.05 and size=0.050 select the same threshold: known only after selection.
    await assertFailsCleanly(
      [
        base,
        lora,
        NO_CACHE,
        "-o",
        join(dir, "out"),
        "-r",
        "fro_ckpt,size=0.05:fro_ckpt,size=0.050",
      ],
      { dir, patterns: [/written twice in one run, by .*size=0\.05 and by .*size=0\.050$/] },
    );
  });
});

/** A backend that records every call and does nothing. */
function recordingBackend(): Backend & { calls: string[] } {
  const calls: string[] = [];
  const record = (name: string) => () => {
    calls.push(name);
    return Promise.reject(new Error(`${name} called`));
  };
  return {
    calls,
    name: "recording",
    description: "records calls",
    decompose: record("decompose"),
    rebuild: record("rebuild"),
    baseNorms: record("baseNorms"),
    subspaceScales: record("subspaceScales"),
    spectra: record("spectra"),
    singularPairs: record("singularPairs"),
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

Deno.test("-o naming an existing file fails before any heavy work starts", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    const file = join(dir, "taken");
    await Deno.writeTextFile(file, "mine");
    const before = await snapshot(dir);
    for (const outputFolder of [file, join(file, "below")]) {
      const backend = recordingBackend();
      const progress: string[] = [];
      const e = await assertRejects(
        () =>
          resize({
            checkpoint: base,
            loras: [lora],
            outputFolder,
            backend,
            normsCache: false,
            onProgress: (label) => progress.push(label),
          }),
        OutputError,
      );
      assert(e.message.startsWith(`${outputFolder}: `), e.message);
      assertEquals([backend.calls, progress], [[], []]);
    }
    await assertFailsCleanly([base, lora, NO_CACHE, "-o", file], {
      dir,
      patterns: [/taken: the output folder is an existing file, not a folder$/],
    });
    assertEquals(await snapshot(dir), before);
  });
});

Deno.test("a FIFO, a folder or a missing file as any input: one line, same form, nothing blocks", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    const fifo = join(dir, "fifo.safetensors");
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    const folder = join(dir, "folder.safetensors");
    await Deno.mkdir(folder);
    const missing = join(dir, "missing.safetensors");
    const cases: [string[], string, string][] = [
      [[fifo, lora], fifo, "a FIFO"],
      [[base, fifo], fifo, "a FIFO"],
      [[base, folder], folder, "a directory"],
      [[missing, lora], missing, "no such file"],
      [[base, missing], missing, "no such file"],
      [[base, `${lora}:0.5,${missing}:0.5`], missing, "no such file"],
    ];
    for (const [args, path, why] of cases) {
      const escaped = path.replace(/[.]/g, "\\.");
      await assertFailsCleanly([...args, NO_CACHE], {
        dir,
        patterns: [new RegExp(`^error: ${escaped}: cannot open \\(${why}\\)$`)],
      });
    }
    // A folder is a base only when it holds a diffusers model.
    await assertFailsCleanly([folder, lora, NO_CACHE], {
      dir,
      patterns: [
        new RegExp(`^error: ${folder}: a folder given as the base must be a diffusers model`),
      ],
    });
  });
});

Deno.test("a file whose name holds ',' or ':' is used as named, also through a glob", async () => {
  await withDir(async (dir) => {
    const { base } = await inputs(dir);
    const odd = join(dir, "a,b.safetensors");
    await Deno.copyFile(LOCON, odd);
    for (const arg of [odd, join(dir, "a,*.safetensors")]) {
      const out = join(dir, `out${arg.includes("*") ? 2 : 1}`);
      const r = await run([base, arg, NO_CACHE, "-d", "cpu", "-o", out]);
      assertEquals(r.code, 0, r.stderr.join("\n"));
      assertEquals([...Deno.readDirSync(out)].map((e) => e.name), [
        "a,b_frockpt1_th-3.5.safetensors",
      ]);
    }
  });
});

Deno.test("a bad merge weight is reported as a bad weight, not as a missing file", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    for (const entry of [`${lora}:abc`, `${lora}:0.5,${lora}:0.5x`]) {
      await assertFailsCleanly([base, entry, NO_CACHE], {
        dir,
        patterns: [
          /merge spec '.*': member \d \('.*'\) has a weight '(abc|0\.5x)' that is not a number/,
        ],
      });
    }
  });
});

Deno.test("recipe numbers out of range fail before work, and no folder is created", async () => {
  await withDir(async (dir) => {
    const { base, lora } = await inputs(dir);
    const out = join(dir, "out");
    for (
      const [recipe, pattern] of [
        ["fro_ckpt,size=1e300", /Invalid size=1e300 .*at most 1048576/],
        ["fro_ckpt=1e308,spn_lora=1e308,thr=-3", /overflows when the weights are normalised/],
        ["fro_ckpt=nan,thr=-3", /Invalid fro_ckpt=NaN in recipe fro_ckpt=nan,thr=-3/],
        ["fro_ckpt,thr=1e300", /Invalid thr=1e300/],
        ["fro_ckpt,thr=-3,rescale=1e300", /Invalid rescale=1e300/],
      ] as const
    ) {
      await assertFailsCleanly([base, lora, NO_CACHE, "-o", out, "-r", recipe], {
        dir,
        patterns: [pattern],
      });
    }
  });
});

Deno.test("output_paths: claims compare real paths, a source may claim its own path again", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "in.safetensors");
    await Deno.writeTextFile(input, "");
    await Deno.mkdir(join(dir, "sub"));
    const paths = await OutputPaths.create({ inputs: [input] });
    await paths.claim({ path: join(dir, "o"), source: "A" });
    await paths.claim({ path: join(dir, "sub/../o"), source: "A" });
    await assertRejects(
      () => paths.claim({ path: join(dir, "sub/../o"), source: "B" }),
      OutputError,
    );
    await assertRejects(
      () => paths.claim({ path: join(dir, "sub/../in.safetensors"), source: "C" }),
      OutputError,
      "C would overwrite the input",
    );
    assertEquals(paths.claimed.map((c) => c.source), ["A"]);
    await checkOutputFolder(join(dir, "new/deeper")); // missing folders under a folder: fine
    const planned = plannedOutputs({
      loras: [`${input}:0.5,${join(dir, "sub/x.safetensors")}`],
      recipes: parseRecipes("fro_ckpt,thr=-2:spn_lora,size=3"),
    });
    assertEquals(planned.folders, [dir]);
    assertEquals(planned.outputs.map((o) => o.path), [
      join(dir, "in(0.50)+x_frockpt1_th-2.safetensors"),
    ]);
  });
});
