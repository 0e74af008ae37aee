/**
 * Interrupted writes leave nothing behind (SIGINT, SIGTERM: temporary files
 * removed, exit 130 / 143; SIGKILL: the temporary file a later write removes),
 * and hostile small files fail fast with small memory (peak RSS of a child).
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { BASE, snapshot, withDir } from "./hostile.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** Starts the stalled write; resolves with the child and its temporary path once it stalls. */
async function stalledWrite(target: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tests/slow_write_child.ts"), target],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  reader.releaseLock();
  const tmp = /^writing (.+)$/m.exec(text)?.[1];
  assert(tmp !== undefined, `the child did not start writing: ${text}`);
  return { child, tmp };
}

for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  Deno.test(`${signal} during a write removes the temporary file, writes no output and exits ${code}`, async () => {
    await withDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "kept.txt"), "kept");
      const before = await snapshot(dir);
      const { child, tmp } = await stalledWrite(join(dir, "out.safetensors"));
      assert((await Deno.stat(tmp)).size > 8 << 20, "the temporary file holds the first tensor");
      child.kill(signal);
      const status = await child.status;
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel();
      assertEquals(status.code, code);
      assertEquals(await snapshot(dir), before, "no output, no temporary file");
    });
  });
}

Deno.test("SIGKILL leaves the temporary file, named for its process; a later write into the folder removes it", async () => {
  await withDir(async (dir) => {
    const { child, tmp } = await stalledWrite(join(dir, "out.safetensors"));
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel();
    assert(
      new RegExp(`/\\.out\\.safetensors\\.${child.pid}\\.[0-9a-f]{8}\\.tmp$`).test(tmp),
      tmp,
    );
    assert((await Deno.stat(tmp)).isFile, "SIGKILL cannot be caught: the temporary file stays");
    const other = join(dir, "other.safetensors");
    await writeSafetensors(other, [{
      name: "x",
      dtype: "F32",
      shape: [1],
      data: encodeFloats([1], "F32"),
    }]);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["other.safetensors"]);
  });
});

/** Runs the CLI in a child that reports its peak RSS; returns it (MiB), the code and stderr. */
async function peakRun(args: string[]): Promise<{ code: number; mib: number; stderr: string[] }> {
  const started = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      join(ROOT, "tests/peak_rss_child.ts"),
      ...args,
      "-d",
      "cpu",
      "--no_norms_cache",
    ],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - started) / 1000;
  const stdout = new TextDecoder().decode(out.stdout);
  const kb = Number(/VmHWM (\d+)/.exec(stdout)?.[1]);
  assert(Number.isFinite(kb), stdout);
  assert(seconds < 60, `took ${seconds} s`);
  const stderr = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l !== "");
  return { code: out.code, mib: kb / 1024, stderr };
}

/** Peak RSS of the CLI failing at once on a missing LoRA: the run's fixed cost. */
async function baselineMiB(dir: string): Promise<number> {
  return (await peakRun([BASE, join(dir, "missing.safetensors")])).mib;
}

Deno.test("a 100 MB deeply nested header fails fast, naming the file, without parsing it", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "deep.safetensors");
    // {"a":[[[…]]]} of 100 MB: 5 + 2·depth + 1 bytes, within the 100 MB header limit.
    const depth = 49_999_000;
    const json = new Uint8Array(2 * depth + 6).fill(0x5b /* [ */);
    json.set(new TextEncoder().encode('{"a":'), 0);
    json.fill(0x5d, /* ] */ 5 + depth, json.length - 1);
    json[json.length - 1] = 0x7d; // }
    const file = new Uint8Array(8 + json.length);
    new DataView(file.buffer).setBigUint64(0, BigInt(json.length), true);
    file.set(json, 8);
    await Deno.writeFile(path, file);
    const base = await baselineMiB(dir);
    const r = await peakRun([BASE, path]);
    assertEquals(r.code, 1, r.stderr.join("\n"));
    assertEquals(r.stderr.length, 1, r.stderr.join("\n"));
    assert(
      r.stderr[0].startsWith(`error: ${path}: header nests deeper than 16 levels`),
      r.stderr[0],
    );
    // The header's bytes are read (100 MB); nothing is built from them (JSON.parse took 5 GiB).
    assert(r.mib < base + 200, `peak ${r.mib} MiB, baseline ${base} MiB`);
  });
});

Deno.test("a 1.9 MB file declaring a rank-16000 layer fails fast, naming file and layer", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "rank.safetensors");
    const rank = 16000, out = 56, inFlat = 4;
    const layer = "lora_unet_input_blocks_1_0_emb_layers_1";
    await writeSafetensors(path, [
      { name: `${layer}.alpha`, dtype: "F16", shape: [], data: encodeFloats([rank], "F16") },
      {
        name: `${layer}.lora_down.weight`,
        dtype: "F16",
        shape: [rank, inFlat],
        data: new Uint8Array(rank * inFlat * 2),
      },
      {
        name: `${layer}.lora_up.weight`,
        dtype: "F16",
        shape: [out, rank],
        data: new Uint8Array(out * rank * 2),
      },
    ]);
    assert((await Deno.stat(path)).size < 2e6);
    const base = await baselineMiB(dir);
    const r = await peakRun([BASE, path]);
    assertEquals(r.code, 1, r.stderr.join("\n"));
    assertEquals(r.stderr.length, 1, r.stderr.join("\n"));
    assert(
      r.stderr[0].startsWith(
        `error: ${path}: layer '${layer}': rank 16000 is above both dimensions of the 56×4 layer`,
      ),
      r.stderr[0],
    );
    assert(r.mib < base + 64, `peak ${r.mib} MiB, baseline ${base} MiB`);
  });
});
