/**
 * The synchronous read loop the reader and the file-range readers share:
 * bounded reads (each blocks its thread for well under a millisecond, and
 * from the page cache they cost a fraction of async ones), and the one-line
 * error of a read that came up short.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";

/**
 * Largest single read. Deno copies an async read through a buffer of the
 * requested size, so one huge read runs at a fraction of memory speed while
 * chunks of a few MiB stay in cache.
 */
export const READ_CHUNK = 2 << 20;

/**
 * Fills `into` from the file's cursor; returns the bytes read (fewer only at
 * the end of the file).
 *
 * @example
 * ```ts ignore
 * file.seekSync(offset, Deno.SeekMode.Start);
 * const got = readSyncFully(file, into);
 * ```
 */
export function readSyncFully(file: Deno.FsFile, into: Uint8Array): number {
  let done = 0;
  while (done < into.byteLength) {
    const n = file.readSync(into.subarray(done, Math.min(into.byteLength, done + READ_CHUNK)));
    if (n === null) break;
    done += n;
  }
  return done;
}

/**
 * The error of a short read: `what` (e.g. `tensor 'x'`) of `path` ended
 * after `got` of `wanted` bytes.
 *
 * @example
 * ```ts ignore
 * if (got !== wanted) throw truncated(path, `tensor '${name}'`, got, wanted);
 * ```
 */
export function truncated(
  path: string,
  what: string,
  { got, wanted }: { got: number; wanted: number },
): SafetensorsError {
  return new SafetensorsError(
    `${path}: ${what} is truncated (read ${got} of ${wanted} bytes; file changed?)`,
    { file: path },
  );
}
