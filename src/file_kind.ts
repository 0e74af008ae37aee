/**
 * What a `.safetensors` file holds — a LoRA-style adapter or a full model
 * checkpoint — told from its tensor names alone (the header; no tensor data
 * is read). Used to catch arguments given in the wrong order, and wherever a
 * positional may be either.
 *
 * @module
 */

import { headerNames } from "./safetensors/header.ts";

/** What a file holds: an adapter, a full checkpoint, or neither recognisably. */
export type FileKind = "lora" | "checkpoint" | "unknown";

/**
 * Names of adapter tensors: kohya (`lora_down`/`lora_up`, `alpha`), PEFT
 * (`lora_A`/`lora_B`), LyCORIS (`hada_…`, `lokr_…`), DoRA (`dora_scale`).
 */
const ADAPTER = /(?:^|\.)(?:lora_(?:down|up|A|B|mid)(?:\.|$)|hada_|lokr_|alpha$|dora_scale$)/;

/**
 * Names of full-model tensors: SGM / LDM single-file checkpoints (UNet, text
 * encoders, VAE) and diffusers UNet weights.
 */
const CHECKPOINT =
  /^(?:model\.diffusion_model\.|conditioner\.|cond_stage_model\.|first_stage_model\.|(?:unet\.)?(?:down_blocks|up_blocks|mid_block|conv_in|conv_out|time_embedding|add_embedding)\.)/;

/**
 * Classifies a file by its tensor names: `lora` when more of them are adapter
 * tensors than full-model ones, `checkpoint` when the reverse holds, else
 * `unknown` (no recognisable name, or as many of each).
 *
 * @example
 * ```ts
 * import { classifySafetensors } from "./file_kind.ts";
 * const lora = classifySafetensors([
 *   "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
 *   "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
 *   "lora_unet_input_blocks_4_1_proj_in.alpha",
 * ]);
 * const ckpt = classifySafetensors(["model.diffusion_model.input_blocks.0.0.weight"]);
 * const peft = classifySafetensors(["unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"]);
 * if (lora !== "lora" || ckpt !== "checkpoint" || peft !== "lora") throw new Error("misread");
 * ```
 */
export function classifySafetensors(names: Iterable<string>): FileKind {
  let adapter = 0;
  let model = 0;
  for (const name of names) {
    if (ADAPTER.test(name)) adapter++;
    else if (CHECKPOINT.test(name)) model++;
  }
  return adapter > model ? "lora" : model > adapter ? "checkpoint" : "unknown";
}

/** Headers up to this size are classified (an SDXL checkpoint's is about 200 KB). */
const MAX_CLASSIFIED_HEADER = 16 * 2 ** 20;

/** The header bytes of a `.safetensors` file, if it declares at most `limit` of them. */
async function headerBytes(path: string, limit: number): Promise<Uint8Array | undefined> {
  using file = await Deno.open(path);
  const read = async (buffer: Uint8Array) => {
    for (let got = 0; got < buffer.length;) {
      const n = await file.read(buffer.subarray(got));
      if (n === null) return false;
      got += n;
    }
    return true;
  };
  const prefix = new Uint8Array(8);
  if (!await read(prefix)) return undefined;
  const length = new DataView(prefix.buffer).getBigUint64(0, true);
  if (length > BigInt(limit)) return undefined;
  const json = new Uint8Array(Number(length));
  return await read(json) ? json : undefined;
}

/**
 * The kind of the `.safetensors` file at `path`, from its header's tensor names; `unknown`
 * when it cannot be read (whoever opens it next reports why). Only the names are parsed: the
 * run validates the header when it opens the file.
 *
 * @example
 * ```ts ignore
 * import { fileKind } from "./file_kind.ts";
 * console.log(await fileKind("sd_xl_base_1.0.safetensors")); // "checkpoint"
 * ```
 */
export async function fileKind(path: string): Promise<FileKind> {
  try {
    // Only regular files (opening a FIFO would block), and no header far larger than any model's:
    // the run looks at such inputs once, and says what is wrong with them.
    if (!(await Deno.stat(path)).isFile) return "unknown";
    const json = await headerBytes(path, MAX_CLASSIFIED_HEADER);
    const names = json && headerNames(json);
    return names ? classifySafetensors(names) : "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * The message for a base checkpoint and LoRA files given in the wrong order,
 * or `undefined` when the files' contents agree with their places: the first
 * positional must not hold an adapter, nor any later one a full checkpoint.
 *
 * @param checkpoint the first positional (the base checkpoint's place)
 * @param loras the LoRA files (plain paths; merge specs are left out by the caller)
 *
 * @example
 * ```ts ignore
 * import { argumentOrderProblem } from "./file_kind.ts";
 * const problem = await argumentOrderProblem("my_lora.safetensors", ["sd_xl_base_1.0.safetensors"]);
 * // "arguments swapped? the first positional is the base checkpoint, but my_lora.safetensors …"
 * ```
 */
export async function argumentOrderProblem(
  checkpoint: string,
  loras: readonly string[],
): Promise<string | undefined> {
  const [first, ...rest] = await Promise.all([checkpoint, ...loras].map(fileKind));
  const fullModels = loras.filter((_, i) => rest[i] === "checkpoint");
  const hint = "arguments swapped? the first positional is the base checkpoint, then the LoRAs";
  if (first === "lora") {
    const other = fullModels.length > 0 ? ` and ${fullModels[0]} a full checkpoint` : "";
    return `${hint}: ${checkpoint} holds a LoRA${other}`;
  }
  if (fullModels.length > 0) {
    return `${hint}: ${fullModels[0]} holds a full checkpoint, not a LoRA`;
  }
  return undefined;
}
