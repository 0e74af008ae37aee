/**
 * A diffusers model folder as a base checkpoint: which safetensors files hold
 * the UNet and text encoders, and the canonical LoRA name of each weight.
 *
 * The layout is `unet/diffusion_pytorch_model[.fp16].safetensors`,
 * `text_encoder/model[.fp16].safetensors` and `text_encoder_2/…`, each
 * possibly sharded behind a `*.safetensors.index.json`. The full-precision
 * file is taken where both exist (the one diffusers loads by default).
 *
 * @module
 */

import { join } from "node:path";
import { SafetensorsError } from "../errors.ts";
import { canonicalName } from "../namings/naming.ts";
import { type Architecture, sgmFromDiffusers } from "../namings/unet_blocks.ts";
import type { BaseKeyNames } from "./key_map.ts";

/** A model part of a diffusers folder. */
export type Component = "unet" | "text_encoder" | "text_encoder_2";

/** The components read, in order. */
export const COMPONENTS: readonly Component[] = ["unet", "text_encoder", "text_encoder_2"];

/** One safetensors file of a component. */
export interface ComponentFile {
  /** The model part. */
  readonly component: Component;
  /** Path of the file. */
  readonly path: string;
}

const STEM: Readonly<Record<Component, string>> = {
  unet: "diffusion_pytorch_model",
  text_encoder: "model",
  text_encoder_2: "model",
};

/**
 * Whether a path is a folder (a diffusers model, when it is a base).
 *
 * @example
 * ```ts
 * import { isFolder } from "./diffusers_folder.ts";
 * if (!(await isFolder("."))) throw new Error();
 * ```
 */
export async function isFolder(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false; // opening it as a file says why
  }
}

/**
 * The safetensors files of a diffusers folder, component by component (shards
 * in index order). A folder without a UNet file, or with an index that is not
 * a safetensors index, is a {@link SafetensorsError} naming it.
 *
 * @example
 * ```ts ignore
 * import { diffusersFiles } from "./diffusers_folder.ts";
 * const files = await diffusersFiles("stable-diffusion-xl-base-1.0");
 * console.log(files.map((f) => f.path));
 * ```
 */
export async function diffusersFiles(folder: string): Promise<ComponentFile[]> {
  const files: ComponentFile[] = [];
  for (const component of COMPONENTS) {
    const paths = await componentFiles(join(folder, component), STEM[component]);
    for (const path of paths) files.push({ component, path });
  }
  if (!files.some((f) => f.component === "unet")) {
    throw new SafetensorsError(
      `${folder}: a folder given as the base must be a diffusers model (unet/diffusion_pytorch_model[.fp16].safetensors or its .index.json), and none was found`,
      { file: folder },
    );
  }
  return files;
}

async function componentFiles(dir: string, stem: string): Promise<string[]> {
  for (const variant of ["", ".fp16"]) {
    const single = join(dir, `${stem}${variant}.safetensors`);
    if (await isFile(single)) return [single];
    const index = `${single}.index.json`;
    if (await isFile(index)) return await shards(dir, index);
  }
  return [];
}

async function shards(dir: string, index: string): Promise<string[]> {
  let map: unknown;
  try {
    map = JSON.parse(await Deno.readTextFile(index))?.weight_map;
  } catch (e) {
    throw new SafetensorsError(
      `${index}: not valid JSON (${(e as Error).message.split("\n")[0]})`,
      { file: index },
    );
  }
  const names = typeof map === "object" && map !== null ? Object.values(map) : [];
  if (names.length === 0 || !names.every((n) => typeof n === "string" && !n.includes("/"))) {
    throw new SafetensorsError(`${index}: 'weight_map' must map tensor names to shard file names`, {
      file: index,
      key: "weight_map",
    });
  }
  return [...new Set(names as string[])].map((n) => join(dir, n));
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * The LoRA names of a weight of a diffusers folder (as in {@link BaseKeyNames},
 * standard name only; SD1.5's text encoder also answers to `lora_te1_…`).
 *
 * @example
 * ```ts
 * import { diffusersBaseNames } from "./diffusers_folder.ts";
 * const n = diffusersBaseNames("unet", "down_blocks.1.attentions.0.proj_in.weight", [640, 640], "sdxl");
 * if (n?.standard !== "lora_unet_input_blocks_4_1_proj_in") throw new Error();
 * ```
 */
export function diffusersBaseNames(
  component: Component,
  tensor: string,
  shape: readonly number[],
  arch: Architecture,
): BaseKeyNames | undefined {
  if (!tensor.endsWith(".weight") || shape.length < 2) return undefined;
  const path = tensor.slice(0, -".weight".length).replaceAll(".", "_");
  let standard: string | undefined;
  let direct: string | undefined;
  if (component === "unet") {
    const sgm = sgmFromDiffusers(path, arch);
    standard = sgm === undefined ? undefined : "lora_unet_" + sgm;
  } else if (path.startsWith("text_model_encoder_layers_") || path === "text_projection") {
    const part = component === "text_encoder" ? "te1" : "te2";
    standard = canonicalName({ part, path }, arch);
    if (arch === "sd15" && part === "te1") direct = "lora_te1_" + path;
  }
  if (standard === undefined) return undefined;
  return { standard, ...(direct ? { direct } : {}), all: direct ? [standard, direct] : [standard] };
}
