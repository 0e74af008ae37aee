/**
 * A pasted kohya sd-scripts `networks/resize_lora.py` command line, as the
 * equivalent resize-lora one.
 *
 * ```
 * --model in.safetensors --save_to out.safetensors --new_rank 8 --new_conv_rank 4
 * --dynamic_method sv_fro --dynamic_param 0.9 --save_precision fp16 --device cpu --verbose
 *   →  in.safetensors --save_to out.safetensors -r sv_fro=0.9,rank=8,conv_rank=4 -t 16 -d cpu -v
 * ```
 *
 * kohya's defaults apply: `--new_rank` 4, `--new_conv_rank` = `--new_rank`,
 * float32 output unless `--save_precision` says otherwise. Options are read
 * as Python's argparse reads them (`--opt value`, `--opt=value`, unique
 * prefixes). `--svd_lowrank_niter` (later kohya versions) is accepted and
 * ignored: resize-lora's SVD is exact. `--device cpu` asks for the CPU;
 * resize-lora's own `auto` and `gpu` are taken as they are; any other device
 * (`cuda`, `cuda:0`, `mps`) is the default choice, `auto`.
 *
 * Like kohya's, the command needs no base model. `--checkpoint PATH` (a
 * resize-lora option; kohya has none) still adds one: the layers are then
 * paired with its weights, as in resize-lora's own form.
 *
 * @module
 */

import { UsageError } from "./errors.ts";
import { KOHYA_METHODS, type KohyaMethod } from "./recipe/kohya.ts";
import { parsePythonFloat, pyRepr } from "./recipe/pyfloat.ts";

/** The options of a kohya command line, with kohya's defaults applied. */
export interface KohyaCommand {
  /** `--model`: the input LoRA. */
  readonly model: string;
  /** `--save_to`: the output file. */
  readonly saveTo: string;
  /** The equivalent recipe (`sv_fro=0.9,rank=8`, `rank=4,conv_rank=2`). */
  readonly recipe: string;
  /** `--save_precision` as resize-lora's `-t` value (`32` when not given, as kohya). */
  readonly outputDtype: "16" | "32" | "bf16";
  /** `--device` as resize-lora's `-d` value. */
  readonly device: "auto" | "cpu" | "gpu";
  /** `--verbose`. */
  readonly verbose: boolean;
  /** `--checkpoint`: a base checkpoint (kohya's rules use none). */
  readonly checkpoint?: string;
}

type Kind = "string" | "int" | "float" | "flag";

/** kohya's options (and `--checkpoint`), with how argparse reads each. */
const OPTIONS: Readonly<Record<string, Kind>> = {
  model: "string",
  save_to: "string",
  new_rank: "int",
  new_conv_rank: "int",
  save_precision: "string",
  device: "string",
  verbose: "flag",
  dynamic_method: "string",
  dynamic_param: "float",
  svd_lowrank_niter: "int",
  checkpoint: "string",
};

/** Options only kohya's command line has: any of them marks a pasted kohya command. */
const KOHYA_ONLY = [
  "model",
  "new_rank",
  "new_conv_rank",
  "save_precision",
  "dynamic_method",
  "dynamic_param",
  "svd_lowrank_niter",
];

const PRECISIONS: Readonly<Record<string, KohyaCommand["outputDtype"]>> = {
  float: "32",
  fp16: "16",
  bf16: "bf16",
};

/**
 * Whether a command line is written in kohya's spelling: it names one of
 * the options only kohya has (`--model`, `--new_rank`, `--dynamic_method`, …)
 * in full.
 *
 * @example
 * ```ts
 * import { isKohyaCommandLine } from "./kohya_args.ts";
 * if (!isKohyaCommandLine(["--model", "a.safetensors", "--save_to", "b.safetensors"])) throw 0;
 * if (isKohyaCommandLine(["base.safetensors", "a.safetensors", "--save_to", "b.safetensors"])) {
 *   throw 0;
 * }
 * ```
 */
export function isKohyaCommandLine(argv: readonly string[]): boolean {
  return argv.some((arg) =>
    arg.startsWith("--") && KOHYA_ONLY.includes(arg.slice(2).split("=")[0])
  );
}

/** The option a (possibly abbreviated) name stands for, as argparse resolves it. */
function unique(name: string): string | undefined {
  if (Object.hasOwn(OPTIONS, name)) return name;
  const matches = Object.keys(OPTIONS).filter((o) => o.startsWith(name));
  if (matches.length > 1) {
    throw new UsageError(
      `ambiguous option: --${name} could match ${matches.map((m) => `--${m}`).join(", ")}`,
      { key: `--${name}` },
    );
  }
  return matches[0];
}

/** Reads argv as argparse would: option name → raw value (`true` for flags). */
function readOptions(argv: readonly string[]): Map<string, string | true> {
  const values = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new UsageError(`unrecognized arguments: ${arg}`, { key: arg });
    const eq = arg.indexOf("=");
    const given = arg.slice(2, eq < 0 ? undefined : eq);
    const name = unique(given);
    if (name === undefined) throw new UsageError(`unrecognized arguments: ${arg}`, { key: arg });
    if (OPTIONS[name] === "flag") {
      if (eq >= 0) {
        throw new UsageError(`argument --${name}: ignored explicit argument`, { key: `--${name}` });
      }
      values.set(name, true);
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) {
      throw new UsageError(`argument --${name}: expected one argument`, { key: `--${name}` });
    }
    values.set(name, value);
  }
  return values;
}

