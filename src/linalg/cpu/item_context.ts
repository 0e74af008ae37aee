/**
 * What a CPU work item runs with (its thread's kernels and file reader) and
 * how it puts its inputs into kernel memory: factors (read from their file
 * when stored there) and base weights.
 *
 * @module
 */

import { dtypeSize } from "../../safetensors/dtype.ts";
import { type BaseWeightRef, floatByteLength, type FloatData } from "../backend.ts";
import { khatriRaoProduct } from "../khatri_rao.ts";
import type { RangeReader } from "../range_reader.ts";
import { DTYPE_CODES, type Kernels } from "../wasm/kernels.ts";
import type { F32Weight } from "./spectral.ts";

/** What an item needs besides its input. */
export interface ItemContext {
  /** This thread's kernels. */
  readonly kernels: Kernels;
  /** This thread's file reader (base weights, stored factors). */
  readonly reader: RangeReader;
}

/**
 * Puts factor data into kernel memory: read from its file when stored there, formed here when
 * it is a Khatri–Rao product, else copied.
 */
export function loadFactor(context: ItemContext, data: FloatData): number {
  const { kernels } = context;
  if (data.khatriRao) {
    const ptr = kernels.alloc(floatByteLength(data));
    khatriRaoProduct(data.khatriRao, kernels.f32(ptr, floatByteLength(data) / 4));
    return ptr;
  }
  if (!data.source) return kernels.put(data.bytes);
  const ptr = kernels.alloc(data.source.byteLength);
  context.reader.read(data.source, kernels.u8(ptr, data.source.byteLength));
  return ptr;
}

/** A base weight read into kernel memory. */
export interface LoadedWeight {
  /** Raw bytes. */
  readonly raw: number;
  /** Kernel dtype code. */
  readonly dtype: number;
  /** Rows. */
  readonly rows: number;
  /** Columns. */
  readonly cols: number;
}

/** Reads a base weight into kernel memory (after releasing the kernels' earlier regions). */
export function loadWeight(context: ItemContext, weight: BaseWeightRef): LoadedWeight {
  const { kernels, reader } = context;
  const bytes = weight.rows * weight.cols * dtypeSize(weight.dtype);
  kernels.reset();
  const raw = kernels.alloc(bytes);
  reader.read(
    { path: weight.path, offset: weight.offset, byteLength: bytes },
    kernels.u8(raw, bytes),
  );
  return { raw, rows: weight.rows, cols: weight.cols, dtype: DTYPE_CODES[weight.dtype] };
}

/** The weight as f32 (F32 in place; other dtypes decoded once, F64 rounded). */
export function asF32(kernels: Kernels, w: LoadedWeight): F32Weight {
  if (w.dtype === DTYPE_CODES.F32) return { ptr: w.raw, rows: w.rows, cols: w.cols };
  const ptr = kernels.alloc(w.rows * w.cols * 4);
  kernels.exports.decodeF32(w.raw, ptr, w.rows * w.cols, w.dtype);
  return { ptr, rows: w.rows, cols: w.cols };
}
