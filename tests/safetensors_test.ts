/**
 * safetensors reader/writer: round trips, float rounding, the reference byte
 * layout, atomic writes, header validation, and the conformance files.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { OutputError, SafetensorsError } from "../src/errors.ts";
import {
  decodeFloats,
  type DType,
  encodeFloats,
  type FloatDType,
  SafetensorsFile,
  serializeSafetensors,
  type TensorSource,
  writeSafetensors,
} from "../src/safetensors/mod.ts";

const FIXTURES = "tests/fixtures";
const utf8 = new TextEncoder();

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u64le(n: number | bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  return out;
}

/** A file made by hand: length prefix (default: the header's), header bytes, data. */
function handMade(
  header: string | Uint8Array,
  data: Uint8Array = new Uint8Array(),
  length?: bigint,
): Uint8Array {
  const h = typeof header === "string" ? utf8.encode(header) : header;
  return concat(u64le(length ?? BigInt(h.length)), h, data);
}

function u16bits(bytes: Uint8Array): number[] {
  return [...new Uint16Array(bytes.slice().buffer)];
}

// ---------------------------------------------------------------- round trips

const FLOAT_VALUES: Record<FloatDType, number[]> = {
  // Exactly representable in each dtype, so the round trip is exact.
  F16: [0, -0, 1, -2.5, 65504, 2 ** -24, -(2 ** -14), 0.333251953125, Infinity],
  BF16: [0, 1, -2.5, 3.3895313892515355e38, 2 ** -133, 0.333984375, -Infinity],
  F32: [0, 1, -2.5, 3.4028234663852886e38, 2 ** -149, Math.fround(1 / 3), Math.fround(1e-30)],
  F64: [0, 1, -2.5, Number.MAX_VALUE, Number.MIN_VALUE, 1 / 3, -1e300],
};

Deno.test("float dtypes round-trip through the writer and reader (with 0-dim and empty)", async () => {
  await withTempDir(async (dir) => {
    const tensors: TensorSource[] = [];
    for (const [dtype, values] of Object.entries(FLOAT_VALUES) as [FloatDType, number[]][]) {
      tensors.push({
        name: `${dtype}.v`,
        dtype,
        shape: [values.length],
        data: encodeFloats(values, dtype),
      });
      tensors.push({
        name: `${dtype}.scalar`,
        dtype,
        shape: [],
        data: encodeFloats([-0.75], dtype),
      });
      tensors.push({ name: `${dtype}.empty`, dtype, shape: [0], data: new Uint8Array() });
      tensors.push({ name: `${dtype}.empty2`, dtype, shape: [3, 0], data: () => new Uint8Array() });
    }
    const path = join(dir, "floats.safetensors");
    await writeSafetensors(path, tensors);
    await using f = await SafetensorsFile.open(path);
    assertEquals(f.tensors.length, tensors.length);
    assertEquals(f.hasMetadata, false);
    for (const [dtype, values] of Object.entries(FLOAT_VALUES) as [FloatDType, number[]][]) {
      assertEquals([...await f.readFloat64(`${dtype}.v`)], values, dtype);
      if (dtype !== "F64") {
        assertEquals([...await f.readFloat32(`${dtype}.v`)], values, dtype);
      }
      assertEquals(f.info(`${dtype}.scalar`).shape, []);
      assertEquals(await f.readScalar(`${dtype}.scalar`), -0.75);
      assertEquals((await f.readFloat32(`${dtype}.empty`)).length, 0);
      assertEquals(f.info(`${dtype}.empty2`).shape, [3, 0]);
      assertEquals((await f.readBytes(`${dtype}.empty2`)).length, 0);
    }
  });
});

Deno.test("integer and bool dtypes round-trip as raw bytes", async () => {
  await withTempDir(async (dir) => {
    const i64 = new BigInt64Array([0n, -1n, 2n ** 62n, -(2n ** 63n)]);
    const i32 = new Int32Array([0, -1, 2 ** 31 - 1, -(2 ** 31)]);
    const u8 = new Uint8Array([0, 1, 127, 255, 42]);
    const bool = new Uint8Array([1, 0, 0, 1]);
    const raw: [string, DType, number[], Uint8Array][] = [
      ["i64", "I64", [2, 2], new Uint8Array(i64.buffer)],
      ["i32", "I32", [4], new Uint8Array(i32.buffer)],
      ["u8", "U8", [5], u8],
      ["bool", "BOOL", [4, 1], bool],
      ["i64.scalar", "I64", [], new Uint8Array(new BigInt64Array([-7n]).buffer)],
      ["i32.scalar", "I32", [], new Uint8Array(new Int32Array([123456]).buffer)],
      ["u8.scalar", "U8", [], new Uint8Array([200])],
      ["bool.scalar", "BOOL", [], new Uint8Array([1])],
      ["i64.empty", "I64", [0], new Uint8Array()],
      ["bool.empty", "BOOL", [3, 0], new Uint8Array()],
    ];
    const path = join(dir, "ints.safetensors");
    const metadata = JSON.parse(`{"note":"caf\u00e9 \u6771\u4eac","empty":"","__proto__":"kept"}`);
    await writeSafetensors(
      path,
      raw.map(([name, dtype, shape, data]) => ({ name, dtype, shape, data })),
      {
        metadata,
      },
    );
    await using f = await SafetensorsFile.open(path);
    assertEquals(f.metadata, metadata);
    assert(f.hasMetadata);
    for (const [name, dtype, shape, data] of raw) {
      assertEquals(f.info(name).dtype, dtype);
      assertEquals(f.info(name).shape, shape);
      assertEquals(await f.readBytes(name), data, name);
    }
    assertEquals(await f.readScalar("i64.scalar"), -7);
    assertEquals(await f.readScalar("i32.scalar"), 123456);
    assertEquals(await f.readScalar("u8.scalar"), 200);
    assertEquals(await f.readScalar("bool.scalar"), 1);
    assertEquals(
      [...new BigInt64Array((await f.readBytes("i64", { rows: [1, 2] })).buffer)],
      [2n ** 62n, -(2n ** 63n)],
    );
    await assertRejects(() => f.readFloat32("i32"), SafetensorsError, `'i32' has dtype I32`);
    await assertRejects(() => f.readScalar("u8"), SafetensorsError, `tensor 'u8' has shape [5]`);
    await assertRejects(() => f.readBytes("nope"), SafetensorsError, `${path}: no tensor 'nope'`);
  });
});

