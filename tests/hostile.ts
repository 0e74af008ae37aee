/**
 * Helpers of the robustness tests: hostile inputs built from the fixtures,
 * a hash snapshot of a folder tree (nothing changed, nothing left behind),
 * and a CLI run checked for one clean error line.
 */
import { join, relative } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { main } from "../cli.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
/** The micro SDXL base checkpoint. */
export const BASE = join(FIXTURES, "micro_sdxl_base.safetensors");
/** A micro LoCon LoRA that pairs with {@link BASE}. */
export const LOCON = join(FIXTURES, "microB-locon-r8c4.safetensors");

/** A fresh temporary folder, removed after `fn`. */
export async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-hostile-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every file and folder under `dir` (hidden ones too), with the sha256 of each file. */
export async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (at: string) => {
    for await (const e of Deno.readDir(at)) {
      const path = join(at, e.name);
      const key = relative(dir, path);
      if (e.isDirectory) {
        out[key + "/"] = "dir";
        await walk(path);
      } else if (e.isFile) out[key] = await sha256(path);
      else out[key] = e.isSymlink ? `-> ${await Deno.readLink(path)}` : "special";
    }
  };
  await walk(dir);
  return out;
}

/** Runs the CLI in this process and collects what it printed. */
export async function run(
  args: string[],
): Promise<{ code: number; stdout: string[]; stderr: string[] }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const { error, log } = console;
  console.error = (...a: unknown[]) => stderr.push(a.join(" "));
  console.log = (...a: unknown[]) => stdout.push(a.join(" "));
  try {
    return { code: await main(args), stdout, stderr };
  } finally {
    console.error = error;
    console.log = log;
  }
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Runs the CLI (CPU backend) and asserts a clean failure: exit `code`, exactly
 * one `error: …` line, with no control character, matching every pattern,
 * and the tree under `dir` unchanged (same files, same bytes, no `.tmp`).
 * Returns the error line.
 */
export async function assertFailsCleanly(
  args: string[],
  expected: { code?: number; patterns: RegExp[]; dir: string },
): Promise<string> {
  const before = await snapshot(expected.dir);
  const r = await run([...args, "-d", "cpu"]);
  const all = r.stderr.join("\n");
  assertEquals(r.code, expected.code ?? 1, all);
  const errors = r.stderr.filter((l) => l.startsWith("error: "));
  assertEquals(errors.length, 1, all);
  assert(!CONTROL.test(errors[0]), `control character in ${JSON.stringify(errors[0])}`);
  for (const p of expected.patterns) assert(p.test(errors[0]), `${errors[0]} !~ ${p}`);
  assertEquals(await snapshot(expected.dir), before, "no file may change or be left behind");
  return errors[0];
}

/** Asserts that no line holds a control character (escaped instead). */
export function assertNoControlCharacters(lines: readonly string[]): void {
  for (const l of lines) assert(!CONTROL.test(l), `control character in ${JSON.stringify(l)}`);
}

/**
 * Copies a safetensors file with one float element of one tensor replaced
 * (encoded in the tensor's own dtype).
 */
export async function copyWithElement(
  from: string,
  to: string,
  change: { tensor: string; index: number; value: number },
): Promise<void> {
  const bytes = await Deno.readFile(from);
  await using f = await SafetensorsFile.open(from);
  const t = f.info(change.tensor);
  const element = encodeFloats([change.value], t.dtype as "F16");
  bytes.set(element, f.dataStart + t.dataOffsets[0] + change.index * element.byteLength);
  await Deno.writeFile(to, bytes);
}

/** The names of a file's tensors that end with `suffix`, sorted. */
export async function tensorsEnding(path: string, suffix: string): Promise<string[]> {
  await using f = await SafetensorsFile.open(path);
  return f.names.filter((n) => n.endsWith(suffix)).sort();
}
