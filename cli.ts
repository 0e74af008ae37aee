#!/usr/bin/env -S deno run -A
/**
 * The `resize-lora` command line (docs/design.md, "Command line" and "Logs and progress").
 *
 * ```
 * resize-lora [CHECKPOINT] LORA... [-o DIR] [-t 16|32|bf16] [-d auto|cpu|gpu] [-r RECIPES] [-v|-vv]
 * resize-lora inspect LORA [CHECKPOINT] [-r RECIPE] [--json]
 * resize-lora evaluate CHECKPOINT LORA [-o DIR] [--json] [--report FILE.html]
 * resize-lora demo [-o DIR]
 * ```
 *
 * This is the only module that prints or exits.
 *
 * @module
 */

import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { OutputError, ResizeLoraError, UsageError } from "./src/errors.ts";
import { argumentOrderProblem, fileKind } from "./src/file_kind.ts";
import { expandGlob } from "./src/glob.ts";
import { oneLine } from "./src/one_line.ts";
import {
  releaseTemp,
  removeLiveTempFilesSync,
  removeOrphanTempFiles,
  tempPathFor,
} from "./src/temp_files.ts";
import { loraEntryMembers } from "./src/lora/merge_spec.ts";
import { formatThreshold } from "./src/report/dry_run.ts";
import { closestName } from "./src/suggest.ts";
import type { LogLevel } from "./src/log.ts";
import { DEFAULT_RECIPES, type OutputSummary, plan, resize } from "./src/resize.ts";
import type { OutputDType } from "./src/output.ts";
import type { OutputNaming } from "./src/namings/output_keys.ts";
import type { SizeAccounting } from "./src/recipe/select.ts";
import type { DeviceChoice } from "./src/linalg/select_backend.ts";
import { VERSION } from "./src/version.ts";
import { isKohyaCommandLine, kohyaToResizeLoraArgs, translateKohyaArgs } from "./src/kohya_args.ts";

