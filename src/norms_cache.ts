/**
 * Persistent cache of base-model norms (docs/design.md, "Base norms: exact, deterministic and
 * cached").
 *
 * One JSON file per checkpoint, named by a content fingerprint of the file
 * (size + header bytes + a hash of sampled data blocks; for a diffusers
 * folder, of each of its files), so a checkpoint
 * replaced at the same path is never served stale norms, and a copy at a new
 * path reuses them. Entries are keyed by base tensor key (plus `#chunk` for a
 * row block). Every update is written atomically (temp file + rename) and
 * merged with what is on disk, so an interrupted run keeps what it computed.
 *
 * A cache never breaks a run. Values that are not finite norms ≥ 0 are
 * ignored (and recomputed); a damaged file of ours is reported in
 * {@link NormsCache.warnings} and rewritten on the next update; a `.json`
 * location holding something else is never overwritten; a cache that cannot
 * be written fails its first {@link NormsCache.update} and is kept in memory
 * only from then on.
 *
 * @module
 */

import { dirname, join, relative } from "node:path";
import { diffusersFiles, isFolder } from "./base/diffusers_folder.ts";
import { checkInputFile, describeOsError } from "./input_files.ts";
import { oneLine } from "./one_line.ts";
import { releaseTemp, removeOrphanTempFiles, tempPathFor } from "./temp_files.ts";
import { OutputError } from "./errors.ts";
import type { BaseNorms } from "./linalg/backend.ts";
import type { BaseEntry } from "./base/checkpoint.ts";

/** Number of data blocks hashed into a fingerprint, and their size. */
const SAMPLE_BLOCKS = 64;
const SAMPLE_BYTES = 64 * 1024;
const FORMAT = "resize-lora-norms/1";

/**
 * Content fingerprint of a checkpoint: SHA-256 over its size, its first
 * bytes (the header, up to 1 MiB … it is read whole when smaller) and
 * {@link SAMPLE_BLOCKS} evenly spaced data blocks. Reads ~5 MB whatever the
 * file size.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticBase } from "@x/resize-lora/testing";
 * const base = `${await Deno.makeTempDir()}/base.safetensors`;
 * await writeSyntheticBase(base, { scale: 1 / 64 });
 * import { fingerprintFile } from "./norms_cache.ts";
 * const fingerprint = await fingerprintFile(base);
 * assert.match(fingerprint, /^[0-9a-f]{64}$/);
 * assert.equal(await fingerprintFile(base), fingerprint); // the content decides, not the time
 * ```
 */
export async function fingerprintFile(path: string): Promise<string> {
  await checkInputFile(path);
  const file = await Deno.open(path, { read: true });
  try {
    const { size } = await file.stat();
    // The bytes hashed, gathered first: WebCrypto digests in one call (and, unlike node:crypto,
    // costs nothing to load at start-up).
    const parts: Uint8Array[] = [new TextEncoder().encode(`${FORMAT}\0${size}\0`)];
    const read = async (offset: number, length: number) => {
      const buf = new Uint8Array(Math.max(0, Math.min(length, size - offset)));
      await file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < buf.length) {
        const n = await file.read(buf.subarray(done));
        if (n === null) break;
        done += n;
      }
      parts.push(buf.subarray(0, done));
    };
    // The header (length prefix + JSON) names, shapes and places every tensor.
    const prefix = new Uint8Array(8);
    await file.read(prefix);
    const headerLength = size >= 8 ? Number(new DataView(prefix.buffer).getBigUint64(0, true)) : 0;
    await read(0, Math.min(size, 8 + Math.min(headerLength, 100_000_000)));
    const dataStart = Math.min(size, 8 + headerLength);
    const span = size - dataStart;
    if (span <= SAMPLE_BLOCKS * SAMPLE_BYTES) {
      await read(dataStart, span);
    } else {
      const stride = Math.floor((span - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1));
      for (let i = 0; i < SAMPLE_BLOCKS; i++) {
        await read(dataStart + i * stride, SAMPLE_BYTES);
      }
    }
    const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    parts.reduce((at, p) => (all.set(p, at), at + p.byteLength), 0);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  } finally {
    file.close();
  }
}

