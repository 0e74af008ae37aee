/**
 * Base-weight norms of one run, from one place: what this run computed, else the norms cache,
 * else the backend (which then fills both).
 *
 * @module
 */

import { OutputError } from "../errors.ts";
import { checkFiniteBaseNorms } from "../finite_checks.ts";
import type { Backend, BaseNorms } from "../linalg/backend.ts";
import type { LogFn } from "../log.ts";
import type { PairedLayer } from "../lora/pairing.ts";
import { type NormsCache, normsKey } from "../norms_cache.ts";
import type { BaseCheckpoint, BaseEntry } from "../base/checkpoint.ts";
import type { ProgressFn } from "./options.ts";

/** Base weights per norms batch (bytes at 2 per element) when a cache is written. */
const NORMS_BATCH_BYTES = 1 << 30;
/** … and at most this many weights. */
const NORMS_BATCH_ITEMS = 128;

/** Which norms to fetch. */
export interface NormsWanted {
  /** Frobenius norms. */
  readonly frobenius: boolean;
  /** Spectral norms. */
  readonly spectral: boolean;
}

/** Where a {@link NormsStore} finds and computes norms. */
export interface NormsStoreSources {
  /** The base checkpoint (weights to read). */
  readonly checkpoint: BaseCheckpoint;
  /** The persistent cache, unless disabled. */
  readonly cache: NormsCache | undefined;
  /** Computes what neither memory nor the cache holds. */
  readonly backend: Backend;
  /** DEBUG lines for each weight loaded. */
  readonly log: LogFn;
  /** `Norms` progress. */
  readonly onProgress: ProgressFn;
}

/** The norms of the base weights a run has met: memory, then cache, then backend. */
export class NormsStore {
  readonly #computed = new Map<string, BaseNorms>();
  readonly #sources: NormsStoreSources;

  constructor(sources: NormsStoreSources) {
    this.#sources = sources;
  }

  /** What is known of a base entry's norms (computed in this run, else cached). */
  get(entry: Pick<BaseEntry, "key" | "chunk">): Readonly<BaseNorms> | undefined {
    const key = normsKey(entry);
    return this.#computed.get(key) ?? this.#sources.cache?.get(key);
  }

  /**
   * The norms of each layer's base weight, computing `wanted` ones not known yet (each base
   * weight once, in batches written to the cache as they complete).
   */
  async fetch(layers: readonly PairedLayer[], wanted: NormsWanted): Promise<BaseNorms[]> {
    const missing = new Map<string, { entry: BaseEntry; layer: string }>();
    for (const { base, layer } of layers) {
      // A store exists only in a run with a base, where every resized layer has its weight.
      if (!base) throw new Error(`layer ${layer.name} has no base weight`); // cannot happen
      const key = normsKey(base);
      const known = this.get(base);
      const lacks = (wanted.frobenius && known?.frobenius === undefined) ||
        (wanted.spectral && known?.spectral === undefined);
      if (lacks && !missing.has(key)) missing.set(key, { entry: base, layer: layer.name });
    }
    const todo = [...missing.values()];
    let start = 0;
    for (const batch of this.#batches(todo)) {
      await this.#compute(batch, wanted, (done) => start + done, todo.length);
      start += batch.length;
    }
    return layers.map((p) => this.get(p.base!) ?? {});
  }

  /**
   * With a cache, batches of about a GB of weights, written as they complete, so that an
   * interrupted run keeps what it computed; without, one batch keeps the workers busiest.
   */
  #batches<T extends { entry: BaseEntry }>(todo: readonly T[]): T[][] {
    const batches: T[][] = [];
    let bytes = 0;
    for (const item of todo) {
      const last = batches.at(-1);
      const full = this.#sources.cache !== undefined &&
        (bytes >= NORMS_BATCH_BYTES || (last?.length ?? 0) >= NORMS_BATCH_ITEMS);
      if (!last || full) {
        batches.push([item]);
        bytes = 0;
      } else last.push(item);
      bytes += item.entry.rows * item.entry.cols * 2;
    }
    return batches;
  }

  async #compute(
    batch: readonly { entry: BaseEntry; layer: string }[],
    wanted: NormsWanted,
    done: (inBatch: number) => number,
    total: number,
  ): Promise<void> {
    const { checkpoint, cache, backend, log, onProgress } = this.#sources;
    for (const { entry, layer } of batch) {
      log("DEBUG", `Loading base weight ${entry.label} for ${layer}`);
    }
    const norms = await backend.baseNorms(
      batch.map(({ entry }) => checkpoint.weightRef(entry)),
      wanted,
      { onProgress: (d, _t) => onProgress("Norms", done(d), total) },
    );
    checkFiniteBaseNorms(checkpoint.path, batch.map(({ entry }) => entry.key), norms);
    const update: Record<string, BaseNorms> = {};
    batch.forEach(({ entry }, i) => {
      this.#computed.set(normsKey(entry), { ...this.get(entry), ...norms[i] });
      update[normsKey(entry)] = norms[i];
    });
    // A cache that cannot be written is a warning (once): the run goes on without it.
    await cache?.update(update).catch((e) => {
      if (!(e instanceof OutputError)) throw e;
      log("WARNING", `${e.message}; going on without caching norms`);
    });
  }
}
