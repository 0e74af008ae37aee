/**
 * Benchmark fixtures: a synthetic SDXL base and LoRAs, generated once and
 * cached under `.bench/` (git-ignored). A file is regenerated when it is
 * missing, unreadable, or was written by another generator version or with
 * other parameters (read from its `__metadata__`).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import {
  LOCON_GROUPS,
  sdxlWidths,
  SYNTHETIC_METADATA_KEY,
  SYNTHETIC_VERSION,
  writeSyntheticBase,
  writeSyntheticLoha,
  writeSyntheticLokr,
  writeSyntheticLora,
} from "../src/testing/mod.ts";

/** Folder of the cached fixtures (`<repo>/.bench/`). */
export const BENCH_DIR: string = fileURLToPath(new URL("../.bench/", import.meta.url));

/** Paths of the benchmark fixtures. */
export interface BenchFixtures {
  /** Synthetic SGM SDXL base checkpoint (6.9 GB at full size). */
  readonly base: string;
  /** Rank-32 kohya LoRA over the 986 default layers (228 MB at full size). */
  readonly lora: string;
  /** Rank-32 (3×3 conv rank 16) LoCon, when asked for. */
  readonly locon?: string;
}

/** Options of {@link ensureBenchFixtures}. */
export interface BenchFixtureOptions {
  /** Width scale (default 1: full size). */
  readonly scale?: number;
  /** Also ensure the LoCon (default false). */
  readonly locon?: boolean;
  /** Receives progress lines (default: none). */
  readonly log?: (line: string) => void;
}

const SEED = 0;
const RANK = 32;

/** Whether `path` holds a file this generator wrote with these parameters. */
async function isFresh(path: string, expected: Record<string, unknown>): Promise<boolean> {
  try {
    await using f = await SafetensorsFile.open(path);
    const tag = JSON.parse(f.metadata[SYNTHETIC_METADATA_KEY] ?? "null");
    return tag !== null && Object.entries(expected).every(([k, v]) => tag[k] === v);
  } catch {
    return false;
  }
}

