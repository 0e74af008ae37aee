/**
 * Which of a command line's positionals is the base checkpoint, if any: decided by what the
 * first one holds, never by its name (docs/design.md, "Resizing without a base").
 *
 * @module
 */

import { fileKind } from "./file_kind.ts";
import { expandGlob } from "./glob.ts";
import { loraEntryMembers } from "./lora/merge_spec.ts";

/** A run's inputs: the base checkpoint when there is one, and the LoRA entries. */
export interface RunInputs {
  /** The base checkpoint (a file or a diffusers folder), when the run has one. */
  readonly checkpoint?: string;
  /** LoRA entries as given (paths, globs, merge specs). */
  readonly loras: readonly string[];
}

/** Options of {@link runInputs}. */
export interface RunInputsOptions {
  /** The base given by option (`--base`/`--checkpoint`): every positional is then a LoRA. */
  readonly base?: string;
}

/**
 * Splits positionals into the base checkpoint and the LoRAs. Without an explicit base, the
 * first positional is the base when it is a folder (a diffusers model) or a file whose tensor
 * names are a full model's, and a LoRA when its tensor names are an adapter's. When neither can
 * be told (a file of neither kind, or a path that does not exist), it is the base if LoRAs follow
 * (the original form, whose messages then name it as the checkpoint) and a LoRA if it stands
 * alone. A glob that matches files or a weighted merge is LoRA syntax: a LoRA.
 *
 * @example
 * ```ts
 * import { runInputs } from "./run_inputs.ts";
 * import { writeDemoFiles } from "./testing/demo_files.ts";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const withBase = await runInputs([base, lora]);
 * const baseFree = await runInputs([lora, lora]);
 * if (withBase.checkpoint !== base || withBase.loras.length !== 1) throw new Error("with base");
 * if (baseFree.checkpoint !== undefined || baseFree.loras.length !== 2) throw new Error("free");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function runInputs(
  positionals: readonly string[],
  options: RunInputsOptions = {},
): Promise<RunInputs> {
  if (options.base !== undefined) return { checkpoint: options.base, loras: positionals };
  const [first, ...rest] = positionals;
  if (first === undefined) return { loras: [] };
  const asBase = { checkpoint: first, loras: rest };
  const asLora = { loras: positionals };
  let stat: Deno.FileInfo | undefined;
  try {
    stat = await Deno.stat(first);
  } catch { /* not a path: LoRA syntax, or a missing file */ }
  if (stat?.isDirectory) return asBase;
  if (stat?.isFile) {
    const kind = await fileKind(first);
    if (kind !== "unknown") return kind === "checkpoint" ? asBase : asLora;
  } else if (isLoraSyntax(first) || await matchesFiles(first)) {
    return asLora;
  }
  return rest.length > 0 ? asBase : asLora;
}

/** Whether `pattern` is a glob that matches files. */
async function matchesFiles(pattern: string): Promise<boolean> {
  try {
    return (await expandGlob(pattern))[0] !== pattern;
  } catch {
    return false; // a pattern that matches nothing: whoever expands it says so
  }
}

/** Whether `entry` is a merge of LoRAs (`a.safetensors:0.7,b.safetensors`). */
function isLoraSyntax(entry: string): boolean {
  try {
    return loraEntryMembers(entry) !== undefined;
  } catch {
    return false; // not a well-formed merge: whoever reads it says why
  }
}
