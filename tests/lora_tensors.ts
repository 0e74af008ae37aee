/**
 * A kohya LoRA layer's tensors in F32, for the tests that write LoRA files of their own:
 * `lora_up` (out × rank, with 1 × 1 trailing dims for a conv layer), `lora_down`
 * (rank × the input shape) and, when given, `alpha`.
 *
 * @module
 */

import { encodeFloats } from "../src/safetensors/dtype.ts";
import type { TensorSource } from "../src/safetensors/writer.ts";

/** One layer's factors and shape. */
export interface KohyaLayerSpec {
  /** Rows of ΔW. */
  readonly out: number;
  /** Stored rank. */
  readonly rank: number;
  /** The down weight's trailing dims: [in] for a linear layer, [in, kh, kw] for a conv. */
  readonly inShape: readonly number[];
  /** lora_up, out × rank row-major. */
  readonly up: ArrayLike<number>;
  /** lora_down, rank × in′ row-major. */
  readonly down: ArrayLike<number>;
  /** The alpha tensor's value; no alpha tensor when undefined. */
  readonly alpha?: number;
}

/** The tensors of layer `name` as kohya writes them, in F32. */
export function kohyaLayerTensors(name: string, layer: KohyaLayerSpec): TensorSource[] {
  const { out, rank, inShape, up, down, alpha } = layer;
  const f32 = (values: ArrayLike<number>) => encodeFloats(Array.from(values), "F32");
  const conv = inShape.length === 3;
  return [
    {
      name: `${name}.lora_up.weight`,
      dtype: "F32",
      shape: conv ? [out, rank, 1, 1] : [out, rank],
      data: f32(up),
    },
    { name: `${name}.lora_down.weight`, dtype: "F32", shape: [rank, ...inShape], data: f32(down) },
    ...(alpha === undefined
      ? []
      : [{ name: `${name}.alpha`, dtype: "F32" as const, shape: [], data: f32([alpha]) }]),
  ];
}
