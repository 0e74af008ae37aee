/**
 * Fuzzers of the small parsers that read what a user or a file gives: the
 * header's nesting and length limits, the merge syntax, the recipe language.
 * Each keeps a fixed seed and a small case count in the default run;
 * `FUZZ_RUNS=20000` runs long (see tests/fuzz.ts).
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { fuzzRuns } from "./fuzz.ts";
import { LoraError, RecipeError, SafetensorsError } from "../src/errors.ts";
import {
  MAX_HEADER_BYTES,
  MAX_HEADER_DEPTH,
  parseHeader,
  readHeaderLength,
} from "../src/safetensors/header.ts";
import { loraEntryMembers, parseMergeSpec } from "../src/lora/merge_spec.ts";
import {
  MAX_ABS_THRESHOLD,
  MAX_RESCALE,
  MAX_SIZE_MIB,
  outputFileName,
  parseRecipe,
  SCORE_KEYS,
} from "../src/recipe/recipe.ts";
import { parsePythonFloat } from "../src/recipe/pyfloat.ts";
import { oneLine } from "../src/one_line.ts";

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** Asserts a one-line message (no control character) of the expected class. */
function assertOneLine(e: unknown, kind: abstract new (...a: never[]) => Error): string {
  assert(e instanceof kind, `expected ${kind.name}, got ${e}`);
  assert(!CONTROL.test(e.message), JSON.stringify(e.message));
  return e.message;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** JSON values nested up to ~40 deep, strings holding brackets and quotes. */
const nestedJson: fc.Arbitrary<Json> = fc.letrec<{ value: Json }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constantFrom<Json>(null, true, 1, -2.5),
    fc.string({
      unit: fc.constantFrom("[", "]", "{", "}", '"', "\\", "a", ":", ","),
      maxLength: 6,
    }),
    fc.array(tie("value"), { maxLength: 2 }),
    fc.dictionary(fc.string({ maxLength: 3 }), tie("value"), { maxKeys: 2 }),
  ),
})).value;

/** Chains of one bracket kind, long enough to cross the limit often. */
const deepJson: fc.Arbitrary<Json> = fc.tuple(
  fc.integer({ min: 1, max: 40 }),
  fc.constantFrom("array", "object"),
  nestedJson,
).map(([depth, kind, leaf]) => {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = kind === "array" ? [v] : { k: v };
  return v;
});

function depthOf(v: Json): number {
  if (v === null || typeof v !== "object") return 0;
  const children = Array.isArray(v) ? v : Object.values(v);
  return 1 + Math.max(0, ...children.map(depthOf));
}

Deno.test("fuzz: the header parse refuses exactly the headers nested deeper than the limit", () => {
  const file = "f.safetensors";
  let deep = 0, shallow = 0;
  fc.assert(
    fc.property(fc.oneof(nestedJson, deepJson), (value) => {
      const header = { x: value };
      const bytes = new TextEncoder().encode(JSON.stringify(header));
      const tooDeep = depthOf(header) > MAX_HEADER_DEPTH;
      try {
        parseHeader(bytes, { file, fileSize: 8 + bytes.length });
        assert(!tooDeep, "a header nested too deep was parsed");
      } catch (e) {
        const message = assertOneLine(e, SafetensorsError);
        assert(message.startsWith(`${file}: `), message);
        assertEquals(message.includes("nests deeper than"), tooDeep, message);
      }
      tooDeep ? deep++ : shallow++;
    }),
    fuzzRuns(300),
  );
  assert(deep > 10 && shallow > 10, `${deep} deep, ${shallow} shallow`);
});

Deno.test("fuzz: raw header bytes parse or fail with a one-line SafetensorsError, never anything else", () => {
  const unit = fc.constantFrom(...'[]{}":,\\ a1-eE.n\n\x1b\u00e9'.split(""));
  fc.assert(
    fc.property(fc.string({ unit, maxLength: 60 }), (text) => {
      const bytes = new TextEncoder().encode(text);
      try {
        parseHeader(bytes, { file: "f", fileSize: 8 + bytes.length });
      } catch (e) {
        assert(assertOneLine(e, SafetensorsError).startsWith("f: "));
      }
    }),
    fuzzRuns(500),
  );
});

Deno.test("fuzz: the header length is accepted exactly within the file and the 100 MB limit", () => {
  fc.assert(
    fc.property(
      fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.bigInt({ min: 0n, max: 200n })),
      fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 2 ** 40 })),
      (n, fileSize) => {
        const prefix = new Uint8Array(8);
        new DataView(prefix.buffer).setBigUint64(0, n, true);
        const ok = fileSize >= 8 && n <= BigInt(MAX_HEADER_BYTES) && n <= BigInt(fileSize - 8);
        try {
          assertEquals(readHeaderLength(prefix, { file: "f", fileSize }), Number(n));
          assert(ok, `accepted ${n} in a ${fileSize}-byte file`);
        } catch (e) {
          assertOneLine(e, SafetensorsError);
          assert(!ok, (e as Error).message);
        }
      },
    ),
    fuzzRuns(500),
  );
});

/** A member path: folders (POSIX or Windows), a name, `.safetensors`; no `,`. */
const memberPath = fc.tuple(
  fc.constantFrom("", "/tmp/", "loras/", "C:\\x\\", "./a b/", "d:/m/"),
  fc.string({ unit: fc.constantFrom(..."abz_- .é09".split("")), minLength: 1, maxLength: 8 }),
).map(([dir, name]) => `${dir}${name}.safetensors`);