Deno.test("row ranges read exactly those rows", async () => {
  await withTempDir(async (dir) => {
    // w[i][j][k] = 100 i + 10 j + k, shape [5, 3, 2]
    const values = Array.from({ length: 30 }, (_, n) => {
      const i = Math.floor(n / 6), j = Math.floor(n / 2) % 3, k = n % 2;
      return 100 * i + 10 * j + k;
    });
    const path = join(dir, "rows.safetensors");
    await writeSafetensors(path, [
      { name: "pad", dtype: "F32", shape: [3], data: encodeFloats([9, 9, 9], "F32") },
      { name: "w", dtype: "F32", shape: [5, 3, 2], data: encodeFloats(values, "F32") },
      {
        name: "h",
        dtype: "F16",
        shape: [4, 2],
        data: encodeFloats([0, 1, 10, 11, 20, 21, 30, 31], "F16"),
      },
      { name: "s", dtype: "F32", shape: [], data: encodeFloats([1], "F32") },
    ]);
    await using f = await SafetensorsFile.open(path);
    assertEquals([...await f.readFloat32("w", { rows: [1, 3] })], [
      100,
      101,
      110,
      111,
      120,
      121,
      200,
      201,
      210,
      211,
      220,
      221,
    ]);
    assertEquals([...await f.readFloat32("w", { rows: [4, 5] })], [400, 401, 410, 411, 420, 421]);
    assertEquals([...await f.readFloat64("h", { rows: [2, 4] })], [20, 21, 30, 31]);
    assertEquals((await f.readBytes("w", { rows: [2, 2] })).length, 0);
    assertEquals((await f.readBytes("w", { rows: [5, 5] })).length, 0);
    assertEquals([...await f.readFloat32("w", { rows: [0, 5] })], values);
    const { offset, length } = f.byteRange("w", { rows: [1, 3] });
    assertEquals(offset, f.dataStart + f.info("w").dataOffsets[0] + 24);
    assertEquals(length, 48);
    for (const rows of [[3, 6], [-1, 2], [3, 2], [0.5, 2]] as [number, number][]) {
      await assertRejects(
        () => f.readBytes("w", { rows }),
        SafetensorsError,
        `${path}: tensor 'w' of shape [5,3,2] has no rows [${rows[0]}, ${rows[1]})`,
      );
    }
    await assertRejects(() => f.readBytes("s", { rows: [0, 1] }), SafetensorsError, "tensor 's'");
  });
});

// ---------------------------------------------------------------- rounding

Deno.test("F16 encoding rounds to nearest, ties to even (hand-computed bit patterns)", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01 → even
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02 → even
    [1 + 2 ** -11 + 2 ** -40, 0x3c01], // just above the tie (would be lost by rounding twice)
    [1 + 2 ** -11 - 2 ** -40, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff], // largest finite
    [65519.99, 0x7bff],
    [65520, 0x7c00], // tie between 65504 and 2^16 → even → inf
    [-70000, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -24, 0x03ff], // largest subnormal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie between 0 and 2^-24 → even
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 ulps → even
    [2 ** -25 + 2 ** -40, 0x0001],
    [-0, 0x8000],
  ];
  for (const [v, bits] of cases) {
    assertEquals(u16bits(encodeFloats([v], "F16")), [bits], `F16(${v})`);
    assertEquals(u16bits(encodeFloats(new Float64Array([v]), "F16")), [bits], `F16(${v})`);
  }
  const [nan] = u16bits(encodeFloats([NaN], "F16"));
  assert((nan & 0x7c00) === 0x7c00 && (nan & 0x03ff) !== 0, `NaN → ${nan.toString(16)}`);
  // and the decoder gives the values back
  const bits = new Uint16Array([0x0001, 0x03ff, 0x0400, 0x3c01, 0x7bff, 0xfc00, 0x8000]);
  assertEquals([...decodeFloats(new Uint8Array(bits.buffer), "F16", Float64Array)], [
    2 ** -24,
    2 ** -14 - 2 ** -24,
    2 ** -14,
    1 + 2 ** -10,
    65504,
    -Infinity,
    -0,
  ]);
});

