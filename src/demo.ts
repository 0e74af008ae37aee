/**
 * `resize-lora demo`: writes a small synthetic SDXL-shaped base checkpoint and
 * a kohya LoRA for it, then resizes the LoRA with the default recipe — the
 * whole pipeline end to end, on any machine, in seconds.
 *
 * @module
 */

import { join } from "node:path";
import type { LogFn, LogLevel } from "./log.ts";
import { DEFAULT_RECIPES, type ProgressFn, resize, type ResizeResult } from "./resize.ts";
import { writeDemoFiles } from "./testing/mod.ts";

/** Options of {@link runDemo}. */
export interface DemoRunOptions {
  /**
   * Folder for the synthetic inputs and the output, kept (default: a new temporary folder,
   * removed when the demo ends).
   */
  readonly folder?: string;
  /** Log receiver. */
  readonly log?: LogFn;
  /** Lowest level shown (as for `resize`). */
  readonly logLevel?: LogLevel;
  /** Progress receiver. */
  readonly onProgress?: ProgressFn;
}

/** What the demo did. */
export interface DemoResult extends ResizeResult {
  /** One paragraph saying what was written and resized, and where the files are. */
  readonly description: string;
  /** The folder that holds the files; `undefined` when they went to a temporary one, removed. */
  readonly folder?: string;
}

/**
 * Runs the demo.
 *
 * @example
 * ```ts ignore
 * import assert from "node:assert/strict";
 * import { runDemo } from "./demo.ts";
 * const { description, outputs } = await runDemo(); // about 30 MB of files, a few seconds
 * assert.ok(description.startsWith("demo: wrote a synthetic SDXL-shaped base checkpoint"));
 * assert.ok(outputs[0].written);
 * ```
 */
export async function runDemo(options: DemoRunOptions = {}): Promise<DemoResult> {
  // Without a folder the files (~35 MB) go to a temporary one, removed at the end.
  const temporary = options.folder === undefined;
  const folder = options.folder ?? await Deno.makeTempDir({ prefix: "resize-lora-demo-" });
  try {
    const { base, lora } = await writeDemoFiles(folder);
    const result = await resize({
      checkpoint: base,
      loras: [lora],
      recipes: DEFAULT_RECIPES,
      outputFolder: join(folder, "out"),
      normsCache: join(folder, "norms_cache.json"),
      log: options.log,
      logLevel: options.logLevel,
      onProgress: options.onProgress,
    });
    const [baseSize, loraSize] = await Promise.all([Deno.stat(base), Deno.stat(lora)]);
    const description = [
      `demo: wrote a synthetic SDXL-shaped base checkpoint (${base}, ${mib(baseSize.size)})`,
      `and a kohya LoRA for it (${lora}, ${mib(loraSize.size)}),`,
      `then resized the LoRA with the default recipe ${DEFAULT_RECIPES}` +
      (temporary
        ? ` (in a temporary folder, removed again: -o DIR keeps the files):`
        : ` (the files stay in ${folder}):`),
    ].join("\n");
    return { ...result, description, folder: temporary ? undefined : folder };
  } finally {
    if (temporary) await Deno.remove(folder, { recursive: true }).catch(() => {});
  }
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
