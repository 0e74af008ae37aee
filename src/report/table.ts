/**
 * Plain-text tables and the number formats of the human reports.
 *
 * @module
 */

/** One column of a {@link formatTable} table. */
export interface Column {
  /** Header text. */
  readonly title: string;
  /** `right` for numbers (default `left`). */
  readonly align?: "left" | "right";
}

/**
 * Lays out rows under a header, columns separated by two spaces, each as wide
 * as its widest cell. A row that is a single string (not an array) is printed
 * as is: a separator or a section title.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatTable } from "./table.ts";
 * const text = formatTable(
 *   [{ title: "block" }, { title: "rank", align: "right" }],
 *   [["TE1", "96"], ["IN04", "1280"]],
 * );
 * assert.equal(text, ["block  rank", "TE1      96", "IN04   1280"].join("\n"));
 * ```
 */
export function formatTable(
  columns: readonly Column[],
  rows: readonly (readonly string[] | string)[],
): string {
  const widths = columns.map((c) => c.title.length);
  for (const row of rows) {
    if (typeof row === "string") continue;
    row.forEach((cell, i) => widths[i] = Math.max(widths[i] ?? 0, cell.length));
  }
  const line = (cells: readonly string[]) =>
    cells.map((cell, i) =>
      columns[i]?.align === "right" ? cell.padStart(widths[i]) : cell.padEnd(widths[i])
    ).join("  ").trimEnd();
  return [
    line(columns.map((c) => c.title)),
    ...rows.map((r) => typeof r === "string" ? r : line(r)),
  ]
    .join("\n");
}

/**
 * An integer with thousands separators (`1,234,567`).
 *
 * @example
 * ```ts
 * import { formatCount } from "./table.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatCount(1234567), "1,234,567");
 * ```
 */
export function formatCount(n: number): string {
  return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/**
 * A byte count with its MiB value: `612,345 B (0.584 MiB)`.
 *
 * @example
 * ```ts
 * import { formatBytes } from "./table.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatBytes(3 * 2 ** 20), "3,145,728 B (3.000 MiB)");
 * ```
 */
export function formatBytes(bytes: number): string {
  return `${formatCount(bytes)} B (${formatMiB(bytes)} MiB)`;
}

/**
 * Bytes in MiB with three decimals.
 *
 * @example
 * ```ts
 * import { formatMiB } from "./table.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatMiB(1536 * 1024), "1.500");
 * ```
 */
export function formatMiB(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(3);
}

/**
 * A fraction as a percentage with enough digits to tell small values apart:
 * two decimals from 1 % up, three significant digits below, `0 %` for zero,
 * `–` for a missing (null/NaN) value.
 *
 * @example
 * ```ts
 * import { formatPercent } from "./table.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatPercent(0.12345), "12.35 %");
 * assert.deepEqual(formatPercent(0.0000312), "0.00312 %");
 * assert.deepEqual(formatPercent(0), "0 %");
 * ```
 */
export function formatPercent(fraction: number | null | undefined): string {
  if (fraction === null || fraction === undefined || Number.isNaN(fraction)) return "–";
  const p = fraction * 100;
  if (p === 0) return "0 %";
  return `${Math.abs(p) >= 1 ? p.toFixed(2) : p.toPrecision(3)} %`;
}

/**
 * A real number in four significant digits (exponent form outside 1e-3…1e6),
 * `–` for a missing value, `∞`/`−∞` for infinities.
 *
 * @example
 * ```ts
 * import { formatNumber } from "./table.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatNumber(0.012345), "0.01235");
 * assert.deepEqual(formatNumber(1.5e-7), "1.500e-7");
 * assert.deepEqual(formatNumber(-Infinity), "−∞");
 * ```
 */
export function formatNumber(x: number | null | undefined): string {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === Infinity) return "∞";
  if (x === -Infinity) return "−∞";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e6 ? String(Number(x.toPrecision(4))) : x.toExponential(3);
}
