/**
 * The first stages for one LoRA, in order: load → decompose → pair with the base → base norms.
 * The decomposition runs in the background from the moment the file is read; the pairing and
 * the base norms queue up behind it, and all-zero layers are set aside once it is done.
 *
 * @module
 */

import { loadLora, type LoraModel, type RawTensor } from "../lora/lora_file.ts";
import type { PairedLayer } from "../lora/pairing.ts";
import { loadHashing } from "../safetensors/hashes.ts";
import { checkFiniteAlphas, checkFiniteDecompositions } from "../finite_checks.ts";
import { startDecomposition } from "./decompose.ts";
import type { LayerDecomposition } from "./layer_maths.ts";
import { pairWithBase } from "./pair_with_base.ts";
import { ZERO_LAYER_SIGMA } from "../summary.ts";
import type { Session } from "./session.ts";

/** A LoRA after pairing and decomposition, shared by all recipes. */
export interface PreparedLora {
  /** The file (or merge) as loaded. */
  readonly model: LoraModel;
  /** Paired non-zero layers, name order: the layers that are resized. */
  readonly layers: readonly PairedLayer[];
  /** Their decompositions (same order). */
  readonly decompositions: readonly LayerDecomposition[];
  /** Every layer's decomposition in the model's order, where all of them were computed. */
  readonly allDecompositions: readonly (LayerDecomposition | undefined)[];
  /** Tensors copied unchanged. */
  readonly passThrough: readonly RawTensor[];
  /** Per-dimension subspace scales of `layers`, once a recipe has needed them. */
  subspace?: Float64Array[];
  /** All-zero paired layers: dropped, except by kohya's rules (rank 1). */
  readonly zeroLayers: readonly PairedLayer[];
  /** Their decompositions. */
  readonly zeroDecompositions: readonly LayerDecomposition[];
}

/** The LoRA with its all-zero layers after the others, as kohya's rules resize it. */
export function withZeroLayers(lora: PreparedLora): PreparedLora {
  if (lora.zeroLayers.length === 0) return lora;
  return {
    ...lora,
    layers: [...lora.layers, ...lora.zeroLayers],
    decompositions: [...lora.decompositions, ...lora.zeroDecompositions],
    zeroLayers: [],
    zeroDecompositions: [],
  };
}

/** Loads one LoRA entry and runs it through decomposition, pairing and base norms. */
export async function prepareLora(session: Session, entry: string): Promise<PreparedLora> {
  // 1. Load.
  const model = await loadLora(entry);
  for (const warning of model.warnings) session.options.log("WARNING", warning);
  // 2. Decompose every layer, in the background from now on.
  const decomposition = startDecomposition(session, model);
  // 3. Pair with the base meanwhile (a failure aborts the decomposition); a layer to resize
  //    with an alpha that is not finite fails here, named, before the backend refuses it.
  const { paired, passThrough } = await decomposition.alongside(async () => {
    const pairing = await pairWithBase(session, model);
    checkFiniteAlphas(entry, pairing.paired.map((p) => p.layer));
    return pairing;
  });
  // 4. Base norms, queued behind the decomposition on the backend's workers (neither waits for
  //    the other's stragglers).
  const { frobenius, spectral } = session.options.anyNeeds;
  const norms = frobenius || spectral
    ? session.norms.fetch(paired, { frobenius, spectral })
    : undefined;
  norms?.catch(() => {}); // awaited below; not unhandled if the decomposition fails first
  decomposition.showProgress();
  // This thread waits for the workers now: the time to load what writing needs.
  if (session.writes) loadHashing().catch(() => {});
  const decomposed = await decomposition.of(paired);
  await norms;
  // NaN or ∞ in a factor gives NaN σ: named here, never taken for an all-zero layer.
  checkFiniteDecompositions(entry, paired.map((p) => p.layer), decomposed.paired);
  return {
    model,
    ...setAsideZeroLayers(session, paired, decomposed.paired),
    allDecompositions: decomposed.all,
    passThrough,
  };
}

/**
 * The paired layers that are not all zeroes and their decompositions, and apart the all-zero ones
 * (kohya's rules keep them); a warning for those.
 */
function setAsideZeroLayers(
  session: Session,
  paired: readonly PairedLayer[],
  decomposed: readonly LayerDecomposition[],
): Pick<PreparedLora, "layers" | "decompositions" | "zeroLayers" | "zeroDecompositions"> {
  const layers: PairedLayer[] = [];
  const decompositions: LayerDecomposition[] = [];
  const zeroLayers: PairedLayer[] = [];
  const zeroDecompositions: LayerDecomposition[] = [];
  paired.forEach((p, i) => {
    const d = decomposed[i];
    if (!(d.sigma.length > 0 && d.sigma[0] >= ZERO_LAYER_SIGMA)) {
      // kohya trains no TE1 layer 11 (SDXL uses the penultimate CLIP-L layer).
      if (!p.layer.name.includes("text_model_encoder_layers_11")) {
        session.options.log(
          "WARNING",
          `LoRA layer ${p.layer.name} is all zeroes! dim=${d.sigma.length}`,
        );
      }
      zeroLayers.push(p);
      zeroDecompositions.push(d);
      return;
    }
    layers.push(p);
    decompositions.push(d);
  });
  return { layers, decompositions, zeroLayers, zeroDecompositions };
}
