/**
 * Logging without printing: library code reports through a {@link LogFn}
 * that the caller supplies (the CLI prints `LEVEL:root:message` lines on
 * stderr, like the original tool's Python logging).
 *
 * @module
 */

/**
 * Log levels, as Python's logging names them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import type { LogLevel } from "@x/resize-lora";
 * const shown: LogLevel[] = ["WARNING", "ERROR"]; // what the CLI shows without -v
 * assert.ok(!shown.includes("INFO"));
 * ```
 */
export type LogLevel = "DEBUG" | "INFO" | "WARNING" | "ERROR";

/**
 * Receives one log record.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type LogFn, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const lines: string[] = [];
 * const log: LogFn = (level, message) => lines.push(`${level}:root:${message}`);
 * await plan({ checkpoint: base, loras: [lora], log, device: "cpu", normsCache: false });
 * assert.ok(lines.includes(`INFO:root:Processing LoRA model: ${lora}`));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type LogFn = (level: LogLevel, message: string) => void;

/**
 * A LogFn that discards everything (the library default).
 *
 * @example
 * ```ts
 * import { silent } from "./log.ts";
 * silent("INFO", "nobody hears this");
 * ```
 */
export const silent: LogFn = () => {};

/**
 * A LogFn that collects records into an array (for tests).
 *
 * @example
 * ```ts
 * import { collectLogs } from "./log.ts";
 * import assert from "node:assert/strict";
 * const { log, records } = collectLogs();
 * log("WARNING", "careful");
 * assert.deepEqual(records, [["WARNING", "careful"]]);
 * ```
 */
export function collectLogs(): { log: LogFn; records: [LogLevel, string][] } {
  const records: [LogLevel, string][] = [];
  return { log: (level, message) => records.push([level, message]), records };
}
