/**
 * Decomposition stage: every layer of a LoRA is decomposed as soon as its file is read, while
 * this thread opens the base and pairs the layers. SDXL LoRAs pair every layer, so little work
 * is wasted (the SVD of a layer that pairs with nothing is dropped), and the start-up of the
 * pairing overlaps the workers.
 *
 * @module
 */

import type { LoraModel } from "../lora/lora_file.ts";
import type { PairedLayer } from "../lora/pairing.ts";
import { decomposeLayers, type LayerDecomposition } from "./layer_maths.ts";
import type { Session } from "./session.ts";

/**
 * Dimensions of a layer whose transforms are held from decomposition to rebuild: a rank-256
 * layer's are 1 MB (f64), 0.7 GB over an SDXL UNet, while a resize seldom keeps more than this
 * many of one layer's dimensions (a rebuild that does decomposes the layer again). At or below
 * it, nothing is trimmed.
 */
export const HELD_DIMENSIONS = 64;

/** A decomposition of every layer of a LoRA, under way. */
export interface PendingDecomposition {
  /**
   * Runs `work` (the pairing) alongside; if it fails, the decomposition is aborted (the backend
   * drops its queued work) and the failure is passed on.
   */
  alongside<T>(work: () => Promise<T>): Promise<T>;
  /**
   * From now on, `SVD` progress is reported (the latest state at once): the progress bar waits
   * for the pairing's log lines.
   */
  showProgress(): void;
  /**
   * The decompositions of the paired layers, in their order, and of every layer of the file
   * when all of them were decomposed (`undefined` entries when not). When the backend refused
   * some layer, the paired layers alone are decomposed again: a layer that does not pair (it is
   * copied unchanged) may be the one refused, and the paired ones alone decide whether the run
   * fails.
   */
  of(paired: readonly PairedLayer[]): Promise<DecomposedLayers>;
}

/** What {@link PendingDecomposition.of} gives. */
export interface DecomposedLayers {
  /** One per paired layer, in the pairing's order. */
  readonly paired: readonly LayerDecomposition[];
  /** One per layer of the file (the model's order), undefined where not decomposed. */
  readonly all: readonly (LayerDecomposition | undefined)[];
}

/** Starts decomposing every layer of `model` on the session's backend. */
export function startDecomposition(session: Session, model: LoraModel): PendingDecomposition {
  const { backend, options } = session;
  let progress: [number, number] | undefined, shown = false;
  const onProgress = (d: number, t: number) => {
    progress = [d, t];
    if (shown) options.onProgress("SVD", d, t);
  };
  const early = new AbortController();
  // Transforms past the leading dimensions are let go, unless a recipe scores by subspace
  // (which reads every dimension's vectors).
  const heldDimensions = options.anyNeeds.subspace ? undefined : HELD_DIMENSIONS;
  const decomposing = Promise.try(() =>
    decomposeLayers(backend, model.layers, { onProgress, signal: early.signal, heldDimensions })
  );
  decomposing.catch(() => {}); // awaited by of(); not unhandled if the pairing fails first
  // By name: pairing gives a LyCORIS layer the base weight's shape in a copy of its own.
  const index = new Map<string, number>(model.layers.map((l, i) => [l.name, i]));
  return {
    async alongside(work) {
      try {
        return await work();
      } catch (e) {
        early.abort(e);
        throw e;
      }
    },
    showProgress() {
      shown = true;
      if (progress) options.onProgress("SVD", ...progress);
    },
    of(paired) {
      return decomposing.then(
        (all) => ({ paired: paired.map((p) => all[index.get(p.layer.name)!]), all }),
        async () => ({
          paired: await decomposeLayers(backend, paired.map((p) => p.layer), {
            onProgress,
            heldDimensions,
          }),
          all: model.layers.map(() => undefined),
        }),
      );
    },
  };
}
