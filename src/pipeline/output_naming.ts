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
import type { OutputLayerKeys } from "../output.ts";

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
 * Each layer's output keys. A layer written in its own naming keeps its own DoRA key and shape;
 * a layer the output naming cannot spell is a one-line error naming it.
 */
export function layerOutputKeys(
  model: LoraModel,
  layers: readonly LoraLayer[],
  requested?: NamingId,
): OutputLayerKeys[] {
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
    const dora = layer.doraScale;
    if (!dora) return keys;
    // The same naming stores the magnitude the same way: as read, under the layer's own key.
    if (keys.naming === layer.naming) {
      return { ...keys, dora: naming === undefined ? dora.name : keys.dora ?? dora.name };
    }
    return { ...keys, ...convertedDora(model, layer, keys) };
  });
}

/**
 * A DoRA magnitude's key and shape in another naming: one value per output row, `[out]` in PEFT
 * and `[out, 1, …]` (as LyCORIS stores it) in kohya's and ComfyUI's. A magnitude per input
 * column, or a naming without DoRA, is a one-line error.
 */
function convertedDora(
  model: LoraModel,
  layer: LoraLayer,
  keys: OutputKeys,
): Pick<OutputLayerKeys, "dora" | "doraShape"> {
  const { out } = layer.factors;
  const shape = layer.doraScale!.shape;
  const fail = (why: string): never => {
    throw new OutputError(`${model.entry}: DoRA layer '${layer.key}' ${why}`, {
      file: model.entry,
      key: layer.key,
    });
  };
  if (keys.dora === undefined) fail(`cannot be written in the ${keys.naming} naming (no DoRA)`);
  if (shape[0] !== out || shape.slice(1).some((d) => d !== 1)) {
    fail(
      `has a magnitude of shape [${shape}], not one per output row: only its own naming holds it`,
    );
  }
  const doraShape = keys.naming === "peft" ? [out] : [out, ...layer.inShape.map(() => 1)];
  return { dora: keys.dora, doraShape };
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
