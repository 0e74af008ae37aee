/**
 * A base checkpoint indexed by LoRA layer name, under each of the names a LoRA may give a
 * weight: an SDXL or SD1.5 single-file (SGM/LDM) checkpoint, or a diffusers model folder.
 * Opening reads the headers only; a weight (or one q/k/v row block of CLIP-G's fused
 * projection) is read by offset when asked for.
 *
 * @module
 */

import { MappingError, SafetensorsError } from "../errors.ts";
import type { BaseWeightRef } from "../linalg/backend.ts";
import { type DType, isBaseDType } from "../safetensors/dtype.ts";
import { numel } from "../safetensors/header.ts";
import { type ReadOptions, SafetensorsFile } from "../safetensors/reader.ts";
import type { Architecture } from "../namings/unet_blocks.ts";
import { checkpointArchitecture, diffusersArchitecture } from "./architecture.ts";
import {
  type Component,
  diffusersBaseNames,
  diffusersFiles,
  isFolder,
} from "./diffusers_folder.ts";
import { type BaseKeyNames, loraNamesForBaseKey, type NameKind } from "./key_map.ts";

/** A base weight, or one row block of a split one, that LoRA layers can modify. */
export interface BaseEntry {
  /** Base tensor key (in a diffusers folder: `<component>/<key>`, e.g. `unet/conv_in.weight`). */
  readonly key: string;
  /** For a CLIP-G `in_proj_weight` block: its index (q = 0, k = 1, v = 2) and the block count. */
  readonly chunk?: { readonly index: number; readonly count: number };
  /** The base tensor's full shape. */
  readonly shape: readonly number[];
  /** Element type on disk. */
  readonly dtype: DType;
  /** Rows of the flattened weight (of the block, for a chunk). */
  readonly rows: number;
  /** Columns of the flattened weight (in′ = product of the trailing dims). */
  readonly cols: number;
  /** As the original prints the entry: the key, or Python tuple text `('key', 0, 3)`. */
  readonly label: string;
  /** The first LoRA name that maps to this entry, in registration order. */
  readonly firstAlias: string;
  /**
   * The standard kohya LoRA layer name of the entry (`lora_unet_…`, `lora_te1_…`, or the q/k/v
   * part name of a split weight); the first alias for a key without one. Logs quote it: the
   * first alias can be a short one (`up_3`) that means nothing to a user.
   */
  readonly kohyaName: string;
}

/** A LoRA layer name resolved against the checkpoint. */
export interface BaseMatch {
  /** The base entry. */
  readonly entry: BaseEntry;
  /** The family of the name that matched (the short aliases are lossy). */
  readonly kind: NameKind;
}

/**
 * An open base checkpoint with its LoRA-name → base-weight map.
 *
 * Names are registered key by key in the file's listing order; a later key
 * overwrites a (short) alias an earlier key registered, as in the original,
 * so `down_4` means the last `input_blocks.4.*` weight.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticBase } from "@x/resize-lora/testing";
 * const base = `${await Deno.makeTempDir()}/base.safetensors`;
 * await writeSyntheticBase(base, { scale: 1 / 64 });
 * import { BaseCheckpoint } from "./checkpoint.ts";
 * await using ckpt = await BaseCheckpoint.open(base);
 * const entry = ckpt.lookup("lora_te2_text_model_encoder_layers_5_self_attn_q_proj")!;
 * assert.equal(entry.chunk?.index, 0); // the q rows of CLIP-G's fused projection
 * assert.deepEqual([entry.rows, entry.cols], [20, 20]); // a third of its 60 rows
 * const w = await ckpt.readWeight(entry); // only those rows are read
 * assert.equal(w.length, 20 * 20);
 * ```
 */
export class BaseCheckpoint implements AsyncDisposable {
  /** Path the checkpoint was opened from (a file, or a diffusers folder). */
  readonly path: string;
  /** The underlying safetensors file (a diffusers folder's first UNet file). */
  readonly file: SafetensorsFile;
  /** Every safetensors file of the checkpoint. */
  readonly files: readonly SafetensorsFile[];
  /** The model the checkpoint is. */
  readonly architecture: Architecture;
  #byName: Map<string, BaseMatch>;
  #entries: BaseEntry[];
  #tensorOf: Map<string, Tensor>;

  private constructor(path: string, sources: readonly Source[], architecture: Architecture) {
    this.path = path;
    this.files = sources.map((s) => s.file);
    this.file = this.files[0];
    this.architecture = architecture;
    ({ byName: this.#byName, entries: this.#entries, tensorOf: this.#tensorOf } = indexCheckpoint(
      sources,
    ));
  }

