/**
 * The sd-webui-additional-networks hashes kohya tools store in metadata
 * (`sshs_model_hash`, `sshs_legacy_hash`), as kohya's `train_util` computes them.
 *
 * Both are defined on the serialisation of the same tensors with only the
 * `ss_*` metadata keys; they are computed here without building that buffer.
 *
 * @module
 */

import { encodeHeader, layoutTensors, type TensorInfo } from "./header.ts";
import type { TensorSource } from "./writer.ts";

/** The two hashes, as kohya writes them. */
export interface SshsHashes {
  /** Hex SHA-256 of the data section (all tensor bytes in layout order). */
  readonly sshs_model_hash: string;
  /** First 8 hex digits of SHA-256 of bytes [0x100000, 0x110000) of the file. */
  readonly sshs_legacy_hash: string;
}

/**
 * Metadata values of the final lengths of the hashes, for measuring a file
 * before its hashes are known.
 *
 * @example
 * ```ts
 * import { SSHS_PLACEHOLDERS } from "./hashes.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(SSHS_PLACEHOLDERS.sshs_legacy_hash, "00000000");
 * ```
 */
export const SSHS_PLACEHOLDERS: SshsHashes = {
  sshs_model_hash: "0".repeat(64),
  sshs_legacy_hash: "0".repeat(8),
};

const LEGACY_START = 0x100000;
const LEGACY_END = 0x110000;
/** Bytes gathered before an update of the model hash. */
const STAGING = 1 << 20;

type NodeCrypto = typeof import("node:crypto");
let nodeCrypto: Promise<NodeCrypto> | undefined;

/**
 * Loads the incremental SHA-256 these hashes use (node:crypto). It is imported
 * on first use, not at start-up, where it would cost ~40 ms that runs which
 * write nothing never need; a caller with idle time (waiting for workers) can
 * load it then.
 *
 * @example
 * ```ts
 * import { loadHashing } from "./hashes.ts";
 * await loadHashing();
 * ```
 */
export function loadHashing(): Promise<void> {
  nodeCrypto ??= import("node:crypto");
  return nodeCrypto.then(() => {});
}

/**
 * The sshs hashes of a file, fed its data section in order (any pieces).
 *
 * @example
 * ```ts
 * import { layoutTensors } from "./header.ts";
 * import assert from "node:assert/strict";
 * import { SshsHasher } from "./hashes.ts";
 * const layout = layoutTensors([{ name: "x", dtype: "U8", shape: [2] }]);
 * const hasher = await SshsHasher.create(layout, {});
 * hasher.update(new Uint8Array([7, 8]));
 * assert.deepEqual(hasher.digest().sshs_model_hash.length, 64);
 * ```
 */
export class SshsHasher {
  readonly #model: ReturnType<NodeCrypto["createHash"]>;
  readonly #legacy: ReturnType<NodeCrypto["createHash"]>;
  /** Where the data section starts in the `ss_`-only serialisation. */
  readonly #dataStart: number;
  #at = 0;

  private constructor(crypto: NodeCrypto, header: Uint8Array) {
    this.#model = crypto.createHash("sha256");
    this.#legacy = crypto.createHash("sha256");
    this.#dataStart = header.byteLength;
    this.#take(header, 0);
  }

  /** A hasher for tensors laid out as `layout`, in a file with `metadata`. */
  static async create(
    layout: readonly TensorInfo[],
    metadata: Readonly<Record<string, string>>,
  ): Promise<SshsHasher> {
    const crypto = await (nodeCrypto ??= import("node:crypto"));
    const ssOnly = Object.fromEntries(
      Object.entries(metadata).filter(([k]) => k.startsWith("ss_")),
    );
    return new SshsHasher(crypto, encodeHeader(layout, ssOnly));
  }

  /** The next bytes of the data section. */
  update(bytes: Uint8Array): void {
    this.#model.update(bytes);
    this.#take(bytes, this.#dataStart + this.#at);
    this.#at += bytes.byteLength;
  }

  /** Both hashes (call once, after the whole data section). */
  digest(): SshsHashes {
    return {
      sshs_model_hash: this.#model.digest("hex"),
      sshs_legacy_hash: this.#legacy.digest("hex").slice(0, 8),
    };
  }

  /** Feeds the legacy hash what of `bytes` (at file offset `at`) lies in its window. */
  #take(bytes: Uint8Array, at: number): void {
    const from = Math.max(LEGACY_START, at);
    const to = Math.min(LEGACY_END, at + bytes.byteLength);
    if (from < to) this.#legacy.update(bytes.subarray(from - at, to - at));
  }
}

/**
 * Computes `sshs_model_hash` and `sshs_legacy_hash` for tensors whose bytes
 * are given directly (not as callbacks). {@link writeSafetensors} computes
 * them while writing when asked (`sshsHashes: true`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sshsHashes } from "./hashes.ts";
 * const h = await sshsHashes(
 *   [{ name: "x", dtype: "U8", shape: [1], data: new Uint8Array([7]) }],
 *   {},
 * );
 * assert.equal(h.sshs_model_hash.length, 64);
 * assert.equal(h.sshs_legacy_hash, "e3b0c442");
 * ```
 */
export async function sshsHashes(
  tensors: readonly TensorSource[],
  metadata: Readonly<Record<string, string>>,
): Promise<SshsHashes> {
  const layout = layoutTensors(tensors);
  const hasher = await SshsHasher.create(layout, metadata);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  // Small tensors (alphas, narrow factors) are gathered into a staging buffer
  // first: each update call has a fixed cost that thousands of tiny tensors
  // would otherwise pay.
  const staging = new Uint8Array(STAGING);
  let staged = 0;
  const flush = () => {
    if (staged > 0) hasher.update(staging.subarray(0, staged));
    staged = 0;
  };
  for (const t of layout) {
    const data = byName.get(t.name)!.data;
    if (typeof data === "function") {
      throw new TypeError(`sshsHashes needs the bytes of tensor '${t.name}', not a callback`);
    }
    if (data.byteLength >= STAGING / 4) {
      flush();
      hasher.update(data);
    } else {
      if (data.byteLength > STAGING - staged) flush();
      staging.set(data, staged);
      staged += data.byteLength;
    }
  }
  flush();
  return hasher.digest();
}
