/**
 * LoRA arguments with `*` / `?` that name no existing file are expanded by the
 * tool itself (Windows shells do not expand globs).
 *
 * @module
 */

import { dirname, join } from "node:path";
import { UsageError } from "./errors.ts";

function globToRegExp(pattern: string): RegExp {
  let re = "";
  for (const c of pattern) {
    if (c === "*") re += "[^/\\\\]*";
    else if (c === "?") re += "[^/\\\\]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/**
 * Expands one argument: returned as is unless it contains `*` or `?` in its
 * last path component and names no existing file; then the sorted matches of
 * that component in its folder (a match is a file path, even when it holds
 * `,` or `:`). No match is a {@link UsageError}, unless the argument may be a
 * merge spec (it holds `,` or `:`): it is then returned as is.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { expandGlob } from "./glob.ts";
 * const dir = await Deno.makeTempDir();
 * for (const name of ["b.safetensors", "a.safetensors", "notes.txt"]) {
 *   await Deno.writeTextFile(`${dir}/${name}`, "");
 * }
 * assert.deepEqual(await expandGlob(`${dir}/*.safetensors`), [
 *   `${dir}/a.safetensors`,
 *   `${dir}/b.safetensors`,
 * ]);
 * ```
 */
export async function expandGlob(arg: string): Promise<string[]> {
  const base = arg.split(/[\\/]/).pop() ?? "";
  if (!/[*?]/.test(base)) return [arg];
  try {
    await Deno.stat(arg);
    return [arg];
  } catch { /* not a file: a pattern */ }
  const folder = arg.length > base.length ? dirname(arg) : ".";
  const re = globToRegExp(base);
  const matches: string[] = [];
  try {
    for await (const e of Deno.readDir(folder)) {
      if (e.isFile && re.test(e.name)) {
        matches.push(arg.length > base.length ? join(folder, e.name) : e.name);
      }
    }
  } catch { /* missing folder: no match */ }
  // A merge spec may hold a pattern-like member; files matched win (a name may hold ',').
  if (matches.length === 0 && /[,:]/.test(arg)) return [arg];
  if (matches.length === 0) throw new UsageError(`no file matches ${arg}`, { file: arg });
  return matches.sort();
}