Deno.test("BF16 encoding rounds to nearest, ties to even (hand-computed bit patterns)", () => {
  const cases: [number, number][] = [
    [1, 0x3f80],
    [1 + 2 ** -8, 0x3f80], // tie → even
    [1 + 3 * 2 ** -8, 0x3f82], // tie → even
    [1 + 2 ** -8 + 2 ** -20, 0x3f81], // above the tie, exact in float32
    [1 + 2 ** -8 + 2 ** -30, 0x3f81], // above the tie only in float64: no double rounding
    [1 + 2 ** -8 - 2 ** -30, 0x3f80],
    [-2.5, 0xc020],
    [3.3895313892515355e38, 0x7f7f], // largest finite
    [(2 - 2 ** -8) * 2 ** 127, 0x7f80], // tie between 0x7f7f and 2^128 → even → inf
    [3.4028234663852886e38, 0x7f80], // float32 max rounds to inf
    [1e39, 0x7f80], // beyond float32
    [-1e39, 0xff80],
    [Infinity, 0x7f80],
    [2 ** -126, 0x0080], // smallest normal
    [2 ** -133, 0x0001], // smallest subnormal
    [2 ** -134, 0x0000], // tie → even
    [3 * 2 ** -134, 0x0002], // tie → even
    [2 ** -134 + 2 ** -160, 0x0001], // above the tie, only in float64
    [2 ** -149, 0x0000], // float32 subnormal
    [1e-50, 0x0000], // below float32
    [-1e-50, 0x8000],
    [-0, 0x8000],
  ];
  for (const [v, bits] of cases) {
    assertEquals(u16bits(encodeFloats([v], "BF16")), [bits], `BF16(${v})`);
  }
  // signalling and quiet NaNs stay NaNs
  const nans = new Float32Array(new Uint32Array([0x7f800001, 0xffc00000, 0x7fffffff]).buffer);
  for (const b of u16bits(encodeFloats(nans, "BF16"))) {
    assert((b & 0x7f80) === 0x7f80 && (b & 0x007f) !== 0, `NaN → ${b.toString(16)}`);
  }
  const bits = new Uint16Array([0x0001, 0x0080, 0x3f81, 0x7f7f, 0xff80]);
  assertEquals([...decodeFloats(new Uint8Array(bits.buffer), "BF16", Float64Array)], [
    2 ** -133,
    2 ** -126,
    1 + 2 ** -7,
    3.3895313892515355e38,
    -Infinity,
  ]);
});

// ---------------------------------------------------------------- byte layout

Deno.test("writer lays bytes out as the safetensors Python package does", async () => {
  const tensors: TensorSource[] = [
    { name: "b", dtype: "F16", shape: [2], data: new Uint8Array([0x00, 0x3c, 0x00, 0xc0]) },
    { name: "\u{1F600}", dtype: "BOOL", shape: [1], data: new Uint8Array([0]) },
    { name: "a", dtype: "F32", shape: [], data: new Uint8Array([0, 0, 0, 0x3f]) },
    { name: "e0", dtype: "F16", shape: [0], data: new Uint8Array() },
    { name: "\u00e9", dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) },
    { name: "c", dtype: "F16", shape: [1, 1], data: new Uint8Array([0x00, 0x38]) },
    { name: "Z", dtype: "I64", shape: [1], data: new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0]) },
    { name: "\uff5e", dtype: "BOOL", shape: [1], data: new Uint8Array([1]) },
    { name: "e1", dtype: "BF16", shape: [3, 0], data: new Uint8Array() },
  ];
  const metadata = { name: 'x "q" \\ \u00e9\n' };
  // Dtypes descending (I64 > F32 > BF16 > F16 > U8 > BOOL), then names bytewise
  // in UTF-8: U+FF5E (EF BD 9E) sorts before U+1F600 (F0 9F 98 80), the
  // reverse of their UTF-16 order.
  const json = String.raw`{"__metadata__":{"name":"x \"q\" \\ é\n"},` +
    String.raw`"Z":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},` +
    String.raw`"a":{"dtype":"F32","shape":[],"data_offsets":[8,12]},` +
    String.raw`"e1":{"dtype":"BF16","shape":[3,0],"data_offsets":[12,12]},` +
    String.raw`"b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]},` +
    String.raw`"c":{"dtype":"F16","shape":[1,1],"data_offsets":[16,18]},` +
    String.raw`"e0":{"dtype":"F16","shape":[0],"data_offsets":[18,18]},` +
    String.raw`"é":{"dtype":"U8","shape":[3],"data_offsets":[18,21]},` +
    String.raw`"～":{"dtype":"BOOL","shape":[1],"data_offsets":[21,22]},` +
    String.raw`"😀":{"dtype":"BOOL","shape":[1],"data_offsets":[22,23]}}`;
  const jsonBytes = utf8.encode(json);
  const padded = Math.ceil(jsonBytes.length / 8) * 8;
  assert(padded > jsonBytes.length, "the example needs padding");
  const expected = concat(
    u64le(padded),
    jsonBytes,
    new Uint8Array(padded - jsonBytes.length).fill(0x20),
    new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3f, 0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]),
    new Uint8Array([1, 2, 3, 1, 0]),
  );
  assertEquals(await serializeSafetensors(tensors, { metadata }), expected);
  await withTempDir(async (dir) => {
    const path = join(dir, "layout.safetensors");
    const result = await writeSafetensors(path, tensors, { metadata });
    assertEquals(await Deno.readFile(path), expected);
    assertEquals(result.bytes, expected.length);
    assertEquals(result.layout.map((t) => t.name), [
      "Z",
      "a",
      "e1",
      "b",
      "c",
      "e0",
      "é",
      "～",
      "😀",
    ]);
    await using f = await SafetensorsFile.open(path);
    assertEquals(f.metadata, metadata);
    assertEquals(f.headerLength, padded);
    assertEquals(await f.readBytes("😀"), new Uint8Array([0]));
  });
});

