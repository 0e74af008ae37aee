/**
 * Pairing each layer of a LoRA with the base weight it modifies
 * by its name, with the shape check the original lacks (docs/design.md, "Tensors that are not
 * resized are kept").
 *
 * @module
 */

import { MappingError } from "../errors.ts";
import type { NameKind } from "../base/key_map.ts";
import {
  type BaseCheckpoint,
  type BaseEntry,
  pythonRepr,
  pythonTuple,
} from "../base/checkpoint.ts";
import { ARCHITECTURE_LABELS } from "../namings/unet_blocks.ts";
import { type LoraLayer, type LoraModel, shapeText } from "./lora_file.ts";
import { fitLycorisToBase } from "./lycoris_layers.ts";

/** A LoRA layer to resize, and its base weight when the run has a base. */
export interface PairedLayer {
  /** The LoRA layer (a LyCORIS layer with the base weight's trailing dims: see `fitLycorisToBase`). */
  readonly layer: LoraLayer;
  /** The base weight (or q/k/v block) it modifies; none in a run without a base. */
  readonly base?: BaseEntry;
  /** Which name family matched (`short` aliases are lossy: worth a warning); none without a base. */
  readonly matchedBy?: NameKind;
}

/** A LoRA layer paired with a base weight by {@link pairLayers}. */
export interface BasePairedLayer extends PairedLayer {
  /** The base weight (or q/k/v block) it modifies. */
  readonly base: BaseEntry;
  /** Which name family matched. */
  readonly matchedBy: NameKind;
}

/** The result of {@link pairLayers}. */
export interface Pairing {
  /** Layers with a base weight, in layer-name order. */
  readonly paired: readonly BasePairedLayer[];
  /** Layers whose name maps to no base weight, in name order (their tensors pass through). */
  readonly unmapped: readonly LoraLayer[];
  /** Base entries no layer modifies, in label order (the original's INFO log order). */
  readonly unmatchedBase: readonly BaseEntry[];
}

/**
 * Pairs every layer of `model` with its base entry, by canonical layer name.
 * Throws a {@link MappingError} when the LoRA is for another architecture
 * than the checkpoint, when no layer pairs, when two layers modify the same
 * base weight, when a layer's shape disagrees with its base weight, or when a
 * fused q/k/v weight does not split evenly.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * import { BaseCheckpoint } from "../base/checkpoint.ts";
 * import { loadLora } from "./lora_file.ts";
 * import { pairLayers } from "./pairing.ts";
 * const { base, lora } = await writeDemoFiles(await Deno.makeTempDir(), { scale: 1 / 64, rank: 4 });
 * await using ckpt = await BaseCheckpoint.open(base);
 * const { paired, unmapped } = pairLayers(await loadLora(lora), ckpt);
 * assert.deepEqual([paired.length, unmapped.length], [986, 0]);
 * ```
 */
export function pairLayers(model: LoraModel, checkpoint: BaseCheckpoint): Pairing {
  const arch = ARCHITECTURE_LABELS[checkpoint.architecture];
  const made = model.architecture;
  if (made && made.architecture !== checkpoint.architecture) {
    throw new MappingError(
      `${model.entry} is a LoRA for ${
        ARCHITECTURE_LABELS[made.architecture]
      } (${made.evidence}) but the base checkpoint ${checkpoint.path} is ${arch}`,
      { file: model.entry },
    );
  }
  const paired: BasePairedLayer[] = [];
  const unmapped: LoraLayer[] = [];
  const used = new Map<BaseEntry, LoraLayer>();
  for (const layer of model.layers) {
    const match = checkpoint.match(layer.name);
    if (!match) {
      unmapped.push(layer);
      continue;
    }
    const other = used.get(match.entry);
    if (other) {
      throw new MappingError(
        `${model.entry}: layers '${other.key}' and '${layer.key}' both modify ${match.entry.label} of ${checkpoint.path}`,
        { file: model.entry, key: layer.key, tensor: match.entry.key },
      );
    }
    checkpoint.checkEntry(match.entry);
    // A LyCORIS layer takes the base weight's trailing dims (its kernel, for a conv).
    const fitted = layer.lycoris
      ? fitLycorisToBase(model.entry, layer, match.entry)
      : (checkShape(model, layer, match.entry, checkpoint.path), layer);
    paired.push({ layer: fitted, base: match.entry, matchedBy: match.kind });
    used.set(match.entry, layer);
  }
  if (paired.length === 0) {
    throw new MappingError(
      `no layer of ${model.entry} matches the base checkpoint ${checkpoint.path} (is it an ${arch} LoRA?)`,
      { file: model.entry },
    );
  }
  const unmatchedBase = checkpoint.entries().filter((e) => !used.has(e));
  return { paired, unmapped, unmatchedBase };
}

function checkShape(model: LoraModel, layer: LoraLayer, base: BaseEntry, ckptPath: string): void {
  const baseIn = base.shape.slice(1);
  // A 1×1 conv may be adapted by a linear LoRA (or the reverse): same maths.
  const fits = layer.factors.out === base.rows &&
    shapeText(withoutTrailingOnes(layer.inShape)) === shapeText(withoutTrailingOnes(baseIn));
  if (fits) return;
  const what = base.chunk
    ? `rows of ${base.label} (a ${pythonTuple(base.shape)} weight)`
    : `'${base.key}'`;
  throw new MappingError(
    `${model.entry}: layer '${layer.key}' has shape ${
      shapeText([layer.factors.out, ...layer.inShape])
    } ` +
      `(up ${shapeText(layer.upShape)}, down ${
        shapeText([layer.factors.rank, ...layer.inShape])
      }) ` +
      `but its base weight ${what} in ${ckptPath} has shape ${shapeText([base.rows, ...baseIn])}`,
    { file: model.entry, key: layer.name, tensor: base.key },
  );
}

function withoutTrailingOnes(shape: readonly number[]): readonly number[] {
  let n = shape.length;
  while (n > 1 && shape[n - 1] === 1) n--;
  return shape.slice(0, n);
}

/**
 * The original's line for a base entry no layer modifies (it names the whole
 * tensor and its full shape, also for a q/k/v block), with the entry's
 * standard kohya name as the example key. Logged at DEBUG: at INFO one
 * summary line stands for them all.
 *
 * @example
 * ```ts ignore
 * for (const e of pairing.unmatchedBase) log("DEBUG", unmatchedBaseMessage(e));
 * // No LoRA layer found in file for base layer 'model.diffusion_model.input_blocks.0.0.weight'
 * //   (5, 4, 3, 3) (e.g., an expected LoRA key was: 'lora_unet_input_blocks_0_0')
 * ```
 */
export function unmatchedBaseMessage(entry: BaseEntry): string {
  return `No LoRA layer found in file for base layer ${pythonRepr(entry.key)} ${
    pythonTuple(entry.shape)
  } (e.g., an expected LoRA key was: ${pythonRepr(entry.kohyaName)})`;
}
