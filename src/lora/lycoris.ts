/**
 * Reading LyCORIS LoHa and LoKr layers as exact low-rank structures.
 *
 * - LoHa `<name>.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b` and an
 *   optional `.alpha`: ΔW = α/r · (W1a·W1b) ⊙ (W2a·W2b), r = rows of
 *   `hada_w1_b` (scale 1 without α), as ComfyUI's weight adapter applies it.
 * - LoKr `<name>.lokr_w1` or `.lokr_w1_a`/`_b`, `.lokr_w2` or
 *   `.lokr_w2_a`/`_b`, and an optional `.alpha`: ΔW = scale · W1 ⊗ W2, where
 *   the scale is α over the rank of the decomposed factor (W2's when both
 *   are, as ComfyUI reads it), or 1 when neither is or there is no α.
 *
 * Without Tucker, conv factors are 2-D over in·kh·kw; only a full
 * `lokr_w2` is 4-D (`[o2, i2, kh, kw]`), and a Kronecker product of the 4-D
 * kernels flattens the same way as that of the flattened matrices. Tucker
 * layers (`hada_t1`/`hada_t2`, `lokr_t2`) are not read: they stay
 * pass-through. Factor bytes stay in the file until a backend reads them.
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import type { LowRankFactors } from "../linalg/backend.ts";
import type { FactorMatrix } from "../linalg/factor_matrix.ts";
import { FormedFloatData } from "../linalg/factor_matrix.ts";
import {
  type HadamardFactors,
  hadamardLowRank,
  type HadamardRoute,
  hadamardRoute,
  hadamardShape,
} from "../linalg/khatri_rao.ts";
import { type KroneckerFactor, type KroneckerLayer, kroneckerLayer } from "../linalg/kronecker.ts";
import { isFloatDType } from "../safetensors/dtype.ts";
import { readFileRange } from "../safetensors/file_range.ts";
import type { TensorInfo } from "../safetensors/header.ts";
import type { SafetensorsFile } from "../safetensors/reader.ts";

/** A LoHa layer, readable as an exact LoRA of rank r1·r2. */
export interface LohaLayer {
  /** Kind tag. */
  readonly kind: "loha";
  /** Layer name (the tensors' common prefix). */
  readonly name: string;
  /** The four factors and the scale. */
  readonly hadamard: HadamardFactors;
  /** The layer as LoRA factors for the backends (ΔW = scale·up·down exactly). */
  readonly factors: LowRankFactors;
  /** Which exact form `factors` takes. */
  readonly route: HadamardRoute;
  /** Rank as an exact LoRA: r1·r2. */
  readonly rank: number;
  /** Stored alpha, when the file has one. */
  readonly alpha?: number;
  /** Rows of ΔW. */
  readonly out: number;
  /** Columns of ΔW (in·kh·kw for a conv; the split comes from the base weight). */
  readonly inFlat: number;
  /** The layer's tensor names (alpha included), for pass-through if it goes unused. */
  readonly tensors: readonly string[];
}

/** A LoKr layer: ΔW = scale · W1 ⊗ W2. */
export interface LokrLayer {
  /** Kind tag. */
  readonly kind: "lokr";
  /** Layer name (the tensors' common prefix). */
  readonly name: string;
  /** The two factors as backend input, the scale, and ΔW's shape. */
  readonly kronecker: KroneckerLayer;
  /**
   * Rank as an exact LoRA, at most: the product of the factors' stored ranks
   * (r for a decomposed factor, min(rows, cols) for a full one); the exact
   * rank is the number of nonzero singular values of its decomposition.
   */
  readonly rank: number;
  /** Stored alpha, when the file has one. */
  readonly alpha?: number;
  /** Scale of the Kronecker product. */
  readonly scale: number;
  /** Rows of ΔW: o1·o2. */
  readonly out: number;
  /** Columns of ΔW: i1·i2·kh·kw. */
  readonly inFlat: number;
  /** `[in, kh, kw]` when `lokr_w2` is a 4-D kernel (otherwise the base weight tells). */
  readonly inShape?: readonly number[];
  /** Shape of W1 `[o1, i1]` and of W2 flattened `[o2, i2·kh·kw]`. */
  readonly factorShapes: readonly [readonly [number, number], readonly [number, number]];
  /** The layer's tensor names (alpha included), for pass-through if it goes unused. */
  readonly tensors: readonly string[];
}

/** A LyCORIS layer of either kind. */
export type LycorisLayer = LohaLayer | LokrLayer;

