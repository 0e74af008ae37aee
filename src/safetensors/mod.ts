/**
 * safetensors I/O: validated lazy reading, float codecs, atomic writing.
 *
 * @module
 */
export * from "./dtype.ts";
export * from "./header.ts";
export * from "./reader.ts";
export * from "./writer.ts";
export * from "./hashes.ts";
export type { FileRange } from "./file_range.ts";