Deno.test("writer: no padding when already aligned; empty metadata is written, absent is not", async () => {
  const x: TensorSource = { name: "x", dtype: "U8", shape: [1], data: new Uint8Array([5]) };
  const bare = `{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`; // 53 bytes
  assertEquals(await serializeSafetensors([x]), handMade(bare + "   ", new Uint8Array([5])));
  const xyz: TensorSource = { ...x, name: "xyz" }; // 55 bytes + 1 space
  assertEquals(
    await serializeSafetensors([xyz]),
    handMade(`{"xyz":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}} `, new Uint8Array([5])),
  );
  const xyzw: TensorSource = { ...x, name: "xyzw" }; // 56 bytes: aligned
  assertEquals(
    await serializeSafetensors([xyzw]),
    handMade(`{"xyzw":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, new Uint8Array([5])),
  );
  assertEquals(
    await serializeSafetensors([x], { metadata: {} }),
    handMade(`{"__metadata__":{},` + bare.slice(1) + " ", new Uint8Array([5])), // 71 + 1
  );
  assertEquals(await serializeSafetensors([]), handMade("{}      "));
});

// ---------------------------------------------------------------- atomic writes

Deno.test("writer is atomic: a failing write leaves no target and no temporary file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "out.safetensors");
    const fire = new RangeError("disk on fire");
    const failing: TensorSource[] = [
      { name: "a", dtype: "F32", shape: [2], data: encodeFloats([1, 2], "F32") },
      {
        name: "b",
        dtype: "F32",
        shape: [2],
        data: () => {
          throw fire;
        },
      },
    ];
    // What a data function throws comes out as it is (it is not a write error).
    const thrown = await writeSafetensors(path, failing).catch((e) => e);
    assert(thrown === fire, String(thrown));
    assertEquals([...Deno.readDirSync(dir)], []);
    for (const sshsHashes of [false, true]) {
      const late: TensorSource = { ...failing[1], data: () => Promise.reject(fire) };
      const e = await writeSafetensors(path, [failing[0], late], { sshsHashes }).catch((e) => e);
      assert(e === fire, String(e));
      assertEquals([...Deno.readDirSync(dir)], []);
    }

    // an existing target survives both a failing callback and a wrong byte count
    const good = await writeSafetensors(path, [failing[0]]);
    const before = await Deno.readFile(path);
    assertEquals(before.length, good.bytes);
    await assertRejects(() => writeSafetensors(path, failing), RangeError, "disk on fire");
    const short: TensorSource = {
      name: "c",
      dtype: "F16",
      shape: [3],
      data: () => new Uint8Array(4),
    };
    await assertRejects(
      () => writeSafetensors(path, [short]),
      SafetensorsError,
      "tensor 'c': 4 bytes given, shape [3] of F16 needs 6",
    );
    assertEquals(await Deno.readFile(path), before);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["out.safetensors"]);

    // a folder that does not exist is a one-line OutputError naming the target
    const missing = join(dir, "missing", "x.safetensors");
    await assertRejects(() => writeSafetensors(missing, [failing[0]]), OutputError, `${missing}:`);
  });
});

Deno.test("writer rejects duplicate and reserved tensor names", async () => {
  const x: TensorSource = { name: "x", dtype: "U8", shape: [1], data: new Uint8Array(1) };
  await assertRejects(
    () => serializeSafetensors([x, x]),
    SafetensorsError,
    "duplicate tensor name 'x'",
  );
  await assertRejects(
    () => serializeSafetensors([{ ...x, name: "__metadata__" }]),
    SafetensorsError,
    "'__metadata__'",
  );
});

// ---------------------------------------------------------------- validation

const F32x2 = `{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`;

/** [case, file bytes, message fragment (after "<path>: ")] */
const INVALID: [string, Uint8Array, string][] = [
  ["shorter than 8 bytes", new Uint8Array([1, 0, 0]), "only 3 bytes"],
  [
    "header length past the end",
    handMade("{}", new Uint8Array(), 100n),
    "header length 100 runs past",
  ],
  [
    "header length above 100 MB",
    handMade("{}", new Uint8Array(), 100_000_001n),
    "header length 100000001 is above the 100000000-byte limit",
  ],
  ["header length 2^64 - 1", handMade("{}", new Uint8Array(), 2n ** 64n - 1n), "is above the"],
  ["not UTF-8", handMade(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), "header is not valid UTF-8"],
  ["not JSON", handMade(`{"a":`), "header is not valid JSON"],
  ["JSON array", handMade(`[1,2]`), "header is not a JSON object"],
  ["JSON null", handMade(`null`), "header is not a JSON object"],
  ["JSON string", handMade(`"x"    `), "header is not a JSON object"],
  ["entry not an object", handMade(`{"t":5}`), "tensor 't': entry is not an object"],
  [
    "missing dtype",
    handMade(`{"t":{"shape":[2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': missing 'dtype'",
  ],
  [
    "missing shape",
    handMade(`{"t":{"dtype":"F32","data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': missing 'shape'",
  ],
  [
    "missing data_offsets",
    handMade(`{"t":{"dtype":"F32","shape":[2]}}`, new Uint8Array(8)),
    "tensor 't': missing 'data_offsets'",
  ],
  [
    "dtype not a string",
    handMade(`{"t":{"dtype":7,"shape":[2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': 'dtype' is not a string (got number)",
  ],
  [
    "shape not an array",
    handMade(`{"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': 'shape' is not an array (got string)",
  ],
  [
    "data_offsets not a pair",
    handMade(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}`, new Uint8Array(8)),
    "tensor 't': 'data_offsets' is not a pair of non-negative integers (got [0,4,8])",
  ],
  [
    "data_offsets negative",
    handMade(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}`, new Uint8Array(8)),
    "(got [-8,0])",
  ],
  [
    "data_offsets mistyped",
    handMade(`{"t":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}}`, new Uint8Array(8)),
    `(got "0-8")`,
  ],
  [
    "unknown dtype",
    handMade(`{"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': unknown dtype 'Q4'",
  ],
  [
    "negative dimension",
    handMade(`{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': shape [-2] has an invalid dimension -2",
  ],
  [
    "fractional dimension",
    handMade(`{"t":{"dtype":"F32","shape":[1.5,2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    "tensor 't': shape [1.5,2] has an invalid dimension 1.5",
  ],
  [
    "string dimension",
    handMade(`{"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    `has an invalid dimension "2"`,
  ],
  [
    "begin after end",
    handMade(`{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}`, new Uint8Array(8)),
    "tensor 't': data_offsets begin 8 is after end 4",
  ],
  [
    "byte length is not numel × size",
    handMade(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, new Uint8Array(4)),
    "tensor 't': 4 bytes of data, but shape [2] of F32 needs 8",
  ],
  [
    "numel overflows",
    handMade(
      `{"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`,
      new Uint8Array(8),
    ),
    "tensor 't': 8 bytes of data, but shape [4294967296,4294967296] of F64 needs",
  ],
  [
    "overlapping tensors",
    handMade(
      `{"a":${F32x2},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`,
      new Uint8Array(12),
    ),
    "tensor 'b' overlaps tensor 'a'",
  ],
  [
    "gap between tensors",
    handMade(
      `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`,
      new Uint8Array(12),
    ),
    "tensor 'b' leaves a gap of 4 bytes before it",
  ],
  [
    "gap before the first tensor",
    handMade(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, new Uint8Array(8)),
    "tensor 'a' leaves a gap of 4 bytes before it",
  ],
  [
    "truncated file",
    handMade(`{"a":${F32x2}}`, new Uint8Array(5)),
    "tensor 'a' ends at byte 8, past the 5-byte data section (file truncated?)",
  ],
  [
    "trailing bytes",
    handMade(`{"a":${F32x2}}`, new Uint8Array(11)),
    "data section has 3 bytes after the last tensor that no tensor covers",
  ],
  [
    "bytes but no tensors",
    handMade(`{}`, new Uint8Array(2)),
    "data section has 2 bytes after the last tensor",
  ],
  [
    "__metadata__ value not a string",
    handMade(`{"__metadata__":{"k":1}}`),
    "'__metadata__' key 'k' is not a string (got number)",
  ],
  [
    "__metadata__ a string",
    handMade(`{"__metadata__":"k"}`),
    "'__metadata__' is not an object of strings",
  ],
  [
    "__metadata__ an array",
    handMade(`{"__metadata__":["k"]}`),
    "'__metadata__' is not an object of strings",
  ],
  [
    "duplicate tensor key",
    handMade(`{"a":${F32x2},"a":${F32x2}}`, new Uint8Array(8)),
    "header has duplicate key 'a'",
  ],
  [
    "duplicate key spelled differently",
    handMade(`{"a":${F32x2},"\\u0061":${F32x2}}`, new Uint8Array(8)),
    "header has duplicate key 'a'",
  ],
  [
    "duplicate __metadata__ key",
    handMade(`{"__metadata__":{"k":"1","k":"2"}}`),
    "header has duplicate key 'k'",
  ],
  [
    "duplicate field in a tensor entry",
    handMade(
      `{"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}`,
      new Uint8Array(8),
    ),
    "header has duplicate key 'dtype'",
  ],
  [
    "tensor name with a line break",
    handMade(`{"a\\nb":{"dtype":"Q4","shape":[],"data_offsets":[0,0]}}`),
    String.raw`tensor 'a\nb': unknown dtype 'Q4'`,
  ],
];

Deno.test("every malformed header gives a distinct one-line SafetensorsError naming the file", async () => {
  await withTempDir(async (dir) => {
    // Variants of one case (same expected fragment) may share a message;
    // different cases never do.
    const caseOf = new Map<string, string>();
    for (const [i, [what, bytes, fragment]] of INVALID.entries()) {
      const path = join(dir, `bad${i}.safetensors`);
      await Deno.writeFile(path, bytes);
      const e = await assertRejects(() => SafetensorsFile.open(path), SafetensorsError);
      assert(e.message.startsWith(`${path}: `), `${what}: ${e.message}`);
      assert(e.message.includes(fragment), `${what}: expected '${fragment}' in: ${e.message}`);
      assert(!/[\n\r]/.test(e.message), `${what}: message is not one line: ${e.message}`);
      const reason = e.message.slice(path.length);
      const seen = caseOf.get(reason);
      assert(seen === undefined || seen === fragment, `'${what}' and '${seen}' read alike`);
      caseOf.set(reason, fragment);
    }
    assertEquals(new Set(caseOf.values()).size, new Set(INVALID.map(([, , f]) => f)).size);
  });
});

Deno.test("opening a missing file or a folder is a SafetensorsError naming it", async () => {
  await withTempDir(async (dir) => {
    const missing = join(dir, "none.safetensors");
    await assertRejects(
      () => SafetensorsFile.open(missing),
      SafetensorsError,
      `${missing}: cannot open (no such file)`,
    );
    await assertRejects(() => SafetensorsFile.open(dir), SafetensorsError, `${dir}:`);
  });
});

Deno.test("a file that shrinks after opening gives a truncation error naming the tensor", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "shrink.safetensors");
    await writeSafetensors(path, [{
      name: "w",
      dtype: "F32",
      shape: [4],
      data: new Uint8Array(16),
    }]);
    await using f = await SafetensorsFile.open(path);
    await Deno.truncate(path, f.size - 6);
    await assertRejects(
      () => f.readBytes("w"),
      SafetensorsError,
      `${path}: tensor 'w' is truncated (read 10 of 16 bytes`,
    );
  });
});

Deno.test("readTensors reads the named tensors exactly, adjacent ones together", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "many.safetensors");
    // Names sort as laid out: a0 a1 (adjacent), big (skipped), b0, c0 c1 c2 (adjacent).
    const sizes: [string, number][] = [
      ["a0", 3],
      ["a1", 5],
      ["big", 1 << 21],
      ["b0", 2],
      ["c0", 0],
      ["c1", 7],
      ["c2", 1],
    ];
    await writeSafetensors(
      path,
      sizes.map(([name, n], i) => ({
        name,
        dtype: "U8",
        shape: [n],
        data: new Uint8Array(n).map((_, j) => i * 31 + j),
      })),
    );
    await using f = await SafetensorsFile.open(path);
    const wanted = ["c2", "a0", "b0", "a1", "c0", "c1"];
    const got = await f.readTensors(wanted);
    assertEquals([...got.keys()].sort(), [...wanted].sort());
    for (const name of wanted) assertEquals(got.get(name), await f.readBytes(name), name);
    await Deno.truncate(path, f.size - 4);
    await assertRejects(
      () => f.readTensors(["c0", "c1", "c2"]),
      SafetensorsError,
      `${path}: tensor 'c0' is truncated (read 4 of 8 bytes`,
    );
  });
});

// ---------------------------------------------------------------- conformance files

interface ManifestFile {
  bytes: number;
  sha256: string;
  tensors: number;
  dtypes: string[];
  has_metadata: boolean;
}
const manifest = JSON.parse(await Deno.readTextFile(`${FIXTURES}/manifest.json`)) as {
  files: Record<string, ManifestFile>;
  loras: Record<string, { alphas: number[] }>;
};

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** An independent reader: JSON.parse of the header, byte offsets by hand. */
function parseByHand(file: Uint8Array) {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
  delete header.__metadata__;
  return Object.entries(
    header as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>,
  )
    .map(([name, t]) => ({
      name,
      ...t,
      view: new DataView(
        file.buffer,
        8 + n + t.data_offsets[0],
        t.data_offsets[1] - t.data_offsets[0],
      ),
    }));
}

function f16ByHand(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function decodeByHand(dtype: string, view: DataView): number[] {
  const out: number[] = [];
  const scratch = new DataView(new ArrayBuffer(4));
  for (let at = 0; at < view.byteLength;) {
    if (dtype === "F16") {
      out.push(f16ByHand(view.getUint16(at, true)));
      at += 2;
    } else if (dtype === "BF16") {
      scratch.setUint32(0, view.getUint16(at, true) * 65536);
      out.push(scratch.getFloat32(0));
      at += 2;
    } else if (dtype === "F32") {
      out.push(view.getFloat32(at, true));
      at += 4;
    } else throw new Error(`no hand decoder for ${dtype}`);
  }
  return out;
}

Deno.test("conformance files: sizes, sha256, tensor counts and dtypes match the manifest", async () => {
  for (const [name, want] of Object.entries(manifest.files)) {
    const path = `${FIXTURES}/${name}`;
    const bytes = await Deno.readFile(path);
    assertEquals(bytes.length, want.bytes, name);
    assertEquals(sha256(bytes), want.sha256, name);
    await using f = await SafetensorsFile.open(path);
    assertEquals(f.size, want.bytes);
    assertEquals(f.tensors.length, want.tensors, name);
    assertEquals([...new Set(f.tensors.map((t) => t.dtype))].sort(), [...want.dtypes].sort(), name);
    assertEquals(f.hasMetadata, want.has_metadata, name);
  }
});

Deno.test("conformance files: every float value equals a by-hand decode of its bytes", async () => {
  for (const name of Object.keys(manifest.files)) {
    const path = `${FIXTURES}/${name}`;
    const byHand = parseByHand(await Deno.readFile(path));
    await using f = await SafetensorsFile.open(path);
    assertEquals(byHand.map((t) => t.name).sort(), f.names.sort());
    for (const t of byHand) {
      if (t.dtype === "I64") continue;
      const expected = decodeByHand(t.dtype, t.view);
      const got32 = await f.readFloat32(t.name);
      const got64 = await f.readFloat64(t.name);
      for (let i = 0; i < expected.length; i++) {
        if (got32[i] !== expected[i] || got64[i] !== expected[i]) {
          throw new Error(`${name} ${t.name}[${i}]: ${got32[i]} / ${got64[i]} ≠ ${expected[i]}`);
        }
      }
      assert(expected.every(Number.isFinite), `${name} ${t.name}: non-finite value`);
    }
  }
});

Deno.test("conformance files: position_ids read as 0..76 and alphas as in the manifest", async () => {
  await using base = await SafetensorsFile.open(`${FIXTURES}/micro_sdxl_base.safetensors`);
  const ids = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids";
  assertEquals(base.info(ids).dtype, "I64");
  assertEquals(base.info(ids).shape, [1, 77]);
  const raw = await base.readBytes(ids);
  assertEquals([...new BigInt64Array(raw.buffer)], Array.from({ length: 77 }, (_, i) => BigInt(i)));
  assertEquals(await base.readScalar("conditioner.embedders.1.model.logit_scale") > 0, true);
  for (const [name, { alphas }] of Object.entries(manifest.loras)) {
    await using f = await SafetensorsFile.open(`${FIXTURES}/${name}`);
    const seen = new Set<number>();
    for (const t of f.tensors) if (t.name.endsWith(".alpha")) seen.add(await f.readScalar(t.name));
    assertEquals([...seen].sort((a, b) => a - b), alphas, name);
  }
});

Deno.test("conformance files: re-serialising them reproduces their exact bytes", async () => {
  // The conformance writer lays files out like the reference library (and
  // writes metadata keys sorted, which JSON.parse keeps), so a faithful
  // writer reproduces each file byte for byte.
  for (
    const name of [
      "micro_sdxl_base.safetensors",
      "microA_r8_te.safetensors",
      "microC_r8_bf16.safetensors",
    ]
  ) {
    await using f = await SafetensorsFile.open(`${FIXTURES}/${name}`);
    const tensors: TensorSource[] = [];
    for (const t of f.tensors) tensors.push({ ...t, data: await f.readBytes(t.name) });
    const bytes = await serializeSafetensors(tensors, { metadata: f.metadata });
    assertEquals(sha256(bytes), manifest.files[name].sha256, name);
  }
});

Deno.test("reads in any order, concurrent or into a reused buffer, return exactly the file's bytes", async () => {
  const path = `${FIXTURES}/microA_r8_te.safetensors`;
  const whole = await Deno.readFile(path);
  await using f = await SafetensorsFile.open(path);
  const expected = (name: string) => {
    const { offset, length } = f.byteRange(name);
    return whole.subarray(offset, offset + length);
  };
  // a fixed shuffle (LCG) of every tensor, then reversed, then concurrently
  let x = 12345;
  const shuffled = [...f.names].sort(() =>
    ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5
  );
  const buf = new Uint8Array(1 << 20);
  for (const name of [...shuffled, ...shuffled.toReversed()]) {
    assertEquals(await f.readBytes(name), expected(name), name);
    const view = await f.readBytes(name, { into: buf });
    assertEquals(view.buffer, buf.buffer);
    assertEquals(view, expected(name), name);
  }
  const all = await Promise.all(shuffled.map((n) => f.readBytes(n)));
  all.forEach((bytes, i) => assertEquals(bytes, expected(shuffled[i])));
  const floats = await Promise.all(shuffled.map((n) => f.readFloat32(n)));
  floats.forEach((v, i) =>
    assertEquals(v, decodeFloats(expected(shuffled[i]), "F16", Float32Array))
  );
  assert(throwsRange(() => f.readBytes(shuffled[0], { into: new Uint8Array(1) })));
  f.close();
  await assertRejects(() => f.readBytes(shuffled[0]), SafetensorsError, `${path}: file is closed`);
});

Deno.test("reads of large and small tensors mixed (window, chunked reads) return exactly the file's bytes", async () => {
  await withTempDir(async (dir) => {
    // sizes around the reader's small-read (64 KiB), window (1 MiB) and chunk (2 MiB) sizes
    const sizes = [
      3,
      65536,
      65537,
      70_000,
      5,
      1 << 20,
      9,
      (1 << 20) + 1,
      3 << 20,
      17,
      2 << 20,
      100,
      6,
    ];
    let x = 7;
    const tensors: TensorSource[] = sizes.map((n, i) => ({
      name: `t${String(i).padStart(2, "0")}`,
      dtype: "U8",
      shape: [n],
      data: Uint8Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) % 2 ** 31) >>> 16),
    }));
    const path = join(dir, "mixed.safetensors");
    await writeSafetensors(path, tensors);
    await using f = await SafetensorsFile.open(path);
    const order = [
      0,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      9,
      10,
      11,
      12,
      8,
      3,
      3,
      12,
      0,
      7,
      6,
      5,
      11,
      10,
      1,
      2,
      9,
      4,
    ];
    const buf = new Uint8Array(4 << 20);
    for (const i of order) {
      assertEquals(await f.readBytes(tensors[i].name), tensors[i].data, tensors[i].name);
      assertEquals(await f.readBytes(tensors[i].name, { into: buf }), tensors[i].data);
      const n = sizes[i];
      if (n > 2) {
        const rows: [number, number] = [Math.floor(n / 3), n - 1];
        assertEquals(
          await f.readBytes(tensors[i].name, { rows }),
          (tensors[i].data as Uint8Array).subarray(...rows),
        );
      }
    }
  });
});

function throwsRange(fn: () => unknown): boolean {
  try {
    fn();
  } catch (e) {
    return e instanceof RangeError;
  }
  return false;
}

// ---------------------------------------------------------------- header-only open

Deno.test("opening reads only the header: a 6 GiB sparse file opens and reads a small tensor cheaply", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "sparse.safetensors");
    const big = 6 * 2 ** 30;
    const json = `{"small":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
      `"big":{"dtype":"U8","shape":[${big}],"data_offsets":[8,${8 + big}]}}`;
    const small = encodeFloats([1.5, -3], "F32");
    const head = handMade(json, small);
    await Deno.writeFile(path, head);
    await Deno.truncate(path, head.length + big);
    const rssBefore = Deno.memoryUsage().rss;
    await using f = await SafetensorsFile.open(path);
    assertEquals(f.size, head.length + big);
    assertEquals([...await f.readFloat32("small")], [1.5, -3]);
    // the last rows of the big tensor, at an offset beyond 2^32
    const tail = await f.readBytes("big", { rows: [big - 16, big] });
    assertEquals(tail, new Uint8Array(16));
    assertEquals(f.byteRange("big", { rows: [big - 16, big] }).offset, head.length + big - 16);
    const grown = Deno.memoryUsage().rss - rssBefore;
    assert(grown < 64 * 2 ** 20, `RSS grew by ${grown} bytes for a ${big}-byte file`);
  });
});

Deno.test("layout orders names by UTF-8 bytes; the size without data is the header's length", async () => {
  const { encodeHeader, encodedHeaderLength, layoutTensors, safetensorsFileSize } = await import(
    "../src/safetensors/mod.ts"
  );
  const fc = (await import("fast-check")).default;
  const bytewise = (a: string, b: string) => {
    const x = utf8.encode(a), y = utf8.encode(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  };
  // Names mixing ASCII, BMP characters above the surrogates (U+E000–U+FFFF), astral ones, lone
  // surrogates and JSON escapes: where UTF-16 order and byte order differ.
  const alphabet = ["a", "b", "_", ".", "é", "中", "\uffff", "\ue000", "😀", "\ud800", '"', "\n"];
  const name = fc.array(fc.constantFrom(...alphabet), { minLength: 1, maxLength: 6 })
    .map((cs: string[]) => cs.join(""));
  const dtype = fc.constantFrom("F16", "F32", "BF16", "I64", "U8");
  const spec = fc.record({
    name,
    dtype,
    shape: fc.array(fc.integer({ min: 0, max: 70000 }), { maxLength: 3 }),
  });
  fc.assert(
    fc.property(
      fc.uniqueArray(spec, { selector: (s: { name: string }) => utf8.encode(s.name).join() }),
      fc.option(fc.dictionary(name, name), { nil: undefined }),
      (specs: { name: string; dtype: DType; shape: number[] }[], metadata) => {
        const layout = layoutTensors(specs);
        for (let i = 1; i < layout.length; i++) {
          const [a, b] = [layout[i - 1], layout[i]];
          if (a.dtype === b.dtype) assert(bytewise(a.name, b.name) < 0, `${a.name} < ${b.name}`);
        }
        const header = encodeHeader(layout, metadata);
        assertEquals(encodedHeaderLength(layout, metadata), header.byteLength);
        const data = layout.length ? layout[layout.length - 1].dataOffsets[1] : 0;
        assertEquals(safetensorsFileSize(specs, metadata), header.byteLength + data);
      },
    ),
    { numRuns: 300 },
  );
});
