/**
 * Error classes, one per domain. Every message is one line that names the file
 * and, where there is one, the tensor or key; `cli.ts` prints it as
 * `error: <message>` and maps the class to an exit code.
 *
 * @module
 */

/**
 * Base class of every error resize-lora raises on purpose.
 *
 * @example
 * ```ts
 * import { ResizeLoraError } from "./errors.ts";
 * try {
 *   throw new ResizeLoraError("something went wrong");
 * } catch (e) {
 *   if (e instanceof ResizeLoraError) console.error(`error: ${e.message}`);
 * }
 * ```
 */
export class ResizeLoraError extends Error {
  /** Exit status the CLI uses for this error (1 = runtime/input, 2 = usage). */
  readonly exitCode: number = 1;
  /** Creates the error with a one-line message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A safetensors file is malformed, truncated, or a tensor cannot be read.
 *
 * @example
 * ```ts
 * import { SafetensorsError } from "./errors.ts";
 * const e = new SafetensorsError("a.safetensors: tensor 'x': unknown dtype 'Q4'");
 * console.log(e.message);
 * ```
 */
export class SafetensorsError extends ResizeLoraError {}

/**
 * A LoRA layer cannot be paired with the base checkpoint (no match, wrong shape).
 *
 * @example
 * ```ts
 * import { MappingError } from "./errors.ts";
 * const e = new MappingError("no layer of a.safetensors matches the base checkpoint b.safetensors");
 * console.log(e.name);
 * ```
 */
export class MappingError extends ResizeLoraError {}

/**
 * A LoRA file or merge specification is invalid (shapes that do not chain, DoRA merge, …).
 *
 * @example
 * ```ts
 * import { LoraError } from "./errors.ts";
 * const e = new LoraError("a.safetensors: layer 'x': up 4×8 does not chain with down 4×16");
 * console.log(e.message);
 * ```
 */
export class LoraError extends ResizeLoraError {}

/**
 * A score recipe cannot be parsed (messages as the original tool's).
 *
 * @example
 * ```ts
 * import { RecipeError } from "./errors.ts";
 * const e = new RecipeError("Unknown key foo in recipe foo=1");
 * console.log(e.exitCode); // 1
 * ```
 */
export class RecipeError extends ResizeLoraError {}

/**
 * The command line is invalid; the CLI exits with status 2.
 *
 * @example
 * ```ts
 * import { UsageError } from "./errors.ts";
 * console.log(new UsageError("unknown option --foo").exitCode); // 2
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
 * import { BackendError } from "./errors.ts";
 * const e = new BackendError("--device gpu: no WebGPU adapter is available");
 * console.log(e.message);
 * ```
 */
export class BackendError extends ResizeLoraError {}

/**
 * Writing an output failed or would overwrite an input.
 *
 * @example
 * ```ts
 * import { OutputError } from "./errors.ts";
 * const e = new OutputError("out.safetensors: the output path is one of the inputs");
 * console.log(e.message);
 * ```
 */
export class OutputError extends ResizeLoraError {}
