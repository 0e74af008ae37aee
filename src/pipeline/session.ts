/**
 * The resources of one `resize()` or `plan()` call: the resolved options, the backend, and —
 * opened once, after the first LoRA's decomposition has started — the base checkpoint and its
 * norms, when the run has a base.
 *
 * @module
 */

import type { Backend } from "../linalg/backend.ts";
import { selectBackend } from "../linalg/select_backend.ts";
import { NormsCache } from "../norms_cache.ts";
import { checkRunPaths, type OutputPaths } from "../output_paths.ts";
import { BaseCheckpoint } from "../base/checkpoint.ts";
import { NormsStore } from "./norms_store.ts";
import type { ResolvedOptions } from "./options.ts";

/** What {@link Session.open} is asked for besides the options. */
export interface SessionOptions {
  /** Whether outputs will be written (not a dry run). */
  readonly writes: boolean;
}

/** Resources of one run; disposing of it closes the checkpoint and a backend it opened. */
export class Session implements AsyncDisposable {
  #base?: { readonly checkpoint: BaseCheckpoint; readonly norms: NormsStore };

  private constructor(
    /** The options, defaults filled in. */
    readonly options: ResolvedOptions,
    /** The backend that decomposes, computes norms and rebuilds. */
    readonly backend: Backend,
    readonly ownsBackend: boolean,
    /** Whether outputs are written (not a dry run). */
    readonly writes: boolean,
    /** The paths the run writes, claimed against its inputs and each other. */
    readonly paths: OutputPaths,
  ) {}

  /**
   * Starts a run: the paths it reads and writes are checked first, so that a run that cannot
   * write its outputs fails before any work; then the backend, so that its workers start up
   * while this thread reads.
   */
  static async open(options: ResolvedOptions, { writes }: SessionOptions): Promise<Session> {
    const paths = await checkRunPaths({ ...options, writes });
    const backend = options.backend ?? await selectBackend(options.device, { log: options.log });
    return new Session(options, backend, !options.backend, writes, paths);
  }

  /**
   * Opens the norms cache and the base checkpoint, once. Not at the start of the run: the first
   * LoRA's decomposition is under way by then.
   */
  async openBase(): Promise<void> {
    const { options } = this;
    if (this.#base || options.checkpoint === undefined) return;
    let cache: NormsCache | undefined;
    if (options.normsCache !== false) {
      cache = await NormsCache.open(options.checkpoint, { location: options.normsCache });
      if (cache.loaded) options.log("INFO", `Loading ${cache.file}`);
      for (const w of cache.warnings) options.log("WARNING", w);
    }
    const checkpoint = await BaseCheckpoint.open(options.checkpoint);
    const norms = new NormsStore({
      checkpoint,
      cache,
      backend: this.backend,
      log: options.log,
      onProgress: options.onProgress,
    });
    this.#base = { checkpoint, norms };
  }

  /** Whether the run has a base checkpoint (without one, layers pair by name alone). */
  get hasBase(): boolean {
    return this.options.checkpoint !== undefined;
  }

  /** The base checkpoint ({@link openBase} first). */
  get checkpoint(): BaseCheckpoint {
    return this.#opened().checkpoint;
  }

  /** The base norms ({@link openBase} first). */
  get norms(): NormsStore {
    return this.#opened().norms;
  }

  #opened() {
    if (!this.#base) throw new Error("the base checkpoint is not open yet"); // cannot happen
    return this.#base;
  }

  async [Symbol.asyncDispose]() {
    this.#base?.checkpoint.close();
    if (this.ownsBackend) await this.backend.close();
  }
}