  /**
   * Opens a checkpoint (headers only) and builds its name map: a single-file
   * checkpoint, or a diffusers model folder.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { writeSyntheticBase } from "@x/resize-lora/testing";
   * const base = `${await Deno.makeTempDir()}/base.safetensors`;
   * await writeSyntheticBase(base, { scale: 1 / 64 });
   * import { BaseCheckpoint } from "./checkpoint.ts";
   * const ckpt = await BaseCheckpoint.open(base);
   * assert.ok(ckpt.entries().length > 0);
   * ckpt.close();
   * ```
   */
  static async open(path: string): Promise<BaseCheckpoint> {
    if (await isFolder(path)) return await BaseCheckpoint.#openFolder(path);
    const file = await SafetensorsFile.open(path);
    try {
      const arch = checkpointArchitecture(file.tensors.map((t) => t.name));
      return new BaseCheckpoint(path, [{ file, prefix: "", names: loraNamesForBaseKey }], arch);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  static async #openFolder(path: string): Promise<BaseCheckpoint> {
    const parts = await diffusersFiles(path);
    const files: SafetensorsFile[] = [];
    try {
      for (const part of parts) files.push(await SafetensorsFile.open(part.path));
      const components = [...new Set(parts.map((p) => p.component))];
      const unetKeys = files.flatMap((f, i) =>
        parts[i].component === "unet" ? f.tensors.map((t) => t.name) : []
      );
      const arch = diffusersArchitecture(components, unetKeys);
      const sources = files.map((file, i): Source => {
        const component: Component = parts[i].component;
        return {
          file,
          prefix: component + "/",
          names: (key, shape) => diffusersBaseNames(component, key, shape, arch),
        };
      });
      return new BaseCheckpoint(path, sources, arch);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  /**
   * The base entry a LoRA layer name maps to, or `undefined`.
   *
   * @example
   * ```ts ignore
   * assert.equal(
   *   ckpt.lookup("lora_unet_input_blocks_4_1_proj_in")?.key,
   *   "model.diffusion_model.input_blocks.4.1.proj_in.weight",
   * );
   * ```
   */
  lookup(layerName: string): BaseEntry | undefined {
    return this.#byName.get(layerName)?.entry;
  }

  /**
   * Like {@link lookup}, also saying which name family matched.
   *
   * @example
   * ```ts ignore
   * const warnAboutAlias = ckpt.match("down_4")?.kind === "short"; // a lossy short alias
   * ```
   */
  match(layerName: string): BaseMatch | undefined {
    return this.#byName.get(layerName);
  }

  /**
   * Every entry some name maps to, sorted by label text (the original's log order).
   *
   * @example
   * ```ts ignore
   * const labels = ckpt.entries().map((e) => e.label); // in the original's log order
   * ```
   */
  entries(): BaseEntry[] {
    return [...this.#entries];
  }

  /**
   * Throws a {@link MappingError} when a chunk entry's rows do not split evenly.
   *
   * @example
   * ```ts ignore
   * ckpt.checkEntry(entry); // `… shape=(3841, 1280) is not divisible in 3 chunks`
   * ```
   */
  checkEntry(entry: BaseEntry): void {
    if (entry.chunk && entry.shape[0] % entry.chunk.count !== 0) {
      throw new MappingError(
        `${this.path}: ${entry.key} shape=${
          pythonTuple(entry.shape)
        } is not divisible in ${entry.chunk.count} chunks`,
        { file: this.path, tensor: entry.key },
      );
    }
  }

  /**
   * Where the (block of the) weight lies in the file, for backends that read it themselves.
   *
   * @example
   * ```ts ignore
   * const ref = ckpt.weightRef(entry); // { path, dtype: "F16", offset, rows, cols }
   * ```
   */
  weightRef(entry: BaseEntry): BaseWeightRef {
    const dtype = this.#floatDType(entry);
    const { file, tensor } = this.#tensorOf.get(entry.key)!;
    const { offset } = file.byteRange(tensor, this.#rows(entry));
    return { path: file.path, dtype, offset, rows: entry.rows, cols: entry.cols };
  }

  /**
   * Reads the (block of the) weight as `rows × cols` float32, row-major; a
   * chunk reads only its rows.
   *
   * @example
   * ```ts ignore
   * const w = await ckpt.readWeight(ckpt.lookup("lora_unet_out_2")!); // 4·320·3·3 values
   * ```
   */
  readWeight(entry: BaseEntry): Promise<Float32Array> {
    this.#floatDType(entry);
    const { file, tensor } = this.#tensorOf.get(entry.key)!;
    return file.readFloat32(tensor, this.#rows(entry));
  }

  #rows(entry: BaseEntry): ReadOptions {
    this.checkEntry(entry);
    if (!entry.chunk) return {};
    const start = entry.chunk.index * entry.rows;
    return { rows: [start, start + entry.rows] };
  }

  #floatDType(entry: BaseEntry) {
    if (!isBaseDType(entry.dtype)) {
      throw new SafetensorsError(
        `${this.path}: tensor '${entry.key}' has dtype ${entry.dtype}, expected a float type`,
        { file: this.path, tensor: entry.key },
      );
    }
    return entry.dtype;
  }

  /** Closes the files (idempotent). */
  close(): void {
    for (const file of this.files) file.close();
  }

  /** Closes the file when used with `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

/** One file of a checkpoint: its keys get `prefix` and LoRA names from `names`. */
interface Source {
  /** The open file. */
  readonly file: SafetensorsFile;
  /** Prefix of its entries' keys (a diffusers component's folder and `/`). */
  readonly prefix: string;
  /** The LoRA names of one of its tensors. */
  readonly names: (key: string, shape: readonly number[]) => BaseKeyNames | undefined;
}

interface Tensor {
  readonly file: SafetensorsFile;
  readonly tensor: string;
}

type Draft = Omit<BaseEntry, "firstAlias">;

function indexCheckpoint(sources: readonly Source[]) {
  // A Map keeps a key's first insertion position when its value is replaced,
  // exactly like the Python dict the original fills; that position decides
  // which name the "No LoRA layer found" log quotes for an entry.
  const names = new Map<string, { draft: Draft; kind: NameKind }>();
  const tensorOf = new Map<string, Tensor>();
  for (const { file, prefix, names: namesOf } of sources) {
    for (const t of file.tensors) {
      const mapped = namesOf(t.name, t.shape);
      if (!mapped) continue;
      const key = prefix + t.name;
      tensorOf.set(key, { file, tensor: t.name });
      register(names, mapped, {
        key,
        shape: t.shape,
        dtype: t.dtype,
        cols: numel(t.shape.slice(1)),
      });
    }
  }
  const entryOf = new Map<Draft, BaseEntry>();
  const byName = new Map<string, BaseMatch>();
  for (const [name, { draft, kind }] of names) {
    let entry = entryOf.get(draft);
    if (!entry) {
      entry = Object.freeze({ ...draft, firstAlias: name });
      entryOf.set(draft, entry);
    }
    byName.set(name, { entry, kind });
  }
  const entries = [...entryOf.values()].sort((a, b) => compareText(a.label, b.label));
  return { byName, entries, tensorOf };
}

function register(
  names: Map<string, { draft: Draft; kind: NameKind }>,
  mapped: BaseKeyNames,
  base: Pick<Draft, "key" | "shape" | "dtype" | "cols">,
): void {
  if (mapped.chunks) {
    const count = mapped.chunks.length;
    mapped.chunks.forEach((name, index) => {
      const draft: Draft = {
        ...base,
        chunk: { index, count },
        rows: Math.floor(base.shape[0] / count), // checkEntry() rejects uneven splits on use
        label: `(${pythonRepr(base.key)}, ${index}, ${count})`,
        kohyaName: name,
      };
      names.set(name, { draft, kind: "chunk" });
    });
    return;
  }
  const draft: Draft = {
    ...base,
    rows: base.shape[0],
    label: base.key,
    kohyaName: mapped.standard ?? mapped.all[0],
  };
  for (const name of mapped.all) {
    const kind = name === mapped.standard ? "standard" : name === mapped.short ? "short" : "direct";
    names.set(name, { draft, kind });
  }
}

/** Code-unit order (Python's str order for the BMP, which keys live in). */
function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * A shape as Python prints a tuple: `(1280, 1280)`, `(768,)`, `()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pythonTuple } from "./checkpoint.ts";
 * assert.equal(pythonTuple([5, 4, 3, 3]), "(5, 4, 3, 3)");
 * assert.equal(pythonTuple([7]), "(7,)");
 * ```
 */
export function pythonTuple(values: readonly number[]): string {
  return values.length === 1 ? `(${values[0]},)` : `(${values.join(", ")})`;
}

/**
 * A string as Python's `repr()` prints it: `'key'` (double quotes when the
 * text holds a single quote and no double quote; escapes for `\`, the quote
 * and control characters).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pythonRepr } from "./checkpoint.ts";
 * assert.equal(pythonRepr("a.weight"), "'a.weight'");
 * assert.equal(pythonRepr("it's"), `"it's"`);
 * ```
 */
export function pythonRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (ch === "\\" || ch === quote) out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += "\\x" + c.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + quote;
}
