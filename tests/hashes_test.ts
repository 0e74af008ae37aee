import { createHash } from "node:crypto";
import { assertEquals } from "./assert.ts";
import { sshsHashes } from "../src/safetensors/hashes.ts";
import { serializeSafetensors } from "../src/safetensors/writer.ts";
import type { TensorSource } from "../src/safetensors/writer.ts";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

Deno.test("sshs hashes equal hashes of the ss_-only serialisation", async () => {
  // Big enough that [0x100000, 0x110000) lies across two tensors.
  const a = new Uint8Array(0x100000 - 100).map((_, i) => (i * 7) & 255);
  const b = new Uint8Array(0x20000).map((_, i) => (i * 13) & 255);
  const tensors: TensorSource[] = [
    { name: "b", dtype: "U8", shape: [b.length], data: b },
    { name: "a", dtype: "U8", shape: [a.length], data: a },
  ];
  const metadata = { ss_network_dim: "8", resize_params: "{}", modelspec_title: "x" };
  const h = await sshsHashes(tensors, metadata);
  const ssOnly = await serializeSafetensors(tensors, { metadata: { ss_network_dim: "8" } });
  const headerLength = 8 + Number(new DataView(ssOnly.buffer).getBigUint64(0, true));
  assertEquals(h.sshs_model_hash, sha(ssOnly.subarray(headerLength)));
  assertEquals(h.sshs_legacy_hash, sha(ssOnly.subarray(0x100000, 0x110000)).slice(0, 8));
});

Deno.test("legacy hash of a small file is the hash of nothing", async () => {
  const h = await sshsHashes(
    [{ name: "x", dtype: "U8", shape: [1], data: new Uint8Array([1]) }],
    {},
  );
  assertEquals(h.sshs_legacy_hash, "e3b0c442");
  assertEquals(h.sshs_model_hash, sha(new Uint8Array([1])));
});

Deno.test("sshs hashes of many tensors of every size, staged or not, in layout order", async () => {
  // Sizes around the 1 MiB staging buffer and its 256 KiB direct-update limit, empty tensors,
  // and enough tiny ones to fill the buffer several times.
  const sizes = [0, 1, 2, 3, 0x40000 - 1, 0x40000, 0x100000 - 5, 0x100000, 0x180000, 7];
  for (let i = 0; i < 1500; i++) sizes.push(1 + (i % 5) * 700);
  const tensors: TensorSource[] = sizes.map((n, i) => ({
    name: `t${String(i).padStart(4, "0")}`,
    dtype: "U8",
    shape: [n],
    data: new Uint8Array(n).map((_, j) => (i * 31 + j * 7) & 255),
  }));
  const h = await sshsHashes(tensors.toReversed(), { ss_x: "1" });
  const file = await serializeSafetensors(tensors, { metadata: { ss_x: "1" } });
  const headerLength = 8 + Number(new DataView(file.buffer).getBigUint64(0, true));
  assertEquals(h.sshs_model_hash, sha(file.subarray(headerLength)));
  assertEquals(h.sshs_legacy_hash, sha(file.subarray(0x100000, 0x110000)).slice(0, 8));
});

Deno.test("writeSafetensors with sshsHashes writes what two passes (hash, then write) write", async () => {
  const { writeSafetensors } = await import("../src/safetensors/writer.ts");
  const dir = await Deno.makeTempDir();
  try {
    // Around the 4 MiB write chunks and their 1 MiB direct limit, empty and tiny tensors,
    // bytes given directly and by callbacks.
    const sizes = [0, 3, 0x100000 - 1, 0x100000, 5 << 20, 7, 0x3fffff, 1, 9 << 20, 2];
    for (let i = 0; i < 300; i++) sizes.push(1 + (i % 7) * 3001);
    const tensors: TensorSource[] = sizes.map((n, i) => {
      const bytes = new Uint8Array(n).map((_, j) => (i * 17 + j * 5) & 255);
      return {
        name: `t${String(i).padStart(3, "0")}`,
        dtype: "U8",
        shape: [n],
        data: i % 3 === 0 ? () => bytes : bytes,
      };
    });
    for (const metadata of [{ ss_a: "1", b: "é" }, undefined]) {
      const streamed = await writeSafetensors(`${dir}/streamed.safetensors`, tensors, {
        metadata,
        sshsHashes: true,
      });
      const direct = tensors.map((t) => ({
        ...t,
        data: typeof t.data === "function" ? t.data() as Uint8Array : t.data,
      }));
      const hashes = await sshsHashes(direct, metadata ?? {});
      await writeSafetensors(`${dir}/two_pass.safetensors`, direct, {
        metadata: { ...metadata, ...hashes },
      });
      const a = await Deno.readFile(`${dir}/streamed.safetensors`);
      assertEquals(a, await Deno.readFile(`${dir}/two_pass.safetensors`));
      assertEquals(streamed.bytes, a.byteLength);
      assertEquals(streamed.metadata, { ...metadata, ...hashes });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
