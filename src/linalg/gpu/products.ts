/**
 * Host side of `shaders/products.wgsl`: work items for P = Xᵀ·Y over strided
 * views of packed data, grouped by (formats, buffers, output mode) so that
 * one dispatch per group serves every layer of a batch.
 *
 * @module
 */

import type { GpuContext } from "./device.ts";
import type { Format } from "./pack.ts";

/** A strided matrix view: element (sample s, feature f) at `base + s·sampleStride + f·featureStride`. */
export interface View {
  /** Element index of (0, 0). */
  readonly base: number;
  /** Element step between samples. */
  readonly sampleStride: number;
  /** Element step between features. */
  readonly featureStride: number;
  /** Number of features (output rows for X, output columns for Y). */
  readonly features: number;
}

/**
 * What a group's items write per output element.
 *
 * @example
 * ```ts
 * import { OutMode } from "./products.ts";
 * console.log(OutMode.Triple); // 0: three f32 per element
 * ```
 */
export const OutMode = {
  /** Three f32 cascade terms, summed on the host in f64. */
  Triple: 0,
  /** One f32. */
  F32: 1,
  /** A df32 pair (readable as format DF32). */
  DF32: 2,
} as const;

/** An output mode. */
export type OutMode = typeof OutMode[keyof typeof OutMode];

/** One dispatch: items sharing formats, buffers and output mode. */
export interface CrossGroup {
  /** Format of X's data. */
  readonly formatX: Format;
  /** Format of Y's data. */
  readonly formatY: Format;
  /** Buffer holding X. */
  readonly x: GPUBuffer;
  /** Buffer holding Y (may be `x`). */
  readonly y: GPUBuffer;
  /** Output buffer (f32 words). */
  readonly out: GPUBuffer;
  /** Output mode. */
  readonly mode: OutMode;
  /** Work items (16×16 output tiles). */
  readonly items: number[];
}

/** Output tile edge of one work item. */
const TILE = 16;
const ITEM_WORDS = 16;

/** Options for {@link addProduct}. */
export interface ProductOptions {
  /** Sample range [start, end). */
  readonly samples: readonly [number, number];
  /** Output element index of (0, 0). */
  readonly outBase: number;
  /** Output row stride, elements. */
  readonly outStride: number;
  /** Only tiles on or above the diagonal (for a symmetric XᵀX). */
  readonly upperOnly?: boolean;
}

/**
 * Appends the items of Xᵀ·Y (features(X) × features(Y), row-major at
 * `outBase`) over one sample range to `items`.
 *
 * @example
 * ```ts
 * import { addProduct } from "./products.ts";
 * const items: number[] = [];
 * const b = { base: 0, sampleStride: 20, featureStride: 1, features: 20 };
 * addProduct(items, b, b, { samples: [0, 64], outBase: 0, outStride: 20, upperOnly: true });
 * console.log(items.length / 16); // 3 tiles: (0,0) (0,1) (1,1)
 * ```
 */
export function addProduct(items: number[], x: View, y: View, options: ProductOptions): void {
  const [s0, s1] = options.samples;
  for (let fx = 0; fx < x.features; fx += TILE) {
    for (let fy = options.upperOnly ? fx : 0; fy < y.features; fy += TILE) {
      items.push(
        x.base,
        x.sampleStride,
        x.featureStride,
        x.features,
        y.base,
        y.sampleStride,
        y.featureStride,
        y.features,
        s0,
        s1,
        fx,
        fy,
        options.outBase + fx * options.outStride + fy,
        options.outStride,
        0,
        0,
      );
    }
  }
}

/** Commands ready to record: pipelines built, items uploaded. */
export interface PreparedCross {
  /** Records one compute pass with a dispatch per group. */
  record(encoder: GPUCommandEncoder): void;
  /** Releases the item buffer (after the submit). */
  release(): void;
}

/**
 * Builds the pipelines and uploads the items of `groups` (one dispatch per
 * group), ready to be recorded into a command encoder.
 *
 * @example
 * ```ts ignore
 * const prepared = await prepareCross(ctx, groups);
 * try {
 *   await ctx.submit("products", prepared.record);
 * } finally {
 *   prepared.release();
 * }
 * ```
 */
export async function prepareCross(
  ctx: GpuContext,
  groups: readonly CrossGroup[],
): Promise<PreparedCross> {
  const live = groups.filter((g) => g.items.length > 0);
  if (live.length === 0) return { record() {}, release() {} };
  const pipelines = await Promise.all(
    live.map((g) =>
      ctx.pipeline("products", "main", { FMT_X: g.formatX, FMT_Y: g.formatY, OUT_MODE: g.mode })
    ),
  );
  const alignWords = Math.max(ITEM_WORDS, ctx.limits.offsetAlignment / 4);
  const offsets: number[] = [];
  let words = 0;
  for (const g of live) {
    offsets.push(words);
    words += Math.ceil(g.items.length / alignWords) * alignWords;
  }
  const all = new Uint32Array(words);
  live.forEach((g, i) => all.set(g.items, offsets[i]));
  const itemBuffer = ctx.upload(all, GPUBufferUsage.STORAGE, "product items");
  const bindGroups = live.map((g, i) =>
    ctx.device.createBindGroup({
      layout: pipelines[i].getBindGroupLayout(0),
      entries: [
        {
          binding: 0,
          resource: { buffer: itemBuffer, offset: offsets[i] * 4, size: g.items.length * 4 },
        },
        { binding: 1, resource: { buffer: g.x } },
        { binding: 2, resource: { buffer: g.y } },
        { binding: 3, resource: { buffer: g.out } },
      ],
    })
  );
  return {
    record(encoder) {
      const pass = encoder.beginComputePass({ label: "products" });
      live.forEach((g, i) => {
        pass.setPipeline(pipelines[i]);
        pass.setBindGroup(0, bindGroups[i]);
        ctx.dispatch(pass, g.items.length / ITEM_WORDS);
      });
      pass.end();
    },
    release() {
      ctx.release(itemBuffer);
    },
  };
}

/**
 * The float64 value of output element `i` of a Triple-mode result.
 *
 * @example
 * ```ts
 * import { tripleAt } from "./products.ts";
 * console.log(tripleAt(new Float32Array([1, 2 ** -30, 0]), 0)); // 1.0000000009313226
 * ```
 */
export function tripleAt(out: Float32Array, i: number): number {
  return out[3 * i] + out[3 * i + 1] + out[3 * i + 2];
}