function deviceOf(device: string | undefined): KohyaCommand["device"] {
  return device === "cpu" || device === "gpu" ? device : "auto";
}

function intValue(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = /^\s*[+-]?\d+(_\d+)*\s*$/.test(text) ? Number(text.replaceAll("_", "")) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`argument --${name}: invalid int value: '${text}'`, { key: `--${name}` });
  }
  if (value < 1) {
    throw new UsageError(`argument --${name}: must be >= 1, got ${text}`, { key: `--${name}` });
  }
  return value;
}

/**
 * Translates a kohya `resize_lora.py` command line.
 *
 * @throws {UsageError} one line per mistake, kohya's where it has one: an
 * unknown method, a method without `--dynamic_param` (or with 0), a
 * `--dynamic_param` without a method, `--save_to` missing or not
 * `.safetensors`, `--model` missing, a rank that is not a whole number ≥ 1.
 *
 * @example
 * ```ts
 * import { translateKohyaArgs } from "./kohya_args.ts";
 * const k = translateKohyaArgs([
 *   "--model", "in.safetensors", "--save_to", "out.safetensors", "--new_rank", "8",
 *   "--dynamic_method", "sv_fro", "--dynamic_param", "0.9", "--new_conv_rank", "4",
 * ]);
 * if (k.recipe !== "sv_fro=0.9,rank=8,conv_rank=4" || k.outputDtype !== "32") throw 0;
 * ```
 */
export function translateKohyaArgs(argv: readonly string[]): KohyaCommand {
  const values = readOptions(argv);
  const text = (name: string) => {
    const v = values.get(name);
    return typeof v === "string" ? v : undefined;
  };
  const model = text("model");
  if (model === undefined) {
    throw new UsageError("the following arguments are required: --model", { key: "--model" });
  }
  const saveTo = text("save_to");
  if (saveTo === undefined || !saveTo.endsWith(".safetensors")) {
    throw new UsageError(
      "The --save_to argument must be specified and must be a .safetensors file.",
      { key: "--save_to" },
    );
  }
  const precision = text("save_precision");
  if (precision !== undefined && !Object.hasOwn(PRECISIONS, precision)) {
    throw new UsageError(
      `argument --save_precision: invalid choice: '${precision}' (choose from 'float', 'fp16', 'bf16')`,
      { key: "--save_precision" },
    );
  }
  const method = text("dynamic_method");
  if (method !== undefined && !KOHYA_METHODS.includes(method as KohyaMethod)) {
    throw new UsageError(
      `argument --dynamic_method: invalid choice: '${method}' (choose from ${
        KOHYA_METHODS.map((m) => `'${m}'`).join(", ")
      })`,
      { key: "--dynamic_method" },
    );
  }
  const paramText = text("dynamic_param");
  const param = paramText === undefined ? undefined : parsePythonFloat(paramText);
  if (paramText !== undefined && param === undefined) {
    throw new UsageError(`argument --dynamic_param: invalid float value: '${paramText}'`, {
      key: "--dynamic_param",
    });
  }
  if (method !== undefined && !param) {
    throw new UsageError("If using dynamic_method, then dynamic_param is required", {
      key: "--dynamic_param",
    });
  }
  if (method === undefined && param !== undefined) {
    throw new UsageError(
      `--dynamic_param ${paramText} needs --dynamic_method (${KOHYA_METHODS.join(", ")})`,
      { key: "--dynamic_param" },
    );
  }
  const rank = intValue("new_rank", text("new_rank"), 4);
  const convText = text("new_conv_rank");
  const parts = [
    ...(method !== undefined ? [`${method}=${pyRepr(param!)}`] : []),
    `rank=${rank}`,
    ...(convText !== undefined ? [`conv_rank=${intValue("new_conv_rank", convText, rank)}`] : []),
  ];
  intValue("svd_lowrank_niter", text("svd_lowrank_niter"), 1);
  const checkpoint = text("checkpoint");
  return {
    model,
    saveTo,
    recipe: parts.join(","),
    outputDtype: precision === undefined ? "32" : PRECISIONS[precision],
    device: deviceOf(text("device")),
    verbose: values.has("verbose"),
    ...(checkpoint !== undefined ? { checkpoint } : {}),
  };
}

/**
 * The resize-lora command line that does what a kohya command does.
 *
 * @example
 * ```ts
 * import { kohyaToResizeLoraArgs, translateKohyaArgs } from "./kohya_args.ts";
 * const argv = kohyaToResizeLoraArgs(
 *   translateKohyaArgs(["--model", "in.safetensors", "--save_to", "out.safetensors"]),
 * );
 * if (argv.join(" ") !== "in.safetensors --save_to out.safetensors -r rank=4 -t 32 -d auto --no_norms_cache") {
 *   throw new Error(argv.join(" "));
 * }
 * ```
 */
export function kohyaToResizeLoraArgs(command: KohyaCommand): string[] {
  return [
    ...(command.checkpoint !== undefined ? ["--base", command.checkpoint] : []),
    command.model,
    "--save_to",
    command.saveTo,
    "-r",
    command.recipe,
    "-t",
    command.outputDtype,
    "-d",
    command.device,
    ...(command.verbose ? ["-v"] : []),
    // kohya's rules read no base norms.
    "--no_norms_cache",
  ];
}
