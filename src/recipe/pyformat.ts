/**
 * Python-compatible text formatting: the `%` operator (for log lines that must
 * match the original tool's byte for byte) and `json.dumps` with its default
 * options (for the `resize_params` metadata and JSON caches).
 *
 * @module
 */

import { pyFormatFixed, pyRepr } from "./pyfloat.ts";

/** A value `%` formatting accepts: numbers are Python floats, bigints Python ints. */
export type PyFormatArg = string | number | bigint | boolean;

const CONVERSION = /%([-+ 0#]*)(\d+)?(?:\.(\d+))?([difFs%])/g;

/**
 * Python's printf-style `format % args` for the conversions log lines use:
 * `%d`/`%i` (integers, floats truncated), `%f`/`%F` (exact, ties to even),
 * `%s`, `%%`, with the flags `-` (left-align), `0` (zero padding), `+`,
 * space, a width, and a precision.
 *
 * A `number` is formatted as a Python float (`%s` of 1 gives `1.0`); pass a
 * `bigint` where Python would hold an int.
 *
 * @example
 * ```ts
 * import { pyPercentFormat } from "./pyformat.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(pyPercentFormat("dim:%3d->%-3d %6.2f%%", [32, 5, 3.192]), "dim: 32->5     3.19%");
 * ```
 */
export function pyPercentFormat(format: string, args: readonly PyFormatArg[]): string {
  let next = 0;
  const text = format.replace(
    CONVERSION,
    (_match, flags: string, width: string | undefined, precision: string | undefined, type) => {
      if (type === "%") return "%";
      if (next >= args.length) {
        throw new TypeError(`not enough arguments for format string ${JSON.stringify(format)}`);
      }
      const digits = precision === undefined ? undefined : Number(precision);
      const { sign, body } = convert(args[next++], type, digits, flags);
      // Zero padding is for numbers only.
      const padFlags = type === "s" ? flags.replaceAll("0", "") : flags;
      return pad(sign, body, width === undefined ? 0 : Number(width), padFlags);
    },
  );
  if (next !== args.length) {
    throw new TypeError(`not all arguments converted in format string ${JSON.stringify(format)}`);
  }
  return text;
}

/** One conversion, split into its sign and the rest (so that zero padding goes between). */
function convert(
  arg: PyFormatArg,
  type: string,
  precision: number | undefined,
  flags: string,
): { sign: string; body: string } {
  let text: string;
  switch (type) {
    case "d":
    case "i": {
      const value = typeof arg === "bigint" ? arg : BigInt(Math.trunc(toNumber(arg, type)));
      const digits = (value < 0n ? -value : value).toString().padStart(precision ?? 0, "0");
      text = value < 0n ? `-${digits}` : digits;
      break;
    }
    case "f":
    case "F":
      text = pyFormatFixed(toNumber(arg, type), precision ?? 6);
      if (type === "F") text = text.toUpperCase();
      break;
    default: { // "s": no sign handling
      const body = typeof arg === "number"
        ? pyRepr(arg)
        : typeof arg === "boolean"
        ? (arg ? "True" : "False")
        : String(arg);
      return { sign: "", body: precision === undefined ? body : body.slice(0, precision) };
    }
  }
  if (text.startsWith("-")) return { sign: "-", body: text.slice(1) };
  return { sign: flags.includes("+") ? "+" : flags.includes(" ") ? " " : "", body: text };
}

function toNumber(arg: PyFormatArg, type: string): number {
  const value = typeof arg === "number" ? arg : typeof arg === "string" ? undefined : Number(arg);
  if (value === undefined) throw new TypeError(`%${type} format: a number is required`);
  if ((type === "d" || type === "i") && !Number.isFinite(value)) {
    throw new RangeError(`%${type} format: cannot convert ${pyRepr(value)} to an integer`);
  }
  return value;
}

/** Pads to `width`: spaces on the left, or on the right with '-', or zeros after the sign with '0'. */
function pad(sign: string, body: string, width: number, flags: string): string {
  const fill = width - sign.length - body.length;
  if (fill <= 0) return sign + body;
  if (flags.includes("-")) return sign + body + " ".repeat(fill);
  if (flags.includes("0")) return sign + "0".repeat(fill) + body;
  return " ".repeat(fill) + sign + body;
}

/**
 * A JSON value as Python's `json.dumps` sees it: a `number` is a Python float
 * (written with `repr`, `1.0`, `NaN`, `-Infinity`), a `bigint` a Python int.
 */
export type PyJson =
  | null
  | boolean
  | string
  | number
  | bigint
  | readonly PyJson[]
  | { readonly [key: string]: PyJson };

/**
 * Python's `json.dumps(value)` with default options: separators `", "` and
 * `": "`, non-ASCII characters escaped as `\uXXXX` (surrogate pairs beyond
 * the BMP), floats in `repr` form with the non-standard `NaN`, `Infinity`,
 * `-Infinity`, ints (bigints) as integers. Object keys keep insertion order.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pyJsonDumps } from "./pyformat.ts";
 * const text = pyJsonDumps({ size: null, thr: -3.5, rescale: 1, n: 3n, name: "é" });
 * assert.equal(text, '{"size": null, "thr": -3.5, "rescale": 1.0, "n": 3, "name": "\\u00e9"}');
 * ```
 */
export function pyJsonDumps(value: PyJson): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "string":
      return pyJsonString(value);
    case "bigint":
      return value.toString();
    case "number":
      if (Number.isNaN(value)) return "NaN";
      if (!Number.isFinite(value)) return value > 0 ? "Infinity" : "-Infinity";
      return pyRepr(value);
    case "object":
      if (Array.isArray(value)) return `[${value.map(pyJsonDumps).join(", ")}]`;
      return `{${
        Object.entries(value as { readonly [key: string]: PyJson })
          .map(([key, item]) => `${pyJsonString(key)}: ${pyJsonDumps(item)}`)
          .join(", ")
      }}`;
    default:
      throw new TypeError(`Object of type ${typeof value} is not JSON serializable`);
  }
}

const SHORT_ESCAPES: Record<string, string> = {
  '"': '\\"',
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\b": "\\b",
  "\f": "\\f",
};

/** `json.dumps` of a string with `ensure_ascii=True` (escapes all but printable ASCII). */
function pyJsonString(text: string): string {
  // Iterating UTF-16 code units writes astral characters as surrogate pairs, as Python does.
  const escaped = text.replace(
    /["\\]|[^ -~]/g,
    (ch) => SHORT_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  return `"${escaped}"`;
}
