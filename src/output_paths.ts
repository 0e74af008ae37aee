/**
 * Every path a run writes, checked before any heavy work: no output may
 * replace an input (a LoRA, a merge member, the checkpoint) or another
 * output of the same run. Paths are compared by real path (symlinks
 * resolved, in the folder too when the file does not exist yet) and, for
 * existing files, by device and inode (hard links).
 *
 * Output names of threshold recipes are known before any work; a `size=`
 * recipe's name holds the threshold its selection finds, so it is claimed
 * again right before its file is written.
 *
 * @module
 */

import { basename, dirname, join, parse as parsePath, resolve } from "node:path";
import { diffusersFiles, isFolder } from "./base/diffusers_folder.ts";
import { OutputError } from "./errors.ts";
import { checkInputFile } from "./input_files.ts";
import { loraEntryMembers, mergedName } from "./lora/merge_spec.ts";
import { outputFileName, type Recipe } from "./recipe/recipe.ts";

/** A file a run writes, and what writes it (for messages). */
export interface WrittenFile {
  /** The path as given or built. */
  readonly path: string;
  /** What writes it, e.g. `the output of a.safetensors with recipe thr=-3`, `the report`. */
  readonly source: string;
}

/** Options of {@link OutputPaths.create}. */
export interface OutputPathsOptions {
  /** Every input file (checkpoint, LoRAs, merge members). */
  readonly inputs: readonly string[];
}

interface Identity {
  /** Real path (of the folder, plus the name, for a file that does not exist). */
  readonly real: string;
  /** `dev:ino` of an existing file. */
  readonly inode?: string;
}

async function identify(path: string): Promise<Identity> {
  let real: string;
  try {
    real = await Deno.realPath(path);
  } catch {
    try {
      real = join(await Deno.realPath(dirname(path)), basename(path));
    } catch {
      real = resolve(path);
    }
  }
  try {
    const info = await Deno.stat(path);
    if (info.ino !== null && info.dev !== null) return { real, inode: `${info.dev}:${info.ino}` };
  } catch { /* not there yet */ }
  return { real };
}

/**
 * The paths a run writes, each claimed once with its source.
 *
 * @example
 * ```ts
 * import { OutputPaths } from "./output_paths.ts";
 * const dir = await Deno.makeTempDir();
 * const lora = `${dir}/a.safetensors`;
 * await Deno.writeTextFile(lora, "");
 * const paths = await OutputPaths.create({ inputs: [lora] });
 * await paths.claim({ path: `${dir}/out.safetensors`, source: "the output" });
 * let refused = false;
 * await paths.claim({ path: lora, source: "the report" }).catch(() => refused = true);
 * await Deno.remove(dir, { recursive: true });
 * if (!refused) throw new Error("the report may not replace an input");
 * ```
 */
export class OutputPaths {
  #inputs: { readonly path: string; readonly id: Identity }[];
  #claimed = new Map<string, WrittenFile>();

  private constructor(inputs: { readonly path: string; readonly id: Identity }[]) {
    this.#inputs = inputs;
  }

  /** Identifies every input (real path, inode). */
  static async create(options: OutputPathsOptions): Promise<OutputPaths> {
    const inputs = [];
    for (const path of new Set(options.inputs)) inputs.push({ path, id: await identify(path) });
    return new OutputPaths(inputs);
  }

  /**
   * Claims a path for `file.source`. Throws a one-line {@link OutputError}
   * naming both when it is an input or another source's; claiming the same
   * path again for the same source is allowed.
   */
  async claim(file: WrittenFile): Promise<void> {
    const id = await identify(file.path);
    for (const input of this.#inputs) {
      if (id.real === input.id.real || (id.inode && id.inode === input.id.inode)) {
        throw new OutputError(
          `${file.path}: ${file.source} would overwrite the input ${input.path}`,
          { file: file.path },
        );
      }
    }
    const earlier = this.#claimed.get(id.real);
    if (earlier && earlier.source !== file.source) {
      throw new OutputError(
        `${file.path}: written twice in one run, by ${earlier.source} and by ${file.source}`,
        { file: file.path },
      );
    }
    this.#claimed.set(id.real, file);
  }

  /** Paths claimed so far, in order. */
  get claimed(): WrittenFile[] {
    return [...this.#claimed.values()];
  }
}

/**
 * Checks that an output folder can be one, creating nothing: an existing
 * folder, or a missing one whose nearest existing ancestor is a folder.
 *
 * @example
 * ```ts
 * import { checkOutputFolder } from "./output_paths.ts";
 * const file = await Deno.makeTempFile();
 * let refused = false;
 * await checkOutputFolder(`${file}/out`).catch(() => refused = true);
 * await Deno.remove(file);
 * if (!refused) throw new Error("a folder under a file was accepted");
 * ```
 */
export async function checkOutputFolder(folder: string): Promise<void> {
  for (let at = resolve(folder);; at = dirname(at)) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(at);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound && dirname(at) !== at) continue;
      throw new OutputError(
        `${folder}: cannot use as the output folder (${(e as Error).message})`,
        { file: folder, cause: e },
      );
    }
    if (info.isDirectory) return;
    throw new OutputError(
      at === resolve(folder)
        ? `${folder}: the output folder is an existing file, not a folder`
        : `${folder}: cannot create the output folder (${at} is a file, not a folder)`,
      { file: folder },
    );
  }
}

