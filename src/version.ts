/**
 * The package version (kept equal to `deno.json`'s by a test).
 *
 * @example
 * ```ts
 * import { VERSION } from "./version.ts";
 * console.log(`resize-lora ${VERSION}`);
 * ```
 */
export const VERSION = "0.1.0";
