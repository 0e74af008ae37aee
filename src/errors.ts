/**
 * Error classes, one per domain. Every message is one line that names the file and, where there
 * is one, the tensor or key; the same facts are fields ({@link ResizeLoraError.file},
 * {@link ResizeLoraError.tensor}, {@link ResizeLoraError.key}) for callers that act on them.
 * `cli.ts` prints the message as `error: <message>` and maps the class to an exit code. Control
 * characters in a message (quoted from a file: tensor names, keys) are escaped here, so no message
 * can span lines or drive the terminal.
 *
 * @module
 */

import { oneLine } from "./one_line.ts";

/**
 * What an error is about, besides its message (and, as for any error, its cause).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type ErrorDetails, plan, SafetensorsError } from "@x/resize-lora";
 * const base = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const missing = "no_such_lora.safetensors";
 * const details: ErrorDetails = await plan({
 *   checkpoint: base,
 *   loras: [missing],
 *   device: "cpu",
 * }).then(() => ({}), (e) => e);
 * assert.ok(details instanceof SafetensorsError);
 * assert.equal(details.file, missing);
 * await Deno.remove(base);
 * ```
 */
export interface ErrorDetails extends ErrorOptions {
  /** The file the error is about (an input, an output, a cache file). */
  readonly file?: string;
  /** The tensor of `file` the error is about. */
  readonly tensor?: string;
  /**
   * The key the error is about: a LoRA layer name, a base weight key, a recipe key, a metadata
   * key, an option.
   */
  readonly key?: string;
}

/**
 * Base class of every error resize-lora raises on purpose.
 *
 * @example
 * ```ts
 * import { ResizeLoraError } from "@x/resize-lora";
 * const e = new ResizeLoraError("a.safetensors: tensor 'x': truncated", {
 *   file: "a.safetensors",
 *   tensor: "x",
 * });
 * if (e.file !== "a.safetensors" || e.tensor !== "x" || e.key !== undefined) throw e;
 * if (e.name !== "ResizeLoraError" || e.exitCode !== 1) throw e;
 * ```
 */
export class ResizeLoraError extends Error {
  /** Exit status the CLI uses for this error (1 = runtime/input, 2 = usage). */
  readonly exitCode: number = 1;
  /** The file the error is about, when there is one. */
  readonly file?: string;
  /** The tensor of {@link file} the error is about, when there is one. */
  readonly tensor?: string;
  /** The layer name, weight key, recipe key or option the error is about, when there is one. */
  readonly key?: string;

  /** Creates the error with a one-line message and what it is about. */
  constructor(message: string, details: ErrorDetails = {}) {
    super(oneLine(message), "cause" in details ? { cause: details.cause } : undefined);
    this.name = new.target.name;
    if (details.file !== undefined) this.file = details.file;
    if (details.tensor !== undefined) this.tensor = details.tensor;
    if (details.key !== undefined) this.key = details.key;
  }
}

/**
 * A safetensors file is malformed, truncated, or a tensor cannot be read.
 *
 * @example
 * ```ts
 * import { ResizeLoraError, SafetensorsError } from "@x/resize-lora";
 * const e = new SafetensorsError("a.safetensors: tensor 'x': unknown dtype 'Q4'", {
 *   file: "a.safetensors",
 *   tensor: "x",
 * });
 * if (!(e instanceof ResizeLoraError) || e.name !== "SafetensorsError") throw e;
 * if (e.tensor !== "x") throw e;
 * ```
 */
export class SafetensorsError extends ResizeLoraError {}

/**
 * A LoRA layer cannot be paired with the base checkpoint (no match, wrong shape).
 *
 * @example
 * ```ts
 * import { MappingError } from "@x/resize-lora";
 * const e = new MappingError("a.safetensors: layer 'lora_unet_x' has shape (4, 8), base (4, 6)", {
 *   file: "a.safetensors",
 *   key: "lora_unet_x",
 * });
 * if (e.key !== "lora_unet_x" || e.exitCode !== 1) throw e;
 * ```
 */
export class MappingError extends ResizeLoraError {}

/**
 * A LoRA file or merge specification is invalid (shapes that do not chain, DoRA merge, …).
 *
 * @example
 * ```ts
 * import { LoraError } from "@x/resize-lora";
 * const e = new LoraError("a.safetensors: layer 'x': up 4×8 does not chain with down 4×16", {
 *   file: "a.safetensors",
 *   key: "x",
 * });
 * if (e.file !== "a.safetensors" || e.key !== "x") throw e;
 * ```
 */
export class LoraError extends ResizeLoraError {}

/**
 * A score recipe cannot be parsed or applied (messages as the original tool's).
 *
 * @example
 * ```ts
 * import { RecipeError } from "@x/resize-lora";
 * const e = new RecipeError("Unknown key foo in recipe foo=1", { key: "foo" });
 * if (e.key !== "foo" || e.exitCode !== 1) throw e;
 * ```
 */
export class RecipeError extends ResizeLoraError {}

/**
 * The command line is invalid; the CLI exits with status 2.
 *
 * @example
 * ```ts
 * import { UsageError } from "@x/resize-lora";
 * const e = new UsageError("unrecognized option '--foo'", { key: "--foo" });
 * if (e.exitCode !== 2 || e.key !== "--foo") throw e;
 * ```
 */
export class UsageError extends ResizeLoraError {
  /** Usage errors exit with status 2, as argparse does. */
  override readonly exitCode: number = 2;
}

/**
 * A compute backend is unavailable or failed (no WebGPU adapter, device lost, …).
 *
 * @example
 * ```ts
 * import { BackendError, ResizeLoraError } from "@x/resize-lora";
 * const e = new BackendError("--device gpu: no WebGPU adapter is available");
 * if (!(e instanceof ResizeLoraError) || e.file !== undefined) throw e;
 * ```
 */
export class BackendError extends ResizeLoraError {}

/**
 * Writing an output failed or would overwrite an input.
 *
 * @example
 * ```ts
 * import { OutputError } from "@x/resize-lora";
 * const e = new OutputError("out.safetensors: the output would overwrite the input a.safetensors", {
 *   file: "out.safetensors",
 * });
 * if (e.file !== "out.safetensors" || e.name !== "OutputError") throw e;
 * ```
 */
export class OutputError extends ResizeLoraError {}