/** One (LoRA entry, recipe) pair's output. */
export interface PlannedOutput extends WrittenFile {
  /** The LoRA entry as given. */
  readonly lora: string;
  /** Its recipe. */
  readonly recipe: Recipe;
}

/**
 * The outputs a run will write whose names are known before any work (those
 * of threshold recipes), and the folder of every LoRA entry's outputs.
 *
 * @example
 * ```ts
 * import { plannedOutputs } from "./output_paths.ts";
 * import { parseRecipes } from "./recipe/recipe.ts";
 * const { outputs } = plannedOutputs({
 *   loras: ["/nowhere/x.safetensors"],
 *   recipes: parseRecipes("fro_ckpt=1,thr=-3.5:fro_ckpt=1,size=8"),
 * });
 * if (outputs.length !== 1 || !outputs[0].path.endsWith("x_frockpt1_th-3.5.safetensors")) {
 *   throw new Error(outputs[0].path);
 * }
 * ```
 */
export function plannedOutputs(run: {
  readonly loras: readonly string[];
  readonly recipes: readonly Recipe[];
  readonly outputFolder?: string;
}): { readonly outputs: PlannedOutput[]; readonly folders: string[] } {
  const outputs: PlannedOutput[] = [];
  const folders = new Set<string>();
  for (const lora of run.loras) {
    const { name, folder } = outputStemOf(lora, run.outputFolder);
    folders.add(folder);
    for (const recipe of run.recipes) {
      if (recipe.threshold === undefined || recipe.sizeMiB !== undefined) continue;
      const path = join(folder, outputFileName(name, recipe, recipe.threshold));
      outputs.push({ path, source: outputSource(lora, recipe), lora, recipe });
    }
  }
  return { outputs, folders: [...folders] };
}

/** How messages name the output of a (LoRA, recipe) pair. */
export function outputSource(lora: string, recipe: Recipe): string {
  return `the output of ${lora} with recipe ${recipe.text}`;
}

/** A LoRA entry's output name stem and folder, as loading it would give them. */
function outputStemOf(entry: string, outputFolder?: string): { name: string; folder: string } {
  const members = loraEntryMembers(entry);
  const first = members?.[0].path ?? entry;
  const dir = parsePath(first).dir;
  return {
    name: members ? mergedName(members) : parsePath(entry).name,
    folder: outputFolder ?? (dir === "" ? "." : dir),
  };
}

/** What {@link checkRunPaths} checks. */
export interface RunPaths {
  /** The base checkpoint, when the run has one. */
  readonly checkpoint?: string;
  /** LoRA entries (paths or merge specs). */
  readonly loras: readonly string[];
  /** The run's recipes. */
  readonly recipes: readonly Recipe[];
  /** `-o`, when given. */
  readonly outputFolder?: string;
  /** `--save_to`: the one output's path, when given. */
  readonly outputPath?: string;
  /** The norms cache location (a `.json` location is a file the run writes), or `false`. */
  readonly normsCache?: string | false;
  /** Other files the run writes (a report). */
  readonly alsoWrites?: readonly WrittenFile[];
  /** Whether the outputs are written (false for a plan). */
  readonly writes: boolean;
}

/**
 * Everything about a run's paths that can be checked before any work: every
 * input is a regular file, every output folder can be one, and no path the
 * run writes (outputs whose names are known, the norms cache file, other
 * files) replaces an input or another. Returns the claims, for the outputs
 * named later.
 */
export async function checkRunPaths(run: RunPaths): Promise<OutputPaths> {
  // A diffusers-folder base is its component files.
  const base = run.checkpoint === undefined
    ? []
    : await isFolder(run.checkpoint)
    ? (await diffusersFiles(run.checkpoint)).map((f) => f.path)
    : [run.checkpoint];
  const inputs = [
    ...base,
    ...run.loras.flatMap((e) => loraEntryMembers(e)?.map((m) => m.path) ?? [e]),
  ];
  for (const input of new Set(inputs)) await checkInputFile(input);
  const paths = await OutputPaths.create({ inputs });
  if (run.writes) {
    const { outputs, folders } = run.outputPath !== undefined
      ? {
        // One LoRA and one recipe (checked when the options are resolved).
        outputs: [{ path: run.outputPath, source: outputSource(run.loras[0], run.recipes[0]) }],
        folders: [dirname(run.outputPath)],
      }
      : plannedOutputs(run);
    for (const folder of folders) await checkOutputFolder(folder);
    for (const output of outputs) await paths.claim(output);
  }
  if (typeof run.normsCache === "string" && run.normsCache.endsWith(".json")) {
    await paths.claim({ path: run.normsCache, source: "the norms cache" });
  }
  for (const file of run.alsoWrites ?? []) {
    await checkOutputFolder(dirname(file.path));
    try {
      if ((await Deno.stat(file.path)).isDirectory) {
        throw new OutputError(`${file.path}: ${file.source} would replace a folder`, {
          file: file.path,
        });
      }
    } catch (e) {
      if (e instanceof OutputError) throw e;
    }
    await paths.claim(file);
  }
  return paths;
}