/**
 * Content fingerprint of a diffusers model folder: SHA-256 over the path
 * (relative to the folder) and {@link fingerprintFile} of each safetensors
 * file the base is read from, so the folder's name and place do not matter
 * and a changed file changes it. Also the files' total size.
 *
 * @example
 * ```ts ignore
 * import { fingerprintFolder } from "./norms_cache.ts";
 * const { fingerprint, size } = await fingerprintFolder("stable-diffusion-xl-base-1.0");
 * ```
 */
export async function fingerprintFolder(
  folder: string,
): Promise<{ fingerprint: string; size: number }> {
  const lines = [`${FORMAT}\0folder`];
  let size = 0;
  for (const { path } of await diffusersFiles(folder)) {
    size += (await Deno.stat(path)).size;
    lines.push(`${relative(folder, path).replaceAll("\\", "/")}\0${await fingerprintFile(path)}`);
  }
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(lines.join("\n")));
  const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return { fingerprint: hex, size };
}

/**
 * The default cache folder: `$XDG_CACHE_HOME/resize-lora`, else
 * `~/.cache/resize-lora` (`%LOCALAPPDATA%\resize-lora` on Windows).
 *
 * @example
 * ```ts
 * import { defaultCacheDir } from "./norms_cache.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(defaultCacheDir().endsWith("resize-lora"), true);
 * ```
 */
export function defaultCacheDir(): string {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined; // no --allow-env: fall through
    }
  };
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "resize-lora");
  const local = env("LOCALAPPDATA");
  if (Deno.build.os === "windows" && local) return join(local, "resize-lora");
  return join(env("HOME") ?? env("USERPROFILE") ?? ".", ".cache", "resize-lora");
}

/** Options of {@link NormsCache.open}. */
export interface NormsCacheOptions {
  /**
   * Cache location: a folder (one file per checkpoint fingerprint inside),
   * or a path ending in `.json` used as the file itself. Default:
   * {@link defaultCacheDir}.
   */
  readonly location?: string;
  /** A fingerprint computed already (skips reading the checkpoint). */
  readonly fingerprint?: string;
}

interface CacheFile {
  format: string;
  fingerprint: string;
  checkpoint: { path: string; size: number };
  norms: Record<string, BaseNorms>;
}

/**
 * Norms of one checkpoint's base weights, persisted across runs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticBase } from "@x/resize-lora/testing";
 * const base = `${await Deno.makeTempDir()}/base.safetensors`;
 * await writeSyntheticBase(base, { scale: 1 / 64 });
 * import { NormsCache } from "./norms_cache.ts";
 * const location = `${base}.norms.json`;
 * const cache = await NormsCache.open(base, { location });
 * assert.equal(cache.get("model.diffusion_model.out.2.weight"), undefined);
 * await cache.update({ "model.diffusion_model.out.2.weight": { frobenius: 3.5 } });
 * const reopened = await NormsCache.open(base, { location });
 * assert.ok(reopened.loaded);
 * assert.equal(reopened.get("model.diffusion_model.out.2.weight")?.frobenius, 3.5);
 * ```
 */
export class NormsCache {
  /** The cache file. */
  readonly file: string;
  /** The checkpoint's content fingerprint. */
  readonly fingerprint: string;
  /** Whether a cache file existed and matched the checkpoint. */
  readonly loaded: boolean;
  /** What was wrong with the file found (damaged, not a norms cache, …), one line each. */
  readonly warnings: readonly string[];
  #checkpoint: { path: string; size: number };
  #norms: Map<string, BaseNorms>;
  /** Why updates stay in memory (a file that is not ours, a failed write), once set. */
  #readOnly: string | undefined;
  /** Whether the user named the file (a `.json` location), rather than the folder. */
  #named: boolean;