const HELP = `resize-lora ${VERSION}
Resizes multiple LoRAs with specified parameters.

usage: resize-lora [CHECKPOINT] LORA [LORA ...] [options]
       resize-lora inspect LORA [CHECKPOINT] [-r RECIPE] [--json]
       resize-lora evaluate CHECKPOINT LORA [-o DIR] [--json] [--report FILE.html]
       resize-lora demo [-o DIR]

positional arguments:
  CHECKPOINT            base model: an SDXL or SD1.5 single-file .safetensors checkpoint
                        (fp8 included), or a diffusers model folder. Needed only by
                        fro_ckpt, spn_ckpt and subspace; without it every layer of the LoRA
                        is resized, any architecture. The first positional is the base when
                        it is a folder or its tensor names are a full model's, a LoRA when
                        they are an adapter's (neither: the base if LoRAs follow)
  LORA                  LoRA .safetensors files in kohya, PEFT, diffusers or ComfyUI naming
                        (globs are expanded), or weighted merges
                        "a.safetensors:0.7,b.safetensors:0.3"

options:
  -h, --help            show this help message and exit
  --version             show the version and exit
  -o, --output_folder DIR
                        folder for the outputs (default: each LoRA's folder; created when missing)
  --save_to FILE        the output file, when the run makes one (one LoRA, one recipe)
  --base, --checkpoint CHECKPOINT
                        the base model, given by option: every positional is then a LoRA
  -t, --output_dtype {16,32,bf16}
                        output element type (default: 16)
  --naming {kohya,comfyui,peft,diffusers}
                        write the outputs in this naming (default: each layer in its input's
                        naming; a merge of files in different namings: kohya)
  -d, --device {auto,cpu,gpu}
                        compute device (default: auto). auto runs decomposition, rebuilds and
                        Frobenius norms on the CPU, and spectral norms and subspace scales of
                        at least 256 MiB of base weights on a real (non-fallback) WebGPU
                        adapter when the host has at most 4 cores, as measured fastest; gpu
                        runs everything on WebGPU, software adapters included
  -r, --score_recipes RECIPES
                        recipes separated by ':' (default: ${DEFAULT_RECIPES})
  -v, --verbose         -v: INFO, -vv: DEBUG (default: warnings only)
  --size_accounting {file,original}
                        size= counts the whole output file (file) or only up/down weights as the
                        original tool did (default: file)
  --drop_unmapped       drop tensors that are not part of a resized layer (default: copy them)
  --norms_cache PATH    norms cache folder, or a .json file (default: $XDG_CACHE_HOME/resize-lora)
  --no_norms_cache      do not read or write the norms cache
  --dry_run             print what each recipe would write (sizes, ranks, errors); write nothing
  --report FILE.html    also write a self-contained HTML report: size/error trade-off curves,
                        kept ranks per block, singular-value spectra
  --json                (inspect) print JSON instead of a table

Every long option also has a kebab-case twin (--output-folder, ...).
Recipe keys: spn_ckpt, spn_lora, fro_ckpt, fro_lora, subspace, params (score weights),
thr=LOG10_THRESHOLD or size=MIB (selection), rescale=FACTOR.
kohya's per-layer rules: sv_ratio=R, sv_fro=F or sv_cumulative=C (kohya's dynamic methods, as
kohya does them: one dimension more than the criterion asks for, at least 2; an all-zero layer
is kept at rank 1), rank=N (alone: a fixed rank per layer; with another selection: a per-layer
cap), conv_rank=N (the same for every 4-D layer, 1x1 included; default: rank).
A pasted kohya resize_lora.py command line (--model IN --save_to OUT --new_rank N
--dynamic_method M --dynamic_param P --new_conv_rank N --save_precision P --device D --verbose)
runs as the equivalent recipe, with kohya's defaults: --new_rank 4, float32 output.

evaluate compresses LORA three ways and compares them: (1) spn_ckpt=1,thr=-1.2, a file of
S MiB; (2) spn_lora=1,size=S, cut at a threshold T; (3) kohya's sv_ratio=10^-T capped at the
LoRA's own rank. It prints sizes, ranks per block, the error of ΔW and relative to the base
weights, and how far (2) and (3) agree; --json gives each step's recipe (run alone, it writes
the same file), file and bytes.`;

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
  output_folder: { type: "string", short: "o" },
  save_to: { type: "string" },
  base: { type: "string" },
  checkpoint: { type: "string" },
  "save-to": { type: "string" },
  "output-folder": { type: "string" },
  output_dtype: { type: "string", short: "t" },
  "output-dtype": { type: "string" },
  naming: { type: "string" },
  device: { type: "string", short: "d" },
  score_recipes: { type: "string", short: "r" },
  "score-recipes": { type: "string" },
  verbose: { type: "boolean", short: "v", multiple: true },
  size_accounting: { type: "string" },
  "size-accounting": { type: "string" },
  drop_unmapped: { type: "boolean" },
  "drop-unmapped": { type: "boolean" },
  norms_cache: { type: "string" },
  "norms-cache": { type: "string" },
  no_norms_cache: { type: "boolean" },
  "no-norms-cache": { type: "boolean" },
  dry_run: { type: "boolean" },
  "dry-run": { type: "boolean" },
  report: { type: "string" },
  json: { type: "boolean" },
} as const;

type Values = Record<string, string | boolean | boolean[] | undefined>;

/** The value of option `name` as given, under its snake_case or its kebab-case spelling. */
function optionValue<T extends string | boolean>(values: Values, name: string): T | undefined {
  const v = values[name] ?? values[name.replaceAll("_", "-")];
  return v as T | undefined;
}

function choice<T extends string>(
  value: string | undefined,
  option: string,
  choices: Record<string, T>,
): T | undefined {
  if (value === undefined) return undefined;
  if (!Object.hasOwn(choices, value)) {
    throw new UsageError(
      `argument ${option}: invalid choice: '${value}' (choose from ${
        Object.keys(choices).map((c) => `'${c}'`).join(", ")
      })`,
      { key: option },
    );
  }
  return choices[value];
}

const LEVELS: LogLevel[] = ["WARNING", "INFO", "DEBUG"];
const RANK: Record<LogLevel, number> = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40 };