/** A weight as a user types it, with its value. */
const weightText = fc.oneof(
  fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e6, max: 1e6 }).map((w) => ({
    text: String(w),
    value: Number(String(w)), // String(-0) is "0"
  })),
  fc.constantFrom({ text: "0.5", value: 0.5 }, { text: "-1", value: -1 }, {
    text: "1e-3",
    value: 1e-3,
  }),
);

Deno.test("fuzz: merge specs give back their members and weights", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(memberPath, fc.option(weightText, { nil: undefined })), {
        minLength: 1,
        maxLength: 4,
      }),
      (members) => {
        const entry = members.map(([p, w]) => (w ? `${p}:${w.text}` : p)).join(",");
        const merge = members.length > 1 || members.some(([, w]) => w !== undefined);
        const expected = members.map(([path, w]) => ({ path, weight: w?.value ?? 1 }));
        assertEquals(parseMergeSpec(entry), merge ? expected : undefined);
      },
    ),
    fuzzRuns(500),
  );
});

/** Texts after a `.safetensors` name that are no weight (and no path). */
const badWeight = fc.string({ minLength: 1, maxLength: 6 }).filter((t) =>
  !/[,:\\/]/.test(t) && parsePythonFloat(t) === undefined
);

Deno.test("fuzz: a bad weight after a .safetensors name is reported as a bad weight", () => {
  fc.assert(
    fc.property(memberPath, badWeight, fc.boolean(), (path, bad, first) => {
      const entry = first ? `${path}:${bad},${path}` : `${path}:0.5,${path}:${bad}`;
      try {
        parseMergeSpec(entry);
        throw new Error(`accepted ${entry}`);
      } catch (e) {
        const message = assertOneLine(e, LoraError);
        assert(message.includes(`has a weight '${oneLine(bad)}' that is not a number`), message);
      }
    }),
    fuzzRuns(500),
  );
});

Deno.test("fuzz: any entry is members, a path, or a one-line LoraError", () => {
  const unit = fc.constantFrom(..."ab.:,/\\0123456789eE-+_ infa\n".split(""));
  fc.assert(
    fc.property(fc.string({ unit, maxLength: 24 }), (entry) => {
      try {
        const members = parseMergeSpec(entry);
        for (const m of members ?? []) {
          assert(m.path !== "" && Number.isFinite(m.weight), JSON.stringify(m));
        }
      } catch (e) {
        assertOneLine(e, LoraError);
      }
    }),
    fuzzRuns(1000),
  );
});

Deno.test("fuzz: an existing file is never read as a merge spec, whatever ',' and ':' it holds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "merge_fuzz_" });
  try {
    const name = fc.string({
      unit: fc.constantFrom(..."a,:b.0 5-é".split("")),
      minLength: 1,
      maxLength: 12,
    }).filter((n) => n !== "." && n !== "..");
    fc.assert(
      fc.property(name, (n) => {
        const path = join(dir, `${n}.safetensors`);
        Deno.writeFileSync(path, new Uint8Array());
        try {
          assertEquals(loraEntryMembers(path), undefined);
        } finally {
          Deno.removeSync(path);
        }
      }),
      fuzzRuns(200),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Values as a user might type them, numbers of every range and a few words. */
const valueText = fc.oneof(
  fc.constant(""),
  fc.double().map(String),
  fc.integer({ min: -5, max: 5 }).map(String),
  fc.constantFrom(
    "nan",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e300",
    "1e-320",
    "abc",
    "0x1",
    "1_0",
    " 2 ",
  ),
);
const recipeKey = fc.constantFrom(...SCORE_KEYS, "thr", "size", "rescale", "fro_ckp", "");

Deno.test("fuzz: a recipe parses into usable numbers and a short file name, or fails with one line", () => {
  let parsed = 0, refused = 0;
  fc.assert(
    fc.property(
      fc.array(fc.tuple(recipeKey, valueText), { minLength: 1, maxLength: 5 }),
      (parts) => {
        const text = parts.map(([k, v]) => (v === "" ? k : `${k}=${v}`)).join(",");
        let recipe;
        try {
          recipe = parseRecipe(text);
        } catch (e) {
          assertOneLine(e, RecipeError);
          refused++;
          return;
        }
        parsed++;
        const weights = SCORE_KEYS.map((k) => recipe.weights[k]);
        assert(weights.every(Number.isFinite), `${text}: ${weights}`);
        const sum = weights.reduce((a, b) => a + b, 0);
        assert(
          Math.abs(sum - 1) < 1e-6 * Math.max(1, ...weights.map(Math.abs)),
          `${text}: Σ ${sum}`,
        );
        if (recipe.sizeMiB !== undefined) {
          assert(recipe.sizeMiB >= 0 && recipe.sizeMiB <= MAX_SIZE_MIB, text);
        } else {
          const t = recipe.threshold!;
          assert(
            !Number.isNaN(t) && (!Number.isFinite(t) || Math.abs(t) <= MAX_ABS_THRESHOLD),
            text,
          );
        }
        assert(recipe.rescale > 0 && recipe.rescale <= MAX_RESCALE, text);
        const name = outputFileName("lora", recipe, recipe.threshold ?? -1.2345678901234567e-308);
        assert(new TextEncoder().encode(name).length < 255, name);
      },
    ),
    fuzzRuns(1000),
  );
  assert(parsed > 20 && refused > 20, `${parsed} parsed, ${refused} refused`);
});
