/**
 * Loads a binary asset that ships beside the code (the WASM kernels, WGSL
 * shaders): `file:` URLs are read from disk — which also covers a
 * `deno compile` binary built with `--include` — and anything else (a JSR
 * `https:` module URL) is fetched.
 *
 * @module
 */

import { BackendError } from "../errors.ts";

/**
 * Reads the bytes of an asset addressed relative to a module, e.g.
 * `new URL("./wasm/kernels.wasm", import.meta.url)`.
 *
 * @example
 * ```ts
 * import { loadAsset } from "./asset.ts";
 * const bytes = await loadAsset(new URL("./asset.ts", import.meta.url));
 * if (bytes.byteLength === 0) throw new Error("empty asset");
 * ```
 */
export async function loadAsset(url: URL): Promise<Uint8Array<ArrayBuffer>> {
  try {
    if (url.protocol === "file:") return await Deno.readFile(url);
    const response = await fetch(url);
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(`HTTP ${response.status} ${response.statusText}`);
    }
    return new Uint8Array(await response.arrayBuffer());
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Error
      ? e.message
      : String(e);
    throw new BackendError(`cannot load ${url.href}: ${why}`, { cause: e });
  }
}
