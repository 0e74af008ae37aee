/**
 * Merge specifications (`"a.safetensors:0.7,b.safetensors:-0.3"`, docs/design.md, "Weighted
 * merges") and the name of a merged LoRA (the original's naming of its outputs).
 *
 * A member is `path[:weight]`. It is split at its **last** `:` only when what
 * follows is empty or a Python `float()` number, so Windows paths
 * (`C:\loras\a.safetensors:0.5`) work; after a `.safetensors` name anything
 * else is a bad weight (`a.safetensors:abc`), not part of the name. An entry
 * with a comma, or a single member with a weight, is a merge; anything else
 * is a plain path. An entry that names an existing file is that file
 * ({@link loraEntryMembers}), whatever `,` or `:` it holds.
 *
 * @module
 */

import { parse as parsePath } from "node:path";
import { LoraError } from "../errors.ts";
import { parsePythonFloat, pyFormatFixed } from "../recipe/pyfloat.ts";

/** One member of a merge. */
export interface MergeMember {
  /** The member's file path. */
  readonly path: string;
  /** Its weight (1 when none was given). */
  readonly weight: number;
}

/**
 * The members of a merge spec, or `undefined` when `entry` is a plain path.
 * Throws a {@link LoraError} for an empty member path or a non-finite weight.
 *
 * @example
 * ```ts
 * import { parseMergeSpec } from "./merge_spec.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(parseMergeSpec("a.safetensors:0.7,b.safetensors"), [
 *   { path: "a.safetensors", weight: 0.7 },
 *   { path: "b.safetensors", weight: 1 },
 * ]);
 * assert.deepEqual(parseMergeSpec("C:\\x\\a.safetensors:-0.5"), [{ path: "C:\\x\\a.safetensors", weight: -0.5 }]);
 * assert.deepEqual(parseMergeSpec("C:\\x\\a.safetensors"), undefined);
 * ```
 */
export function parseMergeSpec(entry: string): MergeMember[] | undefined {
  const isMerge = entry.includes(",");
  const texts = entry.split(",");
  const members: MergeMember[] = [];
  let weighted = false;
  texts.forEach((text, i) => {
    const split = splitMember(text);
    weighted ||= split.weight !== undefined;
    const where = `merge spec '${entry}': member ${i + 1}`;
    if (split.badWeight !== undefined) {
      throw new LoraError(
        `${where} ('${text}') has a weight '${split.badWeight}' that is not a number (a file whose name holds ',' or ':' is named by its existing path)`,
        { key: entry },
      );
    }
    if (split.path === "") throw new LoraError(`${where} has an empty path`, { key: entry });
    if (split.weight !== undefined && !Number.isFinite(split.weight)) {
      throw new LoraError(`${where} ('${text}') has a weight that is not a finite number`, {
        key: entry,
      });
    }
    members.push({ path: split.path, weight: split.weight ?? 1 });
  });
  return isMerge || weighted ? members : undefined;
}

/**
 * The members of a LoRA entry, or `undefined` when it is one file: an entry
 * that names an existing file (or symlink, folder, …) is that path even when
 * it holds `,` or `:`, so a file named `a,b.safetensors` (or a glob matching
 * it) is never read as a merge. Otherwise as {@link parseMergeSpec}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loraEntryMembers } from "./merge_spec.ts";
 * const dir = await Deno.makeTempDir();
 * const odd = `${dir}/a,b.safetensors:0.5`;
 * await Deno.writeTextFile(odd, "");
 * assert.equal(loraEntryMembers(odd), undefined);
 * assert.equal(loraEntryMembers(`${dir}/x.safetensors:0.5`)?.[0].weight, 0.5);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function loraEntryMembers(entry: string): MergeMember[] | undefined {
  try {
    Deno.statSync(entry);
    return undefined;
  } catch { /* no such path: merge syntax applies */ }
  return parseMergeSpec(entry);
}

/** `.safetensors` at the end of a member's path: what follows its last `:` must be a weight. */
const SAFETENSORS_NAME = /\.safetensors$/i;

function splitMember(text: string): { path: string; weight?: number; badWeight?: string } {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return { path: text };
  const tail = text.slice(colon + 1);
  const weight = tail === "" ? 1 : parsePythonFloat(tail);
  if (weight !== undefined) return { path: text.slice(0, colon), weight };
  const head = text.slice(0, colon);
  return SAFETENSORS_NAME.test(head) && !/[\\/]/.test(tail)
    ? { path: head, badWeight: tail }
    : { path: text };
}

/**
 * The merged LoRA's name, as the original builds it: each member's file stem
 * up to its first `-`, `_` or space; members grouped by that token (in order
 * of first appearance); a group is written `token(w1+w2…)` with `%.2f`
 * weights when any of its weights differs from 1 by more than 1e-6, else
 * `token`; groups joined with `+`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mergedName } from "./merge_spec.ts";
 * const weighted = mergedName([
 *   { path: "style_lora.safetensors", weight: 0.6 },
 *   { path: "char_lora.safetensors", weight: 0.4 },
 * ]);
 * assert.equal(weighted, "style(0.60)+char(0.40)");
 * const plain = mergedName([
 *   { path: "char_a.safetensors", weight: 1 },
 *   { path: "char_b.safetensors", weight: 1 },
 * ]);
 * assert.equal(plain, "char");
 * ```
 */
export function mergedName(members: readonly MergeMember[]): string {
  const groups = new Map<string, number[]>();
  for (const { path, weight } of members) {
    const token = parsePath(path).name.split(/[-_ ]/)[0];
    const weights = groups.get(token);
    if (weights) weights.push(weight);
    else groups.set(token, [weight]);
  }
  return [...groups].map(([token, weights]) =>
    weights.some((w) => Math.abs(w - 1) > 1e-6)
      ? `${token}(${weights.map((w) => pyFormatFixed(w, 2)).join("+")})`
      : token
  ).join("+");
}
