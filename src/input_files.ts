/**
 * Inputs are regular files (or symlinks to them), checked by `stat` before
 * they are opened: opening a FIFO blocks until a writer comes, and a folder
 * or a device is no safetensors file. Every input gets the same one-line
 * message form, `<path>: cannot open (<why>)`.
 *
 * @module
 */

import { SafetensorsError } from "./errors.ts";

/**
 * A short description of an OS error for one-line messages.
 *
 * @example
 * ```ts
 * import { describeOsError } from "./input_files.ts";
 * if (describeOsError(new Deno.errors.NotFound("x")) !== "no such file") throw new Error();
 * ```
 */
export function describeOsError(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.IsADirectory) return "is a directory";
  if (e instanceof Deno.errors.NotADirectory) return "a path component is not a directory";
  return e instanceof Error ? e.message : String(e);
}

/** What a path is when it is not a regular file, for messages. */
function kindOf(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a FIFO";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice || info.isBlockDevice) return "a device";
  return "not a regular file";
}

/**
 * Checks that `path` is a regular file or a symlink to one, without opening
 * it, and returns its `stat`. Throws a one-line {@link SafetensorsError}
 * naming the path otherwise.
 *
 * @example
 * ```ts
 * import { checkInputFile } from "./input_files.ts";
 * import { SafetensorsError } from "./errors.ts";
 * const dir = await Deno.makeTempDir();
 * try {
 *   await checkInputFile(dir);
 *   throw new Error("a directory was accepted");
 * } catch (e) {
 *   if (!(e instanceof SafetensorsError) || !e.message.endsWith("(a directory)")) throw e;
 * } finally {
 *   await Deno.remove(dir);
 * }
 * ```
 */
export async function checkInputFile(path: string): Promise<Deno.FileInfo> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw cannotStat(path, e);
  }
  return regularFile(path, info);
}

/** The synchronous twin of {@link checkInputFile}, for readers that open files synchronously. */
export function checkInputFileSync(path: string): Deno.FileInfo {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    throw cannotStat(path, e);
  }
  return regularFile(path, info);
}

function cannotStat(path: string, e: unknown): SafetensorsError {
  return new SafetensorsError(`${path}: cannot open (${describeOsError(e)})`, {
    file: path,
    cause: e,
  });
}

/** `info` when it describes a regular file; otherwise the one-line error naming what it is. */
function regularFile(path: string, info: Deno.FileInfo): Deno.FileInfo {
  if (!info.isFile) {
    throw new SafetensorsError(`${path}: cannot open (${kindOf(info)})`, { file: path });
  }
  return info;
}
