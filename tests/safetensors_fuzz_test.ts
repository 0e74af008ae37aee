/**
 * Property test of the header parser: a valid file, mutated in one of many
 * ways, either opens with a self-consistent result or fails with a one-line
 * SafetensorsError naming the file; never any other exception.
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { fuzzRuns } from "./fuzz.ts";
import { SafetensorsError } from "../src/errors.ts";
import {
  DTYPES,
  dtypeSize,
  numel,
  SafetensorsFile,
  serializeSafetensors,
  type TensorSource,
} from "../src/safetensors/mod.ts";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Header = Record<string, Json>;

interface TensorArb {
  name: string;
  dtype: typeof DTYPES[number];
  shape: number[];
}

const tensorArb: fc.Arbitrary<TensorArb> = fc.record({
  name: fc.string({ unit: "binary", minLength: 1, maxLength: 6 }),
  dtype: fc.constantFrom(...DTYPES),
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
});

const validFileArb = fc.record({
  tensors: fc.uniqueArray(tensorArb, {
    selector: (t) => t.name,
    maxLength: 5,
  }).map((ts) => ts.filter((t) => t.name !== "__metadata__")),
  metadata: fc.option(
    fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ unit: "binary", maxLength: 8 }), {
      maxKeys: 3,
    }),
    { nil: undefined },
  ),
});

/** Values that replace a field, of every JSON type. */
const anyJson: fc.Arbitrary<Json> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -20, max: 200 }),
  fc.double({ noNaN: true }),
  fc.constantFrom(-0, 0.5, 2 ** 53, 2 ** 64, 1e308, -(2 ** 31)),
  fc.string({ maxLength: 6 }),
  fc.constantFrom("F16", "BF16", "F32", "I64", "U8", "Q4", "f16", ""),
  fc.array(fc.integer({ min: -3, max: 40 }), { maxLength: 4 }),
  fc.dictionary(fc.string({ maxLength: 3 }), fc.string({ maxLength: 3 }), { maxKeys: 2 }),
);

const FIELDS = ["dtype", "shape", "data_offsets"];

/** A mutation of the parsed header (applied to a copy) or of the file bytes. */
const mutationArb = fc.oneof(
  fc.record({ kind: fc.constant("number" as const), at: fc.nat(), dim: fc.nat(), value: anyJson }),
  fc.record({
    kind: fc.constant("drop" as const),
    at: fc.nat(),
    field: fc.constantFrom(...FIELDS),
  }),
  fc.record({
    kind: fc.constant("rename" as const),
    at: fc.nat(),
    field: fc.constantFrom(...FIELDS),
    to: fc.constantFrom("Dtype", "shape ", "offsets", "data_offset", "x"),
  }),
  fc.record({
    kind: fc.constant("retype" as const),
    at: fc.nat(),
    field: fc.constantFrom(...FIELDS),
    value: anyJson,
  }),
  fc.record({ kind: fc.constant("entry" as const), at: fc.nat(), value: anyJson }),
  fc.record({ kind: fc.constant("swapOffsets" as const), at: fc.nat(), other: fc.nat() }),
  fc.record({
    kind: fc.constant("metadata" as const),
    key: fc.string({ maxLength: 3 }),
    value: anyJson,
  }),
  fc.record({
    kind: fc.constant("renameTensor" as const),
    at: fc.nat(),
    to: fc.string({ maxLength: 4 }),
  }),
  fc.record({
    kind: fc.constant("duplicate" as const),
    at: fc.nat(),
    where: fc.constantFrom("top", "entry", "meta"),
  }),
  fc.record({
    kind: fc.constant("truncate" as const),
    keep: fc.double({ min: 0, max: 1, noNaN: true }),
  }),
  fc.record({
    kind: fc.constant("flip" as const),
    bytes: fc.array(
      fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 0, max: 255 })),
      {
        minLength: 1,
        maxLength: 4,
      },
    ),
  }),
  fc.record({
    kind: fc.constant("prefix" as const),
    length: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  }),
  fc.record({ kind: fc.constant("garbage" as const), bytes: fc.uint8Array({ maxLength: 64 }) }),
  fc.record({ kind: fc.constant("dataLength" as const), delta: fc.integer({ min: -9, max: 9 }) }),
);
type Mutation = typeof mutationArb extends fc.Arbitrary<infer M> ? M : never;

const utf8 = new TextEncoder();

function split(file: Uint8Array): { header: Header; data: Uint8Array } {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n))) as Header;
  return { header, data: file.subarray(8 + n) };
}

