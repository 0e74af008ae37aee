/**
 * Which positional is the base: decided by what the first one holds (its header's tensor
 * names), a folder, or --base; by position only when nothing can be told.
 */
import { join } from "node:path";
import { assertEquals } from "./assert.ts";
import { runInputs } from "../src/run_inputs.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";

const FIXTURES = join(import.meta.dirname!, "fixtures");
const BASE = join(FIXTURES, "micro_sdxl_base.safetensors");
const LORA = join(FIXTURES, "microA_r8_te.safetensors");
const PEFT_LIKE = ["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"];

Deno.test("the first positional is the base or a LoRA by what its header holds, not by its name", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-inputs-" });
  try {
    // Names that say the opposite of what the files hold.
    const loraNamedBase = join(dir, "sd_xl_base_1.0.safetensors");
    const baseNamedLora = join(dir, "my_lora.safetensors");
    await Deno.copyFile(LORA, loraNamedBase);
    await Deno.copyFile(BASE, baseNamedLora);
    assertEquals(await runInputs([loraNamedBase, LORA]), { loras: [loraNamedBase, LORA] });
    assertEquals(await runInputs([baseNamedLora, LORA]), {
      checkpoint: baseNamedLora,
      loras: [LORA],
    });
    assertEquals(await runInputs([LORA]), { loras: [LORA] });
    // PEFT names are adapter names too.
    const peft = join(dir, "peft.safetensors");
    await writeSafetensors(
      peft,
      PEFT_LIKE.map((name) => ({
        name,
        dtype: "F32" as const,
        shape: [1, 1],
        data: new Uint8Array(4),
      })),
    );
    assertEquals(await runInputs([peft, LORA]), { loras: [peft, LORA] });
    // A folder is a diffusers base.
    assertEquals(await runInputs([dir, LORA]), { checkpoint: dir, loras: [LORA] });
    // Neither kind, or a missing path: the base when LoRAs follow (the original form), else a LoRA.
    const neither = join(dir, "neither.safetensors");
    await writeSafetensors(neither, [
      { name: "something.else", dtype: "F32", shape: [1], data: new Uint8Array(4) },
    ]);
    assertEquals(await runInputs([neither, LORA]), { checkpoint: neither, loras: [LORA] });
    const missing = join(dir, "missing.safetensors");
    assertEquals(await runInputs([missing, LORA]), { checkpoint: missing, loras: [LORA] });
    assertEquals(await runInputs([missing]), { loras: [missing] });
    // LoRA syntax: a merge of existing files, a glob that matches files.
    const merge = `${LORA}:0.5,${loraNamedBase}:0.5`;
    assertEquals(await runInputs([merge, LORA]), { loras: [merge, LORA] });
    const glob = join(dir, "sd_xl_*.safetensors");
    assertEquals(await runInputs([glob, LORA]), { loras: [glob, LORA] });
    // --base: every positional is a LoRA, whatever it holds.
    assertEquals(await runInputs([baseNamedLora, LORA], { base: BASE }), {
      checkpoint: BASE,
      loras: [baseNamedLora, LORA],
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
