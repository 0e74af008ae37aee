/**
 * The naming an output is written in (docs/design.md, "Output namings"): by default each layer
 * keeps the naming and spelling it was read in, so an output loads wherever its input did;
 * `--naming` converts every layer. A merge spells its layers in its members' naming when they
 * share one, else in kohya's.
 *
 * @module
 */

import { OutputError } from "../errors.ts";
import type { LoraLayer, LoraModel } from "../lora/lora_file.ts";
import { namingById } from "../namings/detect.ts";
import type { NamingId } from "../namings/naming.ts";
import { type OutputKeys, outputKeys } from "../namings/output_keys.ts";

/** Whether `model` is a merge (its layers are new, spelled in no file). */
function isMerge(model: LoraModel): boolean {
  return model.paths.length !== 1 || model.entry !== model.paths[0];
}

/**
 * The naming every layer of `model`'s outputs is written in, or `undefined` when each layer keeps
 * its own (a single file, no `requested` naming).
 *
 * @example
 * ```ts
 * import { outputNamingOf } from "./output_naming.ts";
 * import type { LoraModel } from "../lora/lora_file.ts";
 * const merge = { entry: "a.safetensors+b.safetensors", paths: ["a.safetensors", "b.safetensors"] };
 * const naming = outputNamingOf({ ...merge, namings: ["peft", "comfyui"] } as unknown as LoraModel);
 * if (naming !== "kohya") throw new Error(naming);
 * ```
 */
export function outputNamingOf(model: LoraModel, requested?: NamingId): NamingId | undefined {
  if (requested !== undefined) return requested;
  if (!isMerge(model)) return undefined;
  return model.namings.length === 1 ? model.namings[0] : "kohya";
}

/**
 * Each layer's output keys. A layer written in its own naming keeps its own DoRA key; a layer
 * the output naming cannot spell is a one-line error naming it.
 */
export function layerOutputKeys(
  model: LoraModel,
  layers: readonly LoraLayer[],
  requested?: NamingId,
): OutputKeys[] {
  const naming = outputNamingOf(model, requested);
  const architecture = model.architecture?.architecture;
  return layers.map((layer) => {
    const keys = outputKeys(layer, { naming, architecture });
    if (keys === undefined) {
      throw new OutputError(
        `${model.entry}: layer '${layer.key}' has no name in the ${naming} naming`,
        { file: model.entry, key: layer.key },
      );
    }
    const own = keys.naming === layer.naming && naming === undefined;
    return own && layer.doraScale ? { ...keys, dora: layer.doraScale.name } : keys;
  });
}

/**
 * The `-v` line that says which naming a LoRA was read in and which its outputs are written in.
 *
 * @example
 * ```ts
 * import { namingLine } from "./output_naming.ts";
 * import type { LoraModel } from "../lora/lora_file.ts";
 * const model = { entry: "a.safetensors", paths: ["a.safetensors"], namings: ["peft"] };
 * const line = namingLine(model as unknown as LoraModel, "kohya");
 * if (line !== "a.safetensors: naming PEFT (lora_A / lora_B); written as kohya (SGM block names)") {
 *   throw new Error(line);
 * }
 * ```
 */
export function namingLine(model: LoraModel, requested?: NamingId): string {
  const read = model.namings.map((id) => namingById(id).label).join(" + ");
  const out = outputNamingOf(model, requested);
  return `${model.entry}: naming ${read}; written as ${
    out === undefined ? "read" : namingById(out).label
  }`;
}