/** The LyCORIS layers of a file. */
export interface LycorisLayers {
  /** LoHa and LoKr layers, sorted by name. */
  readonly layers: readonly LycorisLayer[];
  /** Names of the Tucker layers left as pass-through, sorted. */
  readonly tucker: readonly string[];
}

const LOHA = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"] as const;
const LOHA_TUCKER = ["hada_t1", "hada_t2"];
const LOKR = ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"] as const;
const LOKR_TUCKER = ["lokr_t2"];
const SUFFIXES = new Set<string>([...LOHA, ...LOHA_TUCKER, ...LOKR, ...LOKR_TUCKER]);

/**
 * Finds and validates a file's LoHa and LoKr layers. Only alphas are read
 * now; a factor is read where a backend uses it, and a NaN or infinity in it
 * fails there, naming the tensor. Every other problem (a missing factor,
 * factors that do not chain, mismatched Hadamard ranks or shapes) is a
 * one-line {@link LoraError} naming the file and the tensor, raised here.
 *
 * @example
 * ```ts ignore
 * import { SafetensorsFile } from "../safetensors/reader.ts";
 * import { readLycorisLayers } from "./lycoris.ts";
 * await using file = await SafetensorsFile.open("loha.safetensors");
 * const { layers } = await readLycorisLayers(file);
 * console.log(layers.map((l) => `${l.name}: ${l.kind} rank ${l.rank}`));
 * ```
 */
export async function readLycorisLayers(file: SafetensorsFile): Promise<LycorisLayers> {
  const modules = new Map<string, Map<string, TensorInfo>>();
  for (const t of file.tensors) {
    const dot = t.name.lastIndexOf(".");
    if (dot < 0) continue;
    const suffix = t.name.slice(dot + 1);
    if (!SUFFIXES.has(suffix)) continue;
    const name = t.name.slice(0, dot);
    if (!modules.has(name)) modules.set(name, new Map());
    modules.get(name)!.set(suffix, t);
  }
  const layers: LycorisLayer[] = [];
  const tucker: string[] = [];
  for (const name of [...modules.keys()].sort(compareText)) {
    const parts = modules.get(name)!;
    const suffixes = [...parts.keys()];
    if (suffixes.some((s) => LOHA_TUCKER.includes(s) || LOKR_TUCKER.includes(s))) {
      tucker.push(name);
      continue;
    }
    const alphaName = `${name}.alpha`;
    const alpha = file.has(alphaName) ? await file.readScalar(alphaName) : undefined;
    if (alpha !== undefined && !Number.isFinite(alpha)) {
      throw new LoraError(`${file.path}: tensor '${alphaName}' is ${alpha}, not a finite number`);
    }
    const isLoha = suffixes.some((s) => s.startsWith("hada_"));
    if (isLoha && suffixes.some((s) => s.startsWith("lokr_"))) {
      throw new LoraError(`${file.path}: layer '${name}' has both LoHa and LoKr factors`);
    }
    const reader = new FactorReader(file, name, parts);
    const layer = isLoha ? lohaLayer(reader, alpha) : lokrLayer(reader, alpha);
    layers.push({
      ...layer,
      tensors: [...reader.names, ...(alpha === undefined ? [] : [alphaName])].sort(compareText),
    });
  }
  return { layers, tucker };
}

/** A layer's factor tensors, read as {@link FactorMatrix} on demand. */
class FactorReader {
  readonly names: string[] = [];
  constructor(
    readonly file: SafetensorsFile,
    readonly layer: string,
    readonly parts: ReadonlyMap<string, TensorInfo>,
  ) {}

  has(suffix: string): boolean {
    return this.parts.has(suffix);
  }

  /** The factor `<layer>.<suffix>`, flattened to 2-D over its trailing dims. */
  factor(suffix: string, dims?: 2 | 4): FactorMatrix {
    const t = this.parts.get(suffix);
    const name = `${this.layer}.${suffix}`;
    const path = this.file.path;
    if (!t) throw new LoraError(`${path}: layer '${this.layer}': missing factor '${name}'`);
    if (!isFloatDType(t.dtype)) {
      throw new LoraError(`${path}: tensor '${name}' has dtype ${t.dtype}, expected a float type`);
    }
    const ok = dims === 4 ? t.shape.length === 2 || t.shape.length === 4 : t.shape.length === 2;
    if (!ok || t.shape.some((d) => d === 0)) {
      throw new LoraError(
        `${path}: tensor '${name}' has shape ${JSON.stringify(t.shape)}, expected a non-empty ${
          dims === 4 ? "2-D or 4-D" : "2-D"
        } factor`,
      );
    }
    this.names.push(name);
    const [begin, end] = t.dataOffsets;
    const range = {
      path,
      offset: this.file.dataStart + begin,
      byteLength: end - begin,
      tensor: name,
    };
    const rows = t.shape[0], cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const data = new FormedFloatData(t.dtype, rows * cols, () => readFileRange(range));
    return { data, rows, cols, name, file: path };
  }
}

