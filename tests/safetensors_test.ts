import { assertEquals } from "./assert.ts";
import { SafetensorsFile } from "../src/safetensors/mod.ts";

Deno.test("conformance base opens and lists tensors", async () => {
  await using f = await SafetensorsFile.open("tests/fixtures/micro_sdxl_base.safetensors");
  assertEquals(f.tensors.length, 2515);
});