async function ensure(
  path: string,
  expected: Record<string, unknown>,
  write: () => Promise<unknown>,
  log: (line: string) => void,
): Promise<string> {
  if (await isFresh(path, expected)) return path;
  log(`generating ${path} …`);
  const t0 = performance.now();
  await write();
  log(`  done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return path;
}

/**
 * Ensures the benchmark fixtures of a scale exist and are current; returns
 * their paths. Full size: `.bench/sdxl_base_full.safetensors`,
 * `.bench/lora_r32.safetensors` (and `.bench/locon_r32.safetensors`).
 *
 * @example
 * ```ts ignore
 * import { ensureBenchFixtures } from "./fixtures.ts";
 * const { base, lora } = await ensureBenchFixtures({ scale: 1 / 16, log: console.log });
 * ```
 */
export async function ensureBenchFixtures(
  options: BenchFixtureOptions = {},
): Promise<BenchFixtures> {
  const scale = options.scale ?? 1;
  const log = options.log ?? (() => {});
  const h = sdxlWidths(scale).headWidth;
  const suffix = h === 64 ? "" : `_h${h}`;
  await Deno.mkdir(BENCH_DIR, { recursive: true });
  const common = { version: SYNTHETIC_VERSION, seed: SEED, scale };

  const basePath = join(BENCH_DIR, `sdxl_base_${h === 64 ? "full" : `h${h}`}.safetensors`);
  const base = await ensure(
    basePath,
    { ...common, kind: "base" },
    () => writeSyntheticBase(basePath, { scale, seed: SEED }),
    log,
  );
  const loraPath = join(BENCH_DIR, `lora_r${RANK}${suffix}.safetensors`);
  const lora = await ensure(
    loraPath,
    { ...common, kind: "lora", rank: RANK },
    () => writeSyntheticLora(loraPath, { scale, seed: SEED, rank: RANK }),
    log,
  );
  if (!options.locon) return { base, lora };
  const loconPath = join(BENCH_DIR, `locon_r${RANK}${suffix}.safetensors`);
  const locon = await ensure(
    loconPath,
    { ...common, kind: "lora", rank: RANK, convRank: RANK / 2 },
    () =>
      writeSyntheticLora(loconPath, {
        scale,
        seed: SEED,
        rank: RANK,
        convRank: RANK / 2,
        include: LOCON_GROUPS,
      }),
    log,
  );
  return { base, lora, locon };
}

/**
 * The full-size fixtures (generated on first use: about a minute and 7.2 GB).
 *
 * @example
 * ```ts ignore
 * import { ensureFullSizeFixtures } from "./fixtures.ts";
 * const { base, lora } = await ensureFullSizeFixtures({ log: console.error });
 * ```
 */
export function ensureFullSizeFixtures(
  options: Omit<BenchFixtureOptions, "scale"> = {},
): Promise<BenchFixtures> {
  return ensureBenchFixtures({ ...options, scale: 1 });
}

/** Paths of the LyCORIS benchmark fixtures: every UNet attention and MLP linear, four ways. */
export interface LycorisBenchFixtures {
  /** The synthetic SDXL base. */
  readonly base: string;
  /** Rank-32 kohya LoRA over the same layers. */
  readonly lora: string;
  /** LoKr, factor 8, both factors full (LyCORIS's default for a large dim). */
  readonly lokr8: string;
  /** LoHa of rank 8 × 8 (an exact LoRA of rank 64). */
  readonly loha8: string;
  /** LoHa of rank 16 × 16 (an exact LoRA of rank 256). */
  readonly loha16: string;
}

/**
 * Ensures the LyCORIS benchmark fixtures of a scale exist (besides the base of
 * {@link ensureBenchFixtures}): `.bench/lycoris_{lora_r32,lokr_f8,loha_r8,loha_r16}[_hN]`.
 *
 * @example
 * ```ts ignore
 * import { ensureLycorisBenchFixtures } from "./fixtures.ts";
 * const { base, lokr8 } = await ensureLycorisBenchFixtures({ scale: 1 / 16, log: console.log });
 * ```
 */
export async function ensureLycorisBenchFixtures(
  options: Omit<BenchFixtureOptions, "locon"> = {},
): Promise<LycorisBenchFixtures> {
  const scale = options.scale ?? 1;
  const log = options.log ?? (() => {});
  const { base } = await ensureBenchFixtures({ scale, log });
  const h = sdxlWidths(scale).headWidth;
  const suffix = h === 64 ? "" : `_h${h}`;
  const include = ["unet_attn", "unet_ff"] as const;
  const file = async (
    variant: string,
    write: (path: string, metadata: Record<string, string>) => Promise<unknown>,
  ) => {
    const path = join(BENCH_DIR, `lycoris_${variant}${suffix}.safetensors`);
    const tag = { version: SYNTHETIC_VERSION, seed: SEED, scale, kind: "lycoris-bench", variant };
    return await ensure(
      path,
      tag,
      () => write(path, { [SYNTHETIC_METADATA_KEY]: JSON.stringify(tag) }),
      log,
    );
  };
  return {
    base,
    lora: await file(
      "lora_r32",
      (path, metadata) =>
        writeSyntheticLora(path, { scale, seed: SEED, rank: RANK, include, metadata }),
    ),
    lokr8: await file(
      "lokr_f8",
      (path, metadata) =>
        writeSyntheticLokr(path, { scale, seed: SEED, factor: 8, include, metadata }),
    ),
    loha8: await file(
      "loha_r8",
      (path, metadata) =>
        writeSyntheticLoha(path, { scale, seed: SEED, rank: 8, include, metadata }),
    ),
    loha16: await file(
      "loha_r16",
      (path, metadata) =>
        writeSyntheticLoha(path, { scale, seed: SEED, rank: 16, include, metadata }),
    ),
  };
}
