/**
 * Host side of `shaders/products.wgsl`, the one kernel behind Gram matrices,
 * subspace products and rebuilds: work items for P = Xᵀ·Y over strided views
 * of packed data, grouped by (formats, buffers, output mode) so that one
 * dispatch per group serves every layer of a batch.
 *
 * @module
 */

import type { GpuContext } from "./device.ts";
import type { Format } from "./pack.ts";

/** Samples per segment at least (more segments = more parallel work items). */
const MIN_SEGMENT = 2048;
/** At most this many segments per sum (bounds the readback). */
const MAX_SEGMENTS = 4;

/**
 * Segments of a sum over `n` samples: [start, end) pairs (at most four, of
 * at least 2048 samples each), computed by separate work items.
 *
 * @example
 * ```ts
 * import { segments } from "./products.ts";
 * const got = JSON.stringify(segments(10240));
 * if (got !== "[[0,2560],[2560,5120],[5120,7680],[7680,10240]]") throw new Error(got);
 * ```
 */
export function segments(n: number): [number, number][] {
  const length = Math.max(MIN_SEGMENT, Math.ceil(n / MAX_SEGMENTS));
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += length) out.push([s, Math.min(n, s + length)]);
  return out.length > 0 ? out : [[0, 0]];
}

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
 * // Triple: three f32 per output element, summed on the host.
 * if (OutMode.Triple !== 0) throw new Error("the shader's OUT_MODE 0 is the three-term output");
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
export interface ProductGroup {
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
 * // 20 features make 2 × 2 tiles of 16; the upper triangle is (0,0) (0,1) (1,1).
 * if (items.length / 16 !== 3) throw new Error(`${items.length / 16} tiles`);
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

/**
 * Product items grouped by their input formats, for a batch whose X and Y
 * data all lie in given buffers: one {@link ProductGroup} (one dispatch) per
 * pair of formats.
 *
 * @example
 * ```ts
 * import { ProductItems } from "./products.ts";
 * import { Format } from "./pack.ts";
 * const items = new ProductItems();
 * const b = { base: 0, sampleStride: 4, featureStride: 1, features: 4 };
 * items.add(Format.F16, b, Format.F16, b, { samples: [0, 8], outBase: 0, outStride: 4 });
 * items.add(Format.F32, b, Format.F32, b, { samples: [0, 8], outBase: 16, outStride: 4 });
 * if (items.size !== 2) throw new Error("one group per pair of formats");
 * ```
 */
export class ProductItems {
  readonly #groups = new Map<string, { formatX: Format; formatY: Format; items: number[] }>();

  /** Number of groups (dispatches). */
  get size(): number {
    return this.#groups.size;
  }

  /** Appends the items of Xᵀ·Y (see {@link addProduct}) to the group of these formats. */
  add(formatX: Format, x: View, formatY: Format, y: View, options: ProductOptions): void {
    const key = `${formatX},${formatY}`;
    let group = this.#groups.get(key);
    if (!group) this.#groups.set(key, group = { formatX, formatY, items: [] });
    addProduct(group.items, x, y, options);
  }

  /** The groups, reading X from `x` and Y from `y` and writing `out` in `mode`. */
  groups(x: GPUBuffer, y: GPUBuffer, out: GPUBuffer, mode: OutMode): ProductGroup[] {
    return [...this.#groups.values()].map((g) => ({ ...g, x, y, out, mode }));
  }
}

/** Commands ready to record: pipelines built, items uploaded. */
export interface PreparedProducts {
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
 * const prepared = await prepareProducts(ctx, groups);
 * try {
 *   await ctx.submit("products", prepared.record);
 * } finally {
 *   prepared.release();
 * }
 * ```
 */
export async function prepareProducts(
  ctx: GpuContext,
  groups: readonly ProductGroup[],
): Promise<PreparedProducts> {
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
 * if (tripleAt(new Float32Array([1, 2 ** -30, 0]), 0) !== 1 + 2 ** -30) throw new Error("sum");
 * ```
 */
export function tripleAt(out: Float32Array, i: number): number {
  return out[3 * i] + out[3 * i + 1] + out[3 * i + 2];
}