  private constructor(
    file: string,
    fingerprint: string,
    checkpoint: { path: string; size: number },
    stored: StoredCache,
    named: boolean,
  ) {
    this.file = file;
    this.#named = named;
    this.fingerprint = fingerprint;
    this.#checkpoint = checkpoint;
    const valid = stored.kind === "cache" && stored.fingerprint === fingerprint;
    this.#norms = valid ? stored.norms : new Map();
    this.loaded = valid;
    this.warnings = stored.kind === "cache" && stored.dropped > 0
      ? [
        `${file}: ignored ${stored.dropped} invalid norms (${stored.example}); they are recomputed`,
      ]
      : stored.kind === "damaged"
      ? [`${file}: damaged norms cache (${stored.why}); recomputing and rewriting it`]
      : stored.kind === "foreign"
      ? [
        `${file}: not a norms cache (${stored.why}); it is left unchanged and norms are not cached`,
      ]
      : [];
    if (stored.kind === "foreign") this.#readOnly = "not a norms cache";
  }

  /**
   * Opens (or starts) the cache of a checkpoint. A cache file whose
   * fingerprint does not match the checkpoint is ignored (and replaced on the
   * next update).
   */
  static async open(checkpoint: string, options: NormsCacheOptions = {}): Promise<NormsCache> {
    const folder = await isFolder(checkpoint) ? await fingerprintFolder(checkpoint) : undefined;
    const fingerprint = options.fingerprint ?? folder?.fingerprint ??
      await fingerprintFile(checkpoint);
    const location = options.location ?? defaultCacheDir();
    const file = location.endsWith(".json")
      ? location
      : join(location, `${fingerprint.slice(0, 32)}.json`);
    const named = location.endsWith(".json");
    const stored = await readCacheFile(file, { named });
    const size = folder?.size ?? (await Deno.stat(checkpoint)).size;
    return new NormsCache(file, fingerprint, { path: checkpoint, size }, stored, named);
  }

  /** Cached norms of a base entry key (`key` or `key#chunk`). */
  get(key: string): Readonly<BaseNorms> | undefined {
    return this.#norms.get(key);
  }

  /** Number of entries. */
  get size(): number {
    return this.#norms.size;
  }