/** Prints log lines and a progress bar on stderr. */
class Console {
  #bar = "";
  constructor(readonly level: LogLevel, readonly tty: boolean) {}
  log = (level: LogLevel, message: string): void => {
    if (RANK[level] < RANK[this.level]) return;
    this.#clear();
    console.error(`${level}:root:${oneLine(message)}`);
  };
  progress = (label: string, done: number, total: number): void => {
    if (!this.tty) return;
    const width = 30;
    const filled = total > 0 ? Math.round((width * done) / total) : width;
    const bar = `${label}: ${Math.round((100 * done) / Math.max(total, 1))}%|${"█".repeat(filled)}${
      " ".repeat(width - filled)
    }| ${done}/${total}`;
    if (bar === this.#bar) return;
    this.#bar = bar;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${bar}`));
    if (done >= total) this.#clear();
  };
  #clear() {
    if (!this.#bar) return;
    Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
    this.#bar = "";
  }
}

/** Options shared by the main command and `inspect`. */
/** Where a command's library call logs and reports progress: this CLI's console. */
function reporting(out: Console) {
  return { log: out.log, logLevel: out.level, onProgress: out.progress };
}

function common(values: Values) {
  const noCache = optionValue<boolean>(values, "no_norms_cache");
  return {
    outputDtype: choice<OutputDType>(optionValue(values, "output_dtype"), "-t/--output_dtype", {
      "16": "F16",
      "32": "F32",
      "bf16": "BF16",
    }),
    device: choice<DeviceChoice>(optionValue(values, "device"), "-d/--device", {
      auto: "auto",
      cpu: "cpu",
      gpu: "gpu",
    }),
    sizeAccounting: choice<SizeAccounting>(
      optionValue(values, "size_accounting"),
      "--size_accounting",
      { file: "file", original: "original" },
    ),
    dropUnmapped: optionValue<boolean>(values, "drop_unmapped") ?? false,
    normsCache: noCache ? false as const : optionValue<string>(values, "norms_cache"),
  };
}

async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = tempPathFor(path);
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await removeOrphanTempFiles(dirname(path));
    await Deno.writeTextFile(tmp, text, { createNew: true });
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new OutputError(`${path}: cannot write the report (${(e as Error).message})`, {
      file: path,
    });
  } finally {
    releaseTemp(tmp);
  }
}

/** Each line of a table escaped (names quoted from files may hold control characters). */
function escapeLines(text: string): string {
  return text.split("\n").map(oneLine).join("\n");
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
}

function summaryLine(o: OutputSummary): string {
  const verb = o.written ? "wrote" : "would write";
  return `${verb} ${o.path}: ${
    mib(o.bytes)
  } (${o.bytes} bytes), usable rank ${o.rankBefore} → ${o.rankAfter}, ` +
    `relative error ${(100 * o.relativeError).toFixed(2)}%` +
    (Number.isNaN(o.threshold) ? "" : ` (threshold ${formatThreshold(o.threshold)})`);
}

/** `resize-lora demo`: as with -v unless -vv is given. */
async function demo(values: Values, verbosity: number, out: Console): Promise<number> {
  const level = verbosity === 0 ? "INFO" : out.level;
  const shown = new Console(level, out.tty);
  const { runDemo } = await import("./src/demo.ts");
  const result = await runDemo({
    folder: optionValue<string>(values, "output_folder"),
    log: shown.log,
    logLevel: level,
    onProgress: out.progress,
  });
  console.log(result.description);
  for (const o of result.outputs) console.log(summaryLine(o));
  return 0;
}

/** `resize-lora inspect LORA [CHECKPOINT]`. */
async function inspectCommand(values: Values, args: string[], out: Console): Promise<number> {
  if (args.length < 1 || args.length > 2) {
    throw new UsageError("usage: resize-lora inspect LORA [CHECKPOINT] [-r RECIPE] [--json]");
  }
  const { inspect } = await import("./src/inspect.ts");
  const { formatInspectTable } = await import("./src/report/inspect.ts");
  const result = await inspect({
    lora: args[0],
    checkpoint: args[1],
    recipes: optionValue<string>(values, "score_recipes"),
    ...common(values),
    ...reporting(out),
  });
  console.log(
    values.json ? JSON.stringify(result, null, 2) : escapeLines(formatInspectTable(result)),
  );
  return 0;
}