function assemble(json: string, data: Uint8Array, length?: bigint): Uint8Array {
  const h = utf8.encode(json);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function mutate(file: Uint8Array, m: Mutation): Uint8Array {
  const { header, data } = split(file);
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const pick = (at: number) => names.length ? names[at % names.length] : undefined;
  const entry = (at: number) => {
    const name = pick(at);
    return name === undefined ? undefined : header[name] as Record<string, Json>;
  };
  switch (m.kind) {
    case "number": {
      const e = entry(m.at);
      const arr = e?.[m.dim % 2 ? "shape" : "data_offsets"] as Json[] | undefined;
      if (arr?.length) arr[m.dim % arr.length] = m.value;
      break;
    }
    case "drop":
      if (entry(m.at)) delete entry(m.at)![m.field];
      break;
    case "rename": {
      const e = entry(m.at);
      if (e) {
        e[m.to] = e[m.field];
        delete e[m.field];
      }
      break;
    }
    case "retype":
      if (entry(m.at)) entry(m.at)![m.field] = m.value;
      break;
    case "entry": {
      const name = pick(m.at);
      header[name ?? "t"] = m.value;
      break;
    }
    case "swapOffsets": {
      const a = entry(m.at), b = entry(m.other);
      if (a && b && a !== b) [a.data_offsets, b.data_offsets] = [b.data_offsets, a.data_offsets];
      else if (a) a.data_offsets = [...(a.data_offsets as number[])].reverse();
      break;
    }
    case "metadata": {
      const meta = (header.__metadata__ ?? {}) as Record<string, Json>;
      meta[m.key] = m.value;
      header.__metadata__ = meta;
      break;
    }
    case "renameTensor": {
      const name = pick(m.at);
      if (name !== undefined) {
        header[m.to] = header[name];
        if (m.to !== name) delete header[name];
      }
      break;
    }
    case "duplicate": {
      let json = JSON.stringify(header);
      const name = pick(m.at);
      if (m.where === "top" && name !== undefined) {
        json = json.slice(0, -1) + `,${JSON.stringify(name)}:${JSON.stringify(header[name])}}`;
      } else if (m.where === "entry") {
        json = json.replace(/"dtype":("[^"]*")/, `"dtype":$1,"dtype":$1`);
      } else {
        json = json.replace(/^\{/, `{"__metadata__":{"k":"1","k":"1"},`).replace(/,}$/, "}");
      }
      return assemble(json, data);
    }
    case "truncate":
      return file.slice(0, Math.floor(m.keep * file.length));
    case "flip": {
      const out = file.slice();
      for (const [where, value] of m.bytes) {
        if (out.length) out[Math.min(out.length - 1, Math.floor(where * out.length))] = value;
      }
      return out;
    }
    case "prefix": {
      const out = file.slice();
      new DataView(out.buffer).setBigUint64(0, m.length, true);
      return out;
    }
    case "garbage":
      return m.bytes;
    case "dataLength": {
      const n = Math.max(0, data.length + m.delta);
      const grown = new Uint8Array(n);
      grown.set(data.subarray(0, n));
      return assemble(JSON.stringify(header), grown);
    }
  }
  return assemble(JSON.stringify(header), data);
}

/** What a successfully opened file must satisfy. */
async function checkConsistent(f: SafetensorsFile): Promise<void> {
  assertEquals(f.dataStart, 8 + f.headerLength);
  assertEquals(new Set(f.names).size, f.tensors.length);
  let cursor = 0;
  for (const t of f.tensors) {
    assertEquals(t.dataOffsets[0], cursor);
    assertEquals(t.dataOffsets[1] - t.dataOffsets[0], numel(t.shape) * dtypeSize(t.dtype));
    assert(t.shape.every((d) => Number.isSafeInteger(d) && d >= 0));
    assertEquals((await f.readBytes(t.name)).length, t.dataOffsets[1] - t.dataOffsets[0]);
    cursor = t.dataOffsets[1];
  }
  assertEquals(f.dataStart + cursor, f.size);
  for (const v of Object.values(f.metadata)) assertEquals(typeof v, "string");
}

Deno.test("fuzz: mutated headers open consistently or fail with a one-line SafetensorsError", async () => {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_fuzz_" });
  const path = join(dir, "fuzz.safetensors");
  const outcomes = { opened: 0, rejected: 0 };
  try {
    await fc.assert(
      fc.asyncProperty(validFileArb, mutationArb, async ({ tensors, metadata }, m) => {
        const sources: TensorSource[] = tensors.map((t) => ({
          ...t,
          data: new Uint8Array(numel(t.shape) * dtypeSize(t.dtype)).map((_, i) => i * 37),
        }));
        const valid = await serializeSafetensors(sources, { metadata });
        await Deno.writeFile(path, mutate(valid, m));
        let f: SafetensorsFile | undefined;
        try {
          f = await SafetensorsFile.open(path);
        } catch (e) {
          if (!(e instanceof SafetensorsError)) throw e;
          assert(e.message.startsWith(`${path}: `), e.message);
          assert(!/[\n\r\u2028\u2029]/.test(e.message), `not one line: ${e.message}`);
          outcomes.rejected++;
          return;
        }
        try {
          await checkConsistent(f);
          outcomes.opened++;
        } finally {
          f.close();
        }
      }),
      fuzzRuns(300),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // The property must exercise both outcomes to mean anything.
  assert(outcomes.opened > 20 && outcomes.rejected > 100, JSON.stringify(outcomes));
});

Deno.test("fuzz: unmutated files always open with the tensors and metadata they were written with", async () => {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_fuzz_" });
  const path = join(dir, "valid.safetensors");
  try {
    await fc.assert(
      fc.asyncProperty(validFileArb, async ({ tensors, metadata }) => {
        const sources = tensors.map((t) => ({
          ...t,
          data: new Uint8Array(numel(t.shape) * dtypeSize(t.dtype)).map((_, i) =>
            i + t.name.length
          ),
        }));
        await Deno.writeFile(path, await serializeSafetensors(sources, { metadata }));
        await using f = await SafetensorsFile.open(path);
        await checkConsistent(f);
        assertEquals(f.hasMetadata, metadata !== undefined);
        assertEquals(f.metadata, { ...metadata });
        for (const s of sources) {
          assertEquals(f.info(s.name).shape, s.shape);
          assertEquals(f.info(s.name).dtype, s.dtype);
          assertEquals(await f.readBytes(s.name), s.data);
        }
      }),
      fuzzRuns(100),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
