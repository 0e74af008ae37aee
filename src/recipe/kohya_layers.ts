/**
 * kohya's rules applied to the layers of a LoRA file: the layer facts the
 * rules read, and the metadata kohya writes for the run.
 *
 * @module
 */

import type { LoraLayer } from "../lora/lora_file.ts";
import { type KohyaLayer, kohyaMetadata, type KohyaRule } from "./kohya.ts";

/**
 * A LoRA layer as kohya's rule sees it: its shape (4-D down weight = conv),
 * its singular values (α/r included) and its stored alpha and rank.
 *
 * @example
 * ```ts ignore
 * const layer = kohyaLayerOf(paired.layer, decomposition.sigma);
 * ```
 */
export function kohyaLayerOf(layer: LoraLayer, sigma: Float64Array): KohyaLayer {
  const { out, inFlat, rank, scale } = layer.factors;
  return {
    out,
    inFlat,
    conv: layer.inShape.length === 3,
    sigma,
    scale,
    alpha: layer.alpha,
    storedRank: rank,
  };
}

/** A resized layer and the alpha written for it (before rounding to the output dtype). */
export interface KohyaResizedLayer {
  /** The input layer. */
  readonly layer: LoraLayer;
  /** Its new alpha. */
  readonly alpha: number;
}

/**
 * `ss_training_comment`, `ss_network_dim` and `ss_network_alpha` as kohya
 * writes them for a run: its "old rank" is the largest rank of the file's
 * layers, and a fixed rank's `ss_network_alpha` is the alpha of the layer it
 * processed last, the one whose `lora_down` key sorts last.
 *
 * @param rule the kohya rule of the run
 * @param fileLayers every layer of the input file
 * @param resized the layers resized, with their new alphas
 * @param metadata the input metadata (its `ss_training_comment` is kept after `; `)
 *
 * @example
 * ```ts ignore
 * const meta = kohyaNetworkMetadata({ rank: 4 }, model.layers, resized, model.metadata);
 * ```
 */
export function kohyaNetworkMetadata(
  rule: KohyaRule,
  fileLayers: readonly LoraLayer[],
  resized: readonly KohyaResizedLayer[],
  metadata: Readonly<Record<string, string>>,
): Record<string, string> {
  const maxOldRank = fileLayers.length > 0
    ? Math.max(...fileLayers.map((l) => l.factors.rank))
    : undefined;
  let last: KohyaResizedLayer | undefined;
  const key = (l: KohyaResizedLayer) => `${l.layer.name}.lora_down.weight`;
  for (const l of resized) if (last === undefined || key(l) > key(last)) last = l;
  return kohyaMetadata({
    rule,
    maxOldRank,
    lastAlpha: last?.alpha,
    comment: metadata.ss_training_comment,
  });
}
