// Python number syntax and formatting. Expected strings are Python 3.11's
// output for the same calls (float(), repr(), '%' formatting, json.dumps).
import { assert, assertEquals, assertStrictEquals } from "./assert.ts";
import { fileNameNumber, parsePythonFloat, pyFormatFixed, pyRepr } from "../src/recipe/pyfloat.ts";
import { pyJsonDumps, pyPercentFormat } from "../src/recipe/pyformat.ts";

/** A deterministic stream of arbitrary doubles (all bit patterns, NaNs skipped). */
function* randomDoubles(count: number, seed: number): Generator<number> {
  let state = BigInt(seed);
  const view = new DataView(new ArrayBuffer(8));
  for (let i = 0; i < count;) {
    state = (state * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    view.setBigUint64(0, state);
    const x = view.getFloat64(0);
    if (Number.isNaN(x)) continue;
    i++;
    yield x;
  }
}

Deno.test("parsePythonFloat accepts Python float() syntax", () => {
  const cases: [string, number][] = [
    ["1", 1],
    ["-1", -1],
    ["+2.5", 2.5],
    ["1.", 1],
    [".5", 0.5],
    ["-.5e-3", -0.0005],
    ["1e-3", 0.001],
    ["1E+3", 1000],
    ["007", 7],
    ["1_000", 1000],
    ["1e1_0", 1e10],
    [" 1_000.000_1e1_0 ", 10000001000000],
    [" \t\n\v\f\r1\r\n", 1],
    ["\u00a01\u2003", 1], // no-break space, em space
    ["\u20001\u3000", 1],
    ["\u00851", 1], // NEL
    ["\u0661\u0662", 12], // Arabic-Indic digits
    ["\u0661_\u0662", 12],
    ["\u{1d7cf}\u{1d7d0}", 12], // mathematical bold digits
    ["inf", Infinity],
    ["+inf", Infinity],
    ["-Infinity", -Infinity],
    ["iNfInItY", Infinity],
    ["1e400", Infinity],
    ["-1e400", -Infinity],
    ["1e-400", 0],
    ["0.1", 0.1],
    ["2.675", 2.675],
  ];
  for (const [text, value] of cases) {
    assertStrictEquals(parsePythonFloat(text), value, JSON.stringify(text));
  }
  assert(Object.is(parsePythonFloat("-0"), -0));
  assert(Object.is(parsePythonFloat("-0.0e5"), -0));
  for (const text of ["nan", "NaN", "-nan", "+NAN", " nan "]) {
    assert(Number.isNaN(parsePythonFloat(text)), text);
  }
});

Deno.test("parsePythonFloat rejects what Python float() rejects", () => {
  const rejected = [
    "",
    " ",
    ".",
    "-",
    "+",
    "e5",
    "1e",
    "1e+",
    "1__0",
    "_1",
    "1_",
    "1_e5",
    "1e_5",
    "1._5",
    "1_.5",
    "0x10",
    "0b1",
    "1 0",
    "in f",
    "infinit",
    "infinityy",
    "nan(1)",
    "+-1",
    "--1",
    "1.2.3",
    "1,5",
    "1d",
    "1f",
    "\x1c1", // ASCII information separators are Unicode spaces, but Python keeps them
    "1\x1f",
    "\ufeff1", // BOM is not whitespace
    "\x001",
    "\u00b2", // superscript two is a digit but not a decimal digit
    "\uff49\uff4e\uff46", // fullwidth "inf" (fullwidth digits are decimal digits, though)
  ];
  for (const text of rejected) {
    assertStrictEquals(parsePythonFloat(text), undefined, JSON.stringify(text));
  }
  assertStrictEquals(parsePythonFloat("\uff11"), 1); // fullwidth digit one (Nd)
});

Deno.test("pyRepr matches Python repr(float)", () => {
  const cases: [number, string][] = [
    [1, "1.0"],
    [0, "0.0"],
    [-0, "-0.0"],
    [0.1, "0.1"],
    [0.1 + 0.2, "0.30000000000000004"],
    [-3.5, "-3.5"],
    [1e-5, "1e-05"],
    [1.5e-5, "1.5e-05"],
    [0.0001, "0.0001"],
    [0.00012345, "0.00012345"],
    [1e16, "1e+16"],
    [1.2345e16, "1.2345e+16"],
    [1e15, "1000000000000000.0"],
    [9999999999999998, "9999999999999998.0"],
    [123456789, "123456789.0"],
    [1e22, "1e+22"],
    [1e100, "1e+100"],
    [5e-324, "5e-324"],
    [1.7976931348623157e308, "1.7976931348623157e+308"],
    [Math.fround(-Math.PI), "-3.1415927410125732"],
    [Math.fround(-0.6774702), "-0.6774702072143555"],
    [Infinity, "inf"],
    [-Infinity, "-inf"],
    [NaN, "nan"],
  ];
  for (const [x, text] of cases) assertStrictEquals(pyRepr(x), text, String(x));
});

Deno.test("pyRepr round-trips through parsePythonFloat", () => {
  for (const x of randomDoubles(20000, 7)) {
    const text = pyRepr(x);
    assert(Object.is(parsePythonFloat(text), x), `${x} -> ${text}`);
  }
});

Deno.test("pyFormatFixed rounds the exact binary value, ties to even", () => {
  const cases: [number, number, string][] = [
    [0.125, 2, "0.12"], // exact tie → even
    [0.375, 2, "0.38"], // exact tie → even
    [0.625, 2, "0.62"],
    [2.675, 2, "2.67"], // binary value below the tie
    [0.005, 2, "0.01"], // binary value above the tie
    [0.015, 2, "0.01"], // binary value below the tie
    [1.005, 2, "1.00"],
    [0.5, 0, "0"],
    [1.5, 0, "2"],
    [2.5, 0, "2"],
    [-2.5, 0, "-2"],
    [-0.001, 2, "-0.00"],
    [-0, 2, "-0.00"],
    [0, 2, "0.00"],
    [1, 6, "1.000000"],
    [0.1, 20, "0.10000000000000000555"],
    [5e-324, 2, "0.00"],
    [2 ** 70, 1, "1180591620717411303424.0"],
    [1e22, 2, "10000000000000000000000.00"],
    [-1e21, 0, "-1000000000000000000000"],
    [Infinity, 2, "inf"],
    [-Infinity, 3, "-inf"],
    [NaN, 2, "nan"],
  ];
  for (const [x, digits, text] of cases) {
    assertStrictEquals(pyFormatFixed(x, digits), text, `${x} .${digits}f`);
  }
});

Deno.test("pyFormatFixed agrees with exact rational rounding on dyadic values", () => {
  // x = k / 2^j exactly; x·10^d = k·10^d / 2^j, rounded half to even with integers.
  let ties = 0;
  let state = 12345;
  for (let n = 0; n < 5000; n++) {
    state ^= state << 13; // xorshift32
    state ^= state >>> 17;
    state ^= state << 5;
    const j = (state >>> 0) % 8;
    const k = ((state >>> 3) % 2 ** 20) - 2 ** 19;
    const x = k / 2 ** j;
    for (const digits of [0, 1, 2, 3]) {
      const numerator = BigInt(Math.abs(k)) * 10n ** BigInt(digits);
      const denominator = 2n ** BigInt(j);
      let q = numerator / denominator;
      const twice = 2n * (numerator % denominator);
      if (twice === denominator) ties++;
      if (twice > denominator || (twice === denominator && q % 2n === 1n)) q++;
      const text = q.toString().padStart(digits + 1, "0");
      const unsigned = digits === 0 ? text : `${text.slice(0, -digits)}.${text.slice(-digits)}`;
      const expected = (k < 0 ? "-" : "") + unsigned;
      assertStrictEquals(pyFormatFixed(x, digits), expected, `${x} .${digits}f`);
    }
  }
  assert(ties > 500, `only ${ties} exact ties exercised`);
});

Deno.test("fileNameNumber gives the original's file-name numbers", () => {
  const cases: [number, string][] = [
    [1.0, "1"],
    [0.75, "0.75"],
    [1 / 3, "0.33"],
    [0.125, "0.12"],
    [0.375, "0.38"],
    [0.005, "0.01"],
    [0.015, "0.01"],
    [2.675, "2.67"],
    [-3.5, "-3.5"],
    [-2.871, "-2.87"],
    [-0.001, "-0"],
    [-0.0, "-0"],
    [0.0, "0"],
    [10.0, "10"],
    [1e-7, "0"],
    [0.995, "0.99"],
    [1.005, "1"],
    [-Infinity, "-inf"],
    [Infinity, "inf"],
    [NaN, "nan"],
    [100, "100"],
    [0.625, "0.62"],
  ];
  for (const [x, text] of cases) assertStrictEquals(fileNameNumber(x), text, String(x));
});

Deno.test("pyPercentFormat matches Python's % operator", () => {
  const cases: [string, (string | number | bigint | boolean)[], string][] = [
    ["%06.2f", [Infinity], "000inf"],
    ["%-6.2f|", [-1.5], "-1.50 |"],
    ["%+.1f", [2], "+2.0"],
    ["% d", [5], " 5"],
    ["%05d", [-42], "-0042"],
    ["%-05d|", [42], "42   |"],
    ["%F", [NaN], "NAN"],
    ["%f", [1], "1.000000"],
    ["%3d", [1000], "1000"],
    ["%d", [3.7], "3"],
    ["%d", [-3.7], "-3"],
    ["%.3d", [5], "005"],
    ["%+06.1f", [-0], "-000.0"],
    ["%s", [1], "1.0"],
    ["%s", [7n], "7"],
    ["%s", [true], "True"],
    ["%5s|", ["ab"], "   ab|"],
    ["%05s|", ["ab"], "   ab|"],
    ["%+5s|", ["ab"], "   ab|"],
    ["%.1s", ["abc"], "a"],
    ["100%% of %d", [3n], "100% of 3"],
    ["dim:%3d->%-3d rle_lora:%6.2f%%", [32, 5, 3.192], "dim: 32->5   rle_lora:  3.19%"],
  ];
  for (const [format, args, text] of cases) {
    assertStrictEquals(pyPercentFormat(format, args), text, format);
  }
});

Deno.test("pyPercentFormat rejects argument count mismatches and non-numbers", () => {
  for (
    const [format, args] of [["%d %d", [1]], ["%d", [1, 2]], ["%d", ["x"]], ["%d", [Infinity]]] as [
      string,
      (string | number)[],
    ][]
  ) {
    let threw = false;
    try {
      pyPercentFormat(format, args);
    } catch {
      threw = true;
    }
    assert(threw, `${format} ${JSON.stringify(args)}`);
  }
});

Deno.test("pyJsonDumps matches json.dumps defaults", () => {
  assertStrictEquals(
    pyJsonDumps({
      a: [1, 2n, null, true, 'é\n"\\\x7f\x01😀'],
      b: NaN,
      c: -Infinity,
      d: {},
      e: [],
    }),
    '{"a": [1.0, 2, null, true, "\\u00e9\\n\\"\\\\\\u007f\\u0001\\ud83d\\ude00"], "b": NaN, ' +
      '"c": -Infinity, "d": {}, "e": []}',
  );
  assertStrictEquals(
    pyJsonDumps([Infinity, -0, 1e-5, 0.1, false]),
    "[Infinity, -0.0, 1e-05, 0.1, false]",
  );
  assertStrictEquals(pyJsonDumps("\t\b\f\r/<>~ "), '"\\t\\b\\f\\r/<>~ "');
  // A lone surrogate is escaped, as Python does for a str holding one.
  assertStrictEquals(pyJsonDumps("\ud800x"), '"\\ud800x"');
});

Deno.test("pyJsonDumps output is valid JSON (finite values) that parses back", () => {
  const value = { name: "ü 😀 \u0000 \u2028", list: [0.5, -3, 1e300], nested: { k: [[]] } };
  assertEquals(JSON.parse(pyJsonDumps(value)), value);
});
