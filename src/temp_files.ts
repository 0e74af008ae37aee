/**
 * Temporary files of atomic writes (a file is written under a temporary name
 * in its target's folder, then renamed over the target): their names, a
 * registry of those this process has open, and the cleaning of orphans.
 *
 * A temporary file is named `.<target name>.<pid>.<8 hex digits>.tmp`. The
 * CLI removes the registered ones when it is interrupted (SIGINT, SIGTERM);
 * SIGKILL leaves them, and a later write into the same folder removes every
 * such file whose process is gone (on Linux, no `/proc/<pid>`; elsewhere, or
 * without `/proc`, once it is a day old).
 *
 * @module
 */

import { basename, dirname, join } from "node:path";

const live = new Set<string>();

/** Age after which an orphan is removed when the owning process cannot be checked. */
const STALE_MS = 24 * 3600 * 1000;

const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * A fresh temporary path next to `path`, registered as live until
 * {@link releaseTemp}.
 *
 * @example
 * ```ts
 * import { liveTempFiles, releaseTemp, tempPathFor } from "./temp_files.ts";
 * const tmp = tempPathFor("out/a.safetensors");
 * if (!tmp.startsWith("out/.a.safetensors.") || !liveTempFiles().includes(tmp)) throw new Error(tmp);
 * releaseTemp(tmp);
 * ```
 */
export function tempPathFor(path: string): string {
  const tmp = join(
    dirname(path),
    `.${basename(path)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`,
  );
  live.add(tmp);
  return tmp;
}

/** Forgets a temporary path (renamed into place or removed). */
export function releaseTemp(tmp: string): void {
  live.delete(tmp);
}

/** The temporary paths this process may have on disk now. */
export function liveTempFiles(): string[] {
  return [...live];
}

/**
 * Removes every live temporary file, synchronously (for a signal handler
 * that exits next). Missing files are skipped.
 */
export function removeLiveTempFilesSync(): void {
  for (const tmp of live) {
    try {
      Deno.removeSync(tmp);
    } catch { /* never created, or renamed already */ }
    live.delete(tmp);
  }
}

function processGone(pid: number): boolean | undefined {
  if (pid === Deno.pid) return false;
  try {
    Deno.statSync("/proc/self");
  } catch {
    return undefined; // no /proc: cannot tell
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return false;
  } catch {
    return true;
  }
}

/**
 * Removes the temporary files a killed run left in `folder` (see the module
 * documentation for how they are recognised) and returns their paths. Files
 * of live processes, including this one's, are kept; errors are ignored.
 *
 * @example
 * ```ts
 * import { removeOrphanTempFiles } from "./temp_files.ts";
 * const dir = await Deno.makeTempDir();
 * const orphan = `${dir}/.a.safetensors.999999999.0123abcd.tmp`; // no such process
 * await Deno.writeTextFile(orphan, "partial");
 * const removed = await removeOrphanTempFiles(dir);
 * await Deno.remove(dir, { recursive: true });
 * if (removed.length !== 1 || removed[0] !== orphan) throw new Error(String(removed));
 * ```
 */
export async function removeOrphanTempFiles(folder: string): Promise<string[]> {
  const removed: string[] = [];
  try {
    for await (const entry of Deno.readDir(folder)) {
      const match = entry.isFile ? TEMP_NAME.exec(entry.name) : null;
      if (!match) continue;
      const path = join(folder, entry.name);
      try {
        let gone = processGone(Number(match[1]));
        if (gone === undefined) {
          const mtime = (await Deno.stat(path)).mtime?.getTime() ?? Date.now();
          gone = Date.now() - mtime > STALE_MS;
        }
        if (gone && !live.has(path)) {
          await Deno.remove(path);
          removed.push(path);
        }
      } catch { /* removed meanwhile, or not ours to remove */ }
    }
  } catch { /* a folder that cannot be listed has nothing we can clean */ }
  return removed;
}