/** `resize-lora evaluate CHECKPOINT LORA`: the three-step comparison (src/report/evaluate.ts). */
async function evaluateCommand(values: Values, args: string[], out: Console): Promise<number> {
  if (args.length !== 2) {
    throw new UsageError(
      "usage: resize-lora evaluate CHECKPOINT LORA [-o DIR] [--json] [--report FILE.html]",
    );
  }
  const { evaluate, formatEvaluation } = await import("./src/report/evaluate.ts");
  const report = values.report as string | undefined;
  const { evaluation, outputs } = await evaluate({
    checkpoint: args[0],
    lora: args[1],
    outputFolder: optionValue<string>(values, "output_folder"),
    ...common(values),
    ...reporting(out),
    curve: report !== undefined,
    alsoWrites: report === undefined ? [] : [{ path: report, source: "the report" }],
  });
  console.log(
    values.json ? JSON.stringify(evaluation, null, 2) : escapeLines(formatEvaluation(evaluation)),
  );
  if (report !== undefined) {
    const { renderReport } = await importReport();
    const html = await renderReport({
      outputs,
      checkpoint: args[0],
      title: "resize-lora evaluation",
      footer: `resize-lora ${VERSION}`,
    });
    await writeTextAtomic(report, html);
    if (!values.json) console.log(`report: ${report}`);
  }
  return 0;
}

/** `resize-lora [CHECKPOINT] LORA...`: resize (or plan, with --dry_run), and the report. */
async function resizeCommand(
  values: Values,
  args: string[],
  out: Console,
  kohyaVerbose = false,
): Promise<number> {
  const { runInputs } = await import("./src/run_inputs.ts");
  const base = optionValue<string>(values, "base") ?? optionValue<string>(values, "checkpoint");
  const { checkpoint, loras: loraArgs } = await runInputs(args, { base });
  if (loraArgs.length < 1) {
    throw new UsageError("the following arguments are required: LORA (see --help)");
  }
  const loras = (await Promise.all(loraArgs.map(expandGlob))).flat();
  // From the headers alone, before any work: a base and a LoRA given the other way round.
  // (A malformed merge spec is left to the run, which says what is wrong with it.)
  const members = (entry: string) => {
    try {
      return loraEntryMembers(entry)?.map((m) => m.path) ?? [entry];
    } catch {
      return [];
    }
  };
  const files = loras.flatMap(members);
  // Without a base the first positional holds a LoRA: a full checkpoint after it was meant first.
  const baseAmongLoras = checkpoint === undefined && files.length > 1 &&
    (await Promise.all(files.slice(1).map(fileKind))).includes("checkpoint");
  const problem = checkpoint !== undefined
    ? await argumentOrderProblem(checkpoint, files)
    : baseAmongLoras
    ? await argumentOrderProblem(files[0], files.slice(1))
    : undefined;
  if (problem) throw new UsageError(problem);
  const report = values.report as string | undefined;
  const options = {
    checkpoint,
    loras,
    recipes: optionValue<string>(values, "score_recipes"),
    outputFolder: optionValue<string>(values, "output_folder"),
    outputPath: optionValue<string>(values, "save_to"),
    naming: optionValue<string>(values, "naming") as OutputNaming | undefined,
    ...common(values),
    ...reporting(out),
    curve: report !== undefined,
    alsoWrites: report === undefined ? [] : [{ path: report, source: "the report" }],
  };
  const dryRun = optionValue<boolean>(values, "dry_run") ?? false;
  const result = dryRun ? await plan(options) : await resize(options);
  if (dryRun) {
    const { formatDryRun } = await import("./src/report/dry_run.ts");
    console.log(escapeLines(formatDryRun(result.outputs)));
  } else {
    for (const o of result.outputs) console.log(oneLine(summaryLine(o)));
  }
  if (kohyaVerbose) {
    const { kohyaVerboseReport } = await import("./src/report/kohya_verbose.ts");
    for (const o of result.outputs) for (const line of kohyaVerboseReport(o)) console.log(line);
  }
  if (report !== undefined) {
    const { renderReport } = await importReport();
    const html = await renderReport({
      outputs: result.outputs,
      checkpoint,
      footer: `resize-lora ${VERSION}`,
      onProgress: (d, t) => out.progress("Report", d, t),
    });
    await writeTextAtomic(report, html);
    console.log(`report: ${report}`);
  }
  return 0;
}

/**
 * The report module, loaded by a specifier Deno cannot see ahead of time: a
 * visible one would put its npm packages (Vega, ~75 of them) in the module
 * graph of every run, and Deno would download them before even a demo starts.
 * (`deno compile` names the module with `--include`.)
 */
function importReport(): Promise<typeof import("./src/report/html.ts")> {
  const specifier = ["./src/report", "html.ts"].join("/");
  return import(specifier);
}

