/**
 * Python-compatible float parsing and formatting.
 *
 * The recipe language takes numbers with Python `float()` syntax, and the
 * original tool writes numbers into file names, metadata and logs with
 * Python's formatting. JavaScript differs in small but visible ways (`toFixed`
 * rounds exact ties away from zero, drops the sign of −0, switches to
 * exponent form at other magnitudes), so this module re-implements the
 * Python rules exactly:
 *
 * - {@link parsePythonFloat}: `float(text)`;
 * - {@link pyRepr}: `repr(x)` for a float (shortest round-trip digits);
 * - {@link pyFormatFixed}: `'%.Nf' % x` (exact binary value, ties to even);
 * - {@link fileNameNumber}: the file-name number format of the original tool.
 *
 * @module
 */

/** Non-ASCII code points that Python's `str.isspace()` accepts (ASCII ones are handled apart). */
const UNICODE_SPACES = new Set([
  0x85,
  0xa0,
  0x1680,
  0x2000,
  0x2001,
  0x2002,
  0x2003,
  0x2004,
  0x2005,
  0x2006,
  0x2007,
  0x2008,
  0x2009,
  0x200a,
  0x2028,
  0x2029,
  0x202f,
  0x205f,
  0x3000,
]);

const DECIMAL_DIGIT = /^\p{Nd}$/u;

/**
 * The decimal value of a Unicode digit (general category Nd). Unicode encodes
 * every decimal digit set as a contiguous run 0…9, and adjacent runs start at
 * a multiple of ten from the start of their block, so the offset in the
 * maximal run of digits, modulo 10, is the value.
 */
function unicodeDigitValue(cp: number): number | undefined {
  if (!DECIMAL_DIGIT.test(String.fromCodePoint(cp))) return undefined;
  let start = cp;
  while (start > 0 && DECIMAL_DIGIT.test(String.fromCodePoint(start - 1))) start--;
  return (cp - start) % 10;
}

/** Python's `float()` grammar after underscore removal and whitespace stripping. */
const FLOAT_SYNTAX = /^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)$/i;

/** The ASCII whitespace that CPython strips (`Py_ISSPACE`: C `isspace` in the C locale). */
const ASCII_SPACE = /^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g;

/**
 * Parses `text` exactly as Python's `float(text)` does, or returns
 * `undefined` where Python raises `ValueError`.
 *
 * Accepted: surrounding whitespace (including the Unicode spaces Python
 * strips), a sign, digits with an optional fraction and exponent (`1.`,
 * `.5`, `1e-3`), single underscores between digits (`1_000`), Unicode
 * decimal digits (`١٢` = 12), and case-insensitive `inf`, `infinity`, `nan`.
 * Rejected: everything else (`1__0`, `_1`, `1_`, `0x10`, `1e`, `.`, ``).
 *
 * @example
 * ```ts
 * import { parsePythonFloat } from "./pyfloat.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(parsePythonFloat(" 1_000.5 "), 1000.5);
 * assert.deepEqual(parsePythonFloat("-Infinity"), -Infinity);
 * assert.deepEqual(parsePythonFloat("0x10"), undefined);
 * ```
 */
export function parsePythonFloat(text: string): number | undefined {
  // CPython first maps non-ASCII spaces to ' ' and non-ASCII digits to ASCII
  // (`_PyUnicode_TransformDecimalAndSpaceToASCII`); any other non-ASCII
  // character makes the text invalid.
  let ascii = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp < 0x7f) {
      ascii += ch;
    } else if (UNICODE_SPACES.has(cp)) {
      ascii += " ";
    } else {
      const digit = unicodeDigitValue(cp);
      if (digit === undefined) return undefined;
      ascii += String(digit);
    }
  }
  if (ascii.includes("_")) {
    // `_Py_string_to_number_with_underscores`: each '_' must sit between two digits.
    if (!/^(?:[^_]|(?<=\d)_(?=\d))*$/.test(ascii)) return undefined;
    ascii = ascii.replaceAll("_", "");
  }
  const body = ascii.replace(ASCII_SPACE, "");
  if (!FLOAT_SYNTAX.test(body)) return undefined;
  const lower = body.toLowerCase();
  const sign = lower.startsWith("-") ? -1 : 1;
  const unsigned = lower.replace(/^[+-]/, "");
  if (unsigned === "nan") return NaN;
  if (unsigned === "inf" || unsigned === "infinity") return sign * Infinity;
  // What remains is a plain decimal literal, which JavaScript converts with
  // the same correct rounding as Python (and gives ±Infinity on overflow).
  return Number(body);
}

