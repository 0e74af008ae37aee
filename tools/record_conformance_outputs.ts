/**
 * Records what the CLI writes and prints on every conformance case, on the CPU backend:
 * the sha256 of each output file, of stdout and of the log lines (paths made relative).
 * `tests/conformance_test.ts` asserts that the current code reproduces the record exactly, so a
 * refactor that changes one output byte or one log line fails.
 *
 * Besides each case's own command line (with `--no_norms_cache -d cpu`, and
 * `--size_accounting original` for size recipes, as the conformance test runs it), each case is
 * also run as a dry run with `--size_accounting file` (the default accounting) and an HTML report,
 * and each case's LoRA is inspected with the base (`--json`).
 *
 * ```sh
 * deno run -A tools/record_conformance_outputs.ts > tests/fixtures/conformance_outputs.json
 * ```
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { main } from "../cli.ts";

const FIXTURES = new URL("../tests/fixtures/", import.meta.url).pathname;

/** One recorded command: what it wrote and printed. */
export interface RecordedRun {
  /** The command line, `$DATA/` standing for the fixtures folder and `$OUT` for the output one. */
  readonly argv: string[];
  /** Exit status. */
  readonly code: number;
  /** sha256 of each file written to `$OUT`, by name (an HTML report's paths substituted back). */
  readonly outputs: Record<string, string>;
  /** sha256 of stdout (its text, `$DATA/` and `$OUT` substituted back). */
  readonly stdout: string;
  /** sha256 of the log lines on stderr (joined by newlines, `$DATA/` and `$OUT` substituted back). */
  readonly log: string;
  /** Number of log lines. */
  readonly logLines: number;
}

/** The command lines recorded for one conformance case. */
export function commandLines(argv: readonly string[], recipes: string | null): string[][] {
  const base = [...argv, "--no_norms_cache", "-d", "cpu"];
  const sizeMode = (recipes ?? "").includes("size=");
  const [checkpoint, lora] = argv;
  return [
    sizeMode ? [...base, "--size_accounting", "original"] : base,
    [...base, "--size_accounting", "file", "--dry_run", "--report", "$OUT/report.html"],
    [
      "inspect",
      lora.split(":")[0],
      checkpoint,
      ...(recipes ? ["-r", recipes] : []),
      "--json",
      "--no_norms_cache",
      "-d",
      "cpu",
    ],
  ];
}

/** Runs one command line in a fresh output folder and records it. */
export async function record(argv: readonly string[]): Promise<RecordedRun> {
  const out = await Deno.makeTempDir({ prefix: "resize-lora-record-" });
  const sub = (s: string) => s.replaceAll("$DATA/", FIXTURES).replaceAll("$OUT", out);
  const unsub = (s: string) => s.replaceAll(FIXTURES, "$DATA/").replaceAll(out, "$OUT");
  const stderr: string[] = [], stdout: string[] = [];
  const { error, log } = console;
  console.error = (...a: unknown[]) => stderr.push(a.join(" "));
  console.log = (...a: unknown[]) => stdout.push(a.join(" "));
  try {
    const code = await main(argv.map(sub));
    console.error = error;
    console.log = log;
    const outputs: Record<string, string> = {};
    const names = [];
    for await (const e of Deno.readDir(out)) names.push(e.name);
    for (const name of names.sort()) {
      // A report quotes its input and output paths: hashed with them substituted back, so that
      // the record holds in any checkout.
      const bytes = await Deno.readFile(join(out, name));
      outputs[name] = sha256(
        name.endsWith(".html")
          ? new TextEncoder().encode(unsub(new TextDecoder().decode(bytes)))
          : bytes,
      );
    }
    return {
      argv: [...argv],
      code,
      outputs,
      stdout: sha256(new TextEncoder().encode(unsub(stdout.join("\n")))),
      log: sha256(new TextEncoder().encode(stderr.map(unsub).join("\n"))),
      logLines: stderr.length,
    };
  } finally {
    console.error = error;
    console.log = log;
    await Deno.remove(out, { recursive: true });
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

if (import.meta.main) {
  const cases: { id: string; argv: string[]; recipes: string | null }[] = [];
  for await (const e of Deno.readDir(join(FIXTURES, "cases"))) {
    if (/^M\d+_.*\.json$/.test(e.name)) {
      cases.push(JSON.parse(await Deno.readTextFile(join(FIXTURES, "cases", e.name))));
    }
  }
  cases.sort((a, b) => a.id.localeCompare(b.id));
  const recorded: Record<string, RecordedRun[]> = {};
  for (const c of cases) {
    recorded[c.id] = [];
    for (const argv of commandLines(c.argv, c.recipes)) recorded[c.id].push(await record(argv));
  }
  console.log(JSON.stringify(recorded, null, 1));
}