/** The parser's message for an unknown option, with the nearest option suggested. */
function unknownOption(e: Error & { code?: string }): string | undefined {
  const option = e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION"
    ? e.message.match(/^Unknown option '([^']+)'/)?.[1]
    : undefined;
  if (option === undefined) return undefined;
  const name = option.replace(/^--?/, "").split("=")[0];
  const near = option.startsWith("--") ? closestName(name, Object.keys(OPTIONS)) : undefined;
  return near !== undefined
    ? `unknown option ${option}: did you mean --${near}?`
    : `unknown option ${option} (see --help; a file name that starts with '-' goes after --)`;
}

/**
 * Runs the command line and returns the exit status (0 ok, 1 runtime or input
 * error, 2 usage error). Prints only to stdout/stderr; never exits itself.
 *
 * @example
 * ```ts ignore
 * import { main } from "@x/resize-lora/cli";
 * const status = await main(["base.safetensors", "lora.safetensors", "-v"]); // prints its log
 * if (status !== 0) throw new Error(`resize-lora exited with ${status}`);
 * ```
 */
export async function main(args: readonly string[]): Promise<number> {
  // Probing for a WebGPU adapter loads the GL stack, whose Wayland client
  // prints "error: XDG_RUNTIME_DIR is invalid or not set" when the variable is
  // unset (headless servers, CI); a path without a compositor keeps it quiet.
  if (Deno.build.os === "linux" && !Deno.env.get("XDG_RUNTIME_DIR")) {
    Deno.env.set("XDG_RUNTIME_DIR", "/nonexistent/resize-lora");
  }
  let verbosity = 0;
  try {
    // A pasted kohya resize_lora.py command line runs as its resize-lora equivalent.
    const kohya = isKohyaCommandLine(args) ? translateKohyaArgs(args) : undefined;
    if (kohya) args = kohyaToResizeLoraArgs(kohya);
    let parsed;
    try {
      parsed = parseArgs({
        args: [...args],
        options: OPTIONS,
        allowPositionals: true,
        strict: true,
      });
    } catch (e) {
      throw new UsageError(unknownOption(e as Error) ?? (e as Error).message);
    }
    const values = parsed.values as Values;
    verbosity = (values.verbose as boolean[] | undefined)?.length ?? 0;
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (values.version) {
      console.log(`resize-lora ${VERSION}`);
      return 0;
    }
    const level = LEVELS[Math.min(verbosity, 2)];
    const out = new Console(level, Deno.stderr.isTerminal());
    const [command, ...rest] = parsed.positionals;
    if (command === "demo") return await demo(values, verbosity, out);
    if (command === "inspect") return await inspectCommand(values, rest, out);
    if (command === "evaluate") return await evaluateCommand(values, rest, out);
    return await resizeCommand(values, parsed.positionals, out, kohya?.verbose);
  } catch (e) {
    if (e instanceof ResizeLoraError) {
      console.error(`error: ${e.message}`);
      if (verbosity >= 2 && e.stack) console.error(e.stack);
      return e.exitCode;
    }
    const err = e as Error;
    console.error(`error: ${err?.message ?? String(e)}`);
    if (verbosity >= 2 && err?.stack) console.error(err.stack);
    return 1;
  }
}

/** Exit statuses of a run stopped by a signal (128 + the signal's number, as shells report). */
const SIGNAL_EXITS = [["SIGINT", 130], ["SIGTERM", 143]] as const;

/**
 * On SIGINT or SIGTERM: removes the temporary files of the writes under way (no partial output
 * is left, and no output was renamed into place half-written) and exits with 130 or 143. Returns
 * a function that removes the handlers.
 *
 * @example
 * ```ts ignore
 * import { exitCleanlyOnSignals, main } from "@x/resize-lora/cli";
 * exitCleanlyOnSignals();
 * Deno.exit(await main(Deno.args));
 * ```
 */
export function exitCleanlyOnSignals(): () => void {
  const installed: [Deno.Signal, () => void][] = [];
  for (const [signal, code] of SIGNAL_EXITS) {
    const handler = () => {
      removeLiveTempFilesSync();
      Deno.exit(code);
    };
    try {
      Deno.addSignalListener(signal, handler);
      installed.push([signal, handler]);
    } catch { /* not supported here (SIGTERM on Windows) */ }
  }
  return () => {
    for (const [signal, handler] of installed) Deno.removeSignalListener(signal, handler);
  };
}

if (import.meta.main) {
  exitCleanlyOnSignals();
  Deno.exit(await main(Deno.args));
}