  /**
   * Adds norms and writes the file atomically, merged with whatever another
   * process wrote meanwhile.
   */
  async update(entries: Readonly<Record<string, BaseNorms>>): Promise<void> {
    for (const [k, v] of Object.entries(entries)) {
      this.#norms.set(k, { ...this.#norms.get(k), ...v });
    }
    if (this.#readOnly !== undefined) return;
    const onDisk = await readCacheFile(this.file, { named: this.#named });
    if (onDisk.kind === "foreign") {
      this.#readOnly = "not a norms cache";
      throw new OutputError(`${this.file}: not a norms cache (${onDisk.why}); not overwritten`, {
        file: this.file,
      });
    }
    const merged: Record<string, BaseNorms> = {};
    if (onDisk.kind === "cache" && onDisk.fingerprint === this.fingerprint) {
      Object.assign(merged, Object.fromEntries(onDisk.norms));
    }
    for (const [k, v] of [...this.#norms].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
      merged[k] = { ...merged[k], ...v };
    }
    const body: CacheFile = {
      format: FORMAT,
      fingerprint: this.fingerprint,
      checkpoint: this.#checkpoint,
      norms: merged,
    };
    let tmp: string | undefined;
    try {
      await Deno.mkdir(dirname(this.file), { recursive: true });
      await removeOrphanTempFiles(dirname(this.file));
      tmp = tempPathFor(this.file);
      await Deno.writeTextFile(tmp, JSON.stringify(body) + "\n", { createNew: true });
      await Deno.rename(tmp, this.file);
      releaseTemp(tmp);
    } catch (e) {
      if (tmp !== undefined) {
        await Deno.remove(tmp).catch(() => {});
        releaseTemp(tmp);
      }
      this.#readOnly = "cannot be written";
      throw new OutputError(`${this.file}: cannot write the norms cache (${describeOsError(e)})`, {
        file: this.file,
        cause: e,
      });
    }
  }
}

/** What a cache location holds. */
type StoredCache =
  | { readonly kind: "missing" }
  | {
    readonly kind: "cache";
    readonly fingerprint: unknown;
    readonly norms: Map<string, BaseNorms>;
    /** Values ignored as invalid, and one of them for the message. */
    readonly dropped: number;
    readonly example: string;
  }
  | { readonly kind: "damaged"; readonly why: string }
  | { readonly kind: "foreign"; readonly why: string };

/** A norm as stored: a finite number ≥ 0, else `undefined`. */
function validNorm(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : undefined;
}

/** The valid norms of a parsed `norms` object, and how many values were not. */
function validNorms(stored: Record<string, unknown>) {
  const norms = new Map<string, BaseNorms>();
  let dropped = 0, example = "";
  const drop = (what: string) => {
    if (dropped++ === 0) example = oneLine(what);
  };
  for (const [key, value] of Object.entries(stored)) {
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      drop(`key '${key}': ${JSON.stringify(value)}`);
      continue;
    }
    const entry: { frobenius?: number; spectral?: number } = {};
    for (const field of ["frobenius", "spectral"] as const) {
      const v = (value as Record<string, unknown>)[field];
      if (v === undefined) continue;
      const norm = validNorm(v);
      if (norm === undefined) drop(`key '${key}': ${field} ${JSON.stringify(v)}`);
      else entry[field] = norm;
    }
    if (entry.frobenius !== undefined || entry.spectral !== undefined) norms.set(key, entry);
  }
  return { norms, dropped, example };
}

/**
 * Reads a cache location. `named`: the user named this file (a `.json`
 * location), so a file that is not a norms cache is someone else's; a file in
 * the cache folder is ours by its name, so it is merely damaged.
 */
async function readCacheFile(file: string, { named }: { named: boolean }): Promise<StoredCache> {
  let text: string;
  try {
    const info = await Deno.stat(file);
    if (!info.isFile) return { kind: "foreign", why: "not a regular file" };
    text = await Deno.readTextFile(file);
  } catch (e) {
    // Nothing there (a file in place of a folder on the way included): the write will tell.
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return { kind: "missing" };
    }
    return { kind: named ? "foreign" : "damaged", why: describeOsError(e) };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { kind: named ? "foreign" : "damaged", why: "not JSON" };
  }
  const body = parsed as Partial<Record<keyof CacheFile, unknown>> | null;
  if (body === null || typeof body !== "object" || body.format !== FORMAT) {
    return { kind: named ? "foreign" : "damaged", why: `no "format": "${FORMAT}"` };
  }
  const { norms } = body;
  if (norms === null || typeof norms !== "object" || Array.isArray(norms)) {
    return { kind: "damaged", why: `"norms" is ${norms === null ? "null" : typeof norms}` };
  }
  return {
    kind: "cache",
    fingerprint: body.fingerprint,
    ...validNorms(norms as Record<string, unknown>),
  };
}

/**
 * The cache key of a base entry: its tensor key, plus `#index` for a row
 * block (TE2 q/k/v).
 *
 * @example
 * ```ts
 * import { normsKey } from "./norms_cache.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(normsKey({ key: "a.in_proj_weight", chunk: { index: 1, count: 3 } }), "a.in_proj_weight#1");
 * ```
 */
export function normsKey(entry: Pick<BaseEntry, "key" | "chunk">): string {
  return entry.chunk ? `${entry.key}#${entry.chunk.index}` : entry.key;
}
