/**
 * NaN and infinity are never believed. A LoRA layer whose singular values are
 * not finite holds a NaN or infinite factor element (the backends give NaN σ
 * then) or factors whose product overflows; a base norm that is not finite comes from a NaN or infinite
 * weight. Either is an error naming the file and the tensor, found only then
 * (the factors are scanned on the rare failure, never on the normal path).
 *
 * @module
 */

import { LoraError, SafetensorsError } from "./errors.ts";
import type { BaseNorms, Decomposition, FloatData } from "./linalg/backend.ts";
import type { LoraLayer } from "./lora/lora_file.ts";
import { decodeFloats } from "./safetensors/dtype.ts";

/** The first element of `data` that is not finite, with its index, or `undefined`. */
function firstNonFinite(data: FloatData): { index: number; value: number } | undefined {
  const values = decodeFloats(data.bytes, data.dtype, Float64Array);
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) return { index: i, value: values[i] };
  }
  return undefined;
}

/**
 * Throws a one-line {@link LoraError} for the first layer whose decomposition
 * holds a singular value that is not finite, naming the file, the tensor and
 * the element (or, for finite factors whose product overflows, the layer).
 *
 * @param entry the LoRA entry (named when a factor has no file of its own: merges)
 *
 * @example
 * ```ts
 * import { checkFiniteDecompositions } from "./finite_checks.ts";
 * import { encodeFloats } from "./safetensors/dtype.ts";
 * const f32 = (v: number[]) => ({ dtype: "F32" as const, bytes: encodeFloats(v, "F32") });
 * const layer = {
 *   name: "x", key: "x", naming: "kohya" as const, alpha: 1, inShape: [2], upShape: [1, 1], tensors: [],
 *   factors: { up: f32([1]), down: f32([NaN, 0]), out: 1, rank: 1, inFlat: 2, scale: 1 },
 * };
 * const d = { sigma: new Float64Array([NaN]), upTransform: new Float64Array(1), downTransform: new Float64Array(1) };
 * let message = "";
 * try {
 *   checkFiniteDecompositions("a.safetensors", [layer], [d]);
 * } catch (e) {
 *   message = (e as Error).message;
 * }
 * if (message !== "a.safetensors: tensor 'x.lora_down.weight': element 0 is NaN") throw new Error(message);
 * ```
 */
export function checkFiniteDecompositions(
  entry: string,
  layers: readonly LoraLayer[],
  decompositions: readonly Pick<Decomposition, "sigma">[],
): void {
  layers.forEach((layer, i) => {
    if (decompositions[i].sigma.every(Number.isFinite)) return;
    for (const [half, data] of [["down", layer.factors.down], ["up", layer.factors.up]] as const) {
      const bad = firstNonFinite(data);
      if (!bad) continue;
      const file = data.source?.path ?? entry;
      const tensor = data.source?.tensor ?? `${layer.name}.lora_${half}.weight`;
      throw new LoraError(`${file}: tensor '${tensor}': element ${bad.index} is ${bad.value}`, {
        file,
        tensor,
        key: layer.name,
      });
    }
    throw new LoraError(
      `${entry}: layer '${layer.name}': its factors are finite but their product overflows (singular values not finite)`,
      { file: entry, key: layer.name },
    );
  });
}

/**
 * Throws a one-line {@link SafetensorsError} naming the checkpoint and the
 * weight when a computed base norm is not finite (a NaN or infinite weight):
 * such a layer could be neither scored nor cached.
 *
 * @example
 * ```ts
 * import { checkFiniteBaseNorms } from "./finite_checks.ts";
 * checkFiniteBaseNorms("base.safetensors", ["w"], [{ frobenius: 2 }]); // finite: no error
 * let failed = false;
 * try {
 *   checkFiniteBaseNorms("base.safetensors", ["w"], [{ frobenius: NaN }]);
 * } catch {
 *   failed = true;
 * }
 * if (!failed) throw new Error("a NaN norm was believed");
 * ```
 */
export function checkFiniteBaseNorms(
  checkpoint: string,
  keys: readonly string[],
  norms: readonly BaseNorms[],
): void {
  norms.forEach((n, i) => {
    for (const kind of ["frobenius", "spectral"] as const) {
      const v = n[kind];
      if (v !== undefined && !Number.isFinite(v)) {
        throw new SafetensorsError(
          `${checkpoint}: tensor '${keys[i]}': its ${
            kind === "frobenius" ? "Frobenius" : "spectral"
          } norm is ${v} (the weight holds NaN or infinite values)`,
          { file: checkpoint, tensor: keys[i] },
        );
      }
    }
  });
}

/**
 * Throws a one-line {@link SafetensorsError} naming the checkpoint and the
 * weight when a layer's subspace scales |uᵢᵀ·W·vᵢ| are not all finite (a NaN
 * or infinite base weight, met by a `subspace` recipe).
 *
 * @example
 * ```ts
 * import { checkFiniteSubspaceScales } from "./finite_checks.ts";
 * checkFiniteSubspaceScales("base.safetensors", ["w"], [new Float64Array([0.5, 0])]);
 * ```
 */
export function checkFiniteSubspaceScales(
  checkpoint: string,
  keys: readonly string[],
  scales: readonly Float64Array[],
): void {
  scales.forEach((s, i) => {
    const j = s.findIndex((v) => !Number.isFinite(v));
    if (j >= 0) {
      throw new SafetensorsError(
        `${checkpoint}: tensor '${keys[i]}': subspace scale ${j} is ${
          s[j]
        } (the weight holds NaN or infinite values)`,
        { file: checkpoint, tensor: keys[i] },
      );
    }
  });
}

/**
 * Throws a one-line {@link LoraError} naming the file and the alpha tensor
 * when a layer to be resized has an alpha that is not finite. (A layer that
 * pairs with nothing is copied unchanged, whatever it holds.)
 *
 * @param entry the LoRA entry: its file, or the merge spec
 *
 * @example
 * ```ts
 * import { checkFiniteAlphas } from "./finite_checks.ts";
 * let message = "";
 * try {
 *   checkFiniteAlphas("a.safetensors", [{ name: "x", alpha: NaN }]);
 * } catch (e) {
 *   message = (e as Error).message;
 * }
 * if (message !== "a.safetensors: tensor 'x.alpha': alpha NaN is not a finite number") throw new Error(message);
 * ```
 */
export function checkFiniteAlphas(
  entry: string,
  layers: readonly (Pick<LoraLayer, "name" | "alpha"> & { readonly key?: string })[],
): void {
  for (const { name, key, alpha } of layers) {
    if (!Number.isFinite(alpha)) {
      // Named as the file spells the layer (its own naming's key).
      const tensor = `${key ?? name}.alpha`;
      throw new LoraError(
        `${entry}: tensor '${tensor}': alpha ${alpha} is not a finite number`,
        { file: entry, tensor, key: name },
      );
    }
  }
}