function lohaLayer(reader: FactorReader, alpha: number | undefined): Omit<LohaLayer, "tensors"> {
  const [w1a, w1b, w2a, w2b] = LOHA.map((s) => reader.factor(s));
  const scale = alpha === undefined ? 1 : alpha / w1b.rows;
  const hadamard = { w1a, w1b, w2a, w2b, scale };
  const shape = hadamardShape(hadamard);
  const route = hadamardRoute(shape);
  return {
    kind: "loha",
    name: reader.layer,
    hadamard,
    factors: hadamardLowRank(hadamard, route),
    route,
    rank: shape.r1 * shape.r2,
    alpha,
    out: shape.out,
    inFlat: shape.inFlat,
  };
}

function lokrLayer(reader: FactorReader, alpha: number | undefined): Omit<LokrLayer, "tensors"> {
  const path = reader.file.path, name = reader.layer;
  const factor = (which: "w1" | "w2"): KroneckerFactor & { rank: number } => {
    const full = `lokr_${which}`;
    if (reader.has(full)) {
      if (reader.has(`${full}_a`) || reader.has(`${full}_b`)) {
        throw new LoraError(
          `${path}: layer '${name}': '${name}.${full}' comes with '${name}.${full}_a/_b'; expected one or the other`,
        );
      }
      const m = reader.factor(full, which === "w2" ? 4 : 2);
      return { full: m, rank: Math.min(m.rows, m.cols) };
    }
    if (!reader.has(`${full}_a`) && !reader.has(`${full}_b`)) {
      throw new LoraError(
        `${path}: layer '${name}': missing factor '${name}.${full}' (or '${name}.${full}_a' and '_b')`,
      );
    }
    const up = reader.factor(`${full}_a`), down = reader.factor(`${full}_b`);
    return { up, down, rank: up.cols };
  };
  const w1 = factor("w1"), w2 = factor("w2");
  // α over the rank of the decomposed factor, W2's when both are (ComfyUI's rule).
  const dim = "down" in w2 ? w2.down.rows : "down" in w1 ? w1.down.rows : undefined;
  const scale = alpha !== undefined && dim !== undefined ? alpha / dim : 1;
  const kronecker = kroneckerLayer(w1, w2, scale);
  const shapeOf = (f: KroneckerFactor): [number, number] =>
    "full" in f ? [f.full.rows, f.full.cols] : [f.up.rows, f.down.cols];
  const w2Shape = reader.parts.get("lokr_w2")?.shape;
  const first = shapeOf(w1);
  return {
    kind: "lokr",
    name,
    kronecker,
    rank: w1.rank * w2.rank,
    alpha,
    scale,
    out: kronecker.out,
    inFlat: kronecker.inFlat,
    inShape: w2Shape?.length === 4 ? [first[1] * w2Shape[1], w2Shape[2], w2Shape[3]] : undefined,
    factorShapes: [first, shapeOf(w2)],
  };
}

/**
 * Checks a LoKr layer against the base weight it modifies: the Kronecker
 * product's shape must be the weight's (flattened over its trailing dims,
 * and with the same kernel where `lokr_w2` is 4-D).
 *
 * @example
 * ```ts ignore
 * checkKroneckerShape("lokr.safetensors", layer, [1280, 640]); // throws a LoraError on mismatch
 * ```
 */
export function checkKroneckerShape(
  path: string,
  layer: LokrLayer,
  baseShape: readonly number[],
): void {
  const inFlat = baseShape.slice(1).reduce((a, b) => a * b, 1);
  const kernelOk = layer.inShape === undefined ||
    (baseShape.length === 4 && layer.inShape.every((d, n) => d === baseShape[n + 1]));
  if (layer.out !== baseShape[0] || layer.inFlat !== inFlat || !kernelOk) {
    const [[o1, i1], [o2, i2]] = layer.factorShapes;
    throw new LoraError(
      `${path}: layer '${layer.name}': Kronecker product ${o1}×${i1} ⊗ ${o2}×${i2} is ${layer.out}×${
        layer.inShape?.join("×") ?? layer.inFlat
      }, but the base weight is ${baseShape.join("×")}`,
    );
  }
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