/** Shortest round-trip decimal digits of a finite non-zero |x| and its decimal exponent. */
function shortestDigits(x: number): { digits: string; exponent: number } {
  // `toExponential()` without an argument yields the shortest digit string that
  // round-trips, choosing the closest one on ties — the same digits as Python's repr.
  const [mantissa, exp] = Math.abs(x).toExponential().split("e");
  return { digits: mantissa.replace(".", ""), exponent: Number(exp) };
}

/**
 * Python's `repr(x)` of a float: shortest round-trip digits, `.0` on
 * integral values, exponent form when the decimal exponent is < −4 or ≥ 16
 * (with a sign and at least two exponent digits), `inf`, `-inf`, `nan`.
 *
 * @example
 * ```ts
 * import { pyRepr } from "./pyfloat.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(pyRepr(1), "1.0");
 * assert.deepEqual(pyRepr(1e-5), "1e-05");
 * assert.deepEqual(pyRepr(1e16), "1e+16");
 * assert.deepEqual(pyRepr(-0), "-0.0");
 * ```
 */
export function pyRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  if (x === 0) return `${sign}0.0`;
  const { digits, exponent } = shortestDigits(x);
  if (exponent < -4 || exponent >= 16) {
    const mantissa = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const expSign = exponent < 0 ? "-" : "+";
    return `${sign}${mantissa}e${expSign}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  const point = exponent + 1; // digits before the decimal point
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${"0".repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** The exact value of a finite double as `mantissa · 2^exponent` (mantissa ≥ 0). */
function exactBinary(x: number): { mantissa: bigint; exponent: number } {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  const fraction = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  // Subnormals have no implicit leading bit and the minimum exponent.
  return biased === 0
    ? { mantissa: fraction, exponent: -1074 }
    : { mantissa: fraction | (1n << 52n), exponent: biased - 1075 };
}

/**
 * Python's `'%.Nf' % x`: `x` rounded to `digits` decimals from its exact
 * binary value, exact ties to even; keeps the sign of negative values that
 * round to zero (`-0.00`); `inf`, `-inf`, `nan` for non-finite values.
 *
 * @example
 * ```ts
 * import { pyFormatFixed } from "./pyfloat.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(pyFormatFixed(0.125, 2), "0.12"); // an exact tie, to even
 * assert.deepEqual(pyFormatFixed(2.675, 2), "2.67"); // 2.675 is 2.67499999… in binary
 * assert.deepEqual(pyFormatFixed(-0.001, 2), "-0.00");
 * ```
 */
export function pyFormatFixed(x: number, digits: number): string {
  if (!Number.isInteger(digits) || digits < 0) {
    throw new RangeError(`pyFormatFixed: digits must be a non-negative integer, got ${digits}`);
  }
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  const { mantissa, exponent } = exactBinary(x);
  const scale = 10n ** BigInt(digits);
  let scaled: bigint; // round(|x| · 10^digits), half to even
  if (exponent >= 0) {
    scaled = (mantissa << BigInt(exponent)) * scale;
  } else {
    const numerator = mantissa * scale;
    const denominator = 1n << BigInt(-exponent);
    scaled = numerator / denominator;
    const twiceRemainder = 2n * (numerator % denominator);
    if (twiceRemainder > denominator || (twiceRemainder === denominator && (scaled & 1n) === 1n)) {
      scaled += 1n;
    }
  }
  if (digits === 0) return sign + scaled.toString();
  const text = scaled.toString().padStart(digits + 1, "0");
  return `${sign}${text.slice(0, -digits)}.${text.slice(-digits)}`;
}

/**
 * The number format of the original tool's output file names:
 * `f"{v:.2f}".rstrip("0").rstrip(".")`.
 *
 * @example
 * ```ts
 * import { fileNameNumber } from "./pyfloat.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(fileNameNumber(1), "1");
 * assert.deepEqual(fileNameNumber(0.125), "0.12");
 * assert.deepEqual(fileNameNumber(-0.001), "-0");
 * assert.deepEqual(fileNameNumber(-Infinity), "-inf");
 * ```
 */
export function fileNameNumber(x: number): string {
  return pyFormatFixed(x, 2).replace(/0+$/, "").replace(/\.$/, "");
}
