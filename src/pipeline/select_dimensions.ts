/**
 * Which dimensions a recipe keeps: by threshold, or by a size target counted the chosen way
 * (docs/design.md, "Size targets bound the whole file").
 *
 * @module
 */

import { RecipeError } from "../errors.ts";
import { outputElementSize, outputFileSize, type OutputShapeFn } from "../output.ts";
import { rankCaps, type Recipe } from "../recipe/recipe.ts";
import { kohyaLayerOf } from "../recipe/kohya_layers.ts";
import { capScores } from "../recipe/kohya.ts";
import {
  formatTotalRankLine,
  selectBySizeFile,
  selectBySizeOriginal,
  selectByThreshold,
  type Selection,
  type SizeCut,
} from "../recipe/select.ts";
import type { PreparedLora } from "./prepare_lora.ts";
import type { Session } from "./session.ts";

/**
 * The longest text a threshold can take in `resize_params`: size mode measures candidate files
 * with it, since the threshold is not known until the cut is, so the real file is never larger.
 */
const WIDEST_THRESHOLD = -1.2345678901234567e-308;

/** The dimensions `recipe` keeps of each layer of `lora`, given their scores. */
export function selectDimensions(
  session: Session,
  lora: PreparedLora,
  recipe: Recipe,
  scores: Float64Array[],
  shapeFor: OutputShapeFn,
): Selection & { cut?: SizeCut } {
  const { sizeAccounting, outputDtype, log } = session.options;
  const caps = rankCaps(recipe);
  if (caps.rank !== undefined || caps.convRank !== undefined) {
    const shapes = lora.layers.map((p) => kohyaLayerOf(p.layer, new Float64Array()));
    scores = capScores(scores, shapes, caps);
  }
  if (recipe.sizeMiB === undefined) return selectByThreshold(scores, recipe.threshold!);
  const elementSize = outputElementSize(outputDtype);
  let selection: Selection & { cut?: SizeCut };
  if (sizeAccounting === "original") {
    selection = selectBySizeOriginal(
      lora.layers.map((p, i) => ({
        scores: scores[i],
        out: p.layer.factors.out,
        inFlat: p.layer.factors.inFlat,
      })),
      { targetMiB: recipe.sizeMiB, elementSize },
    );
  } else {
    const s = selectBySizeFile(scores, {
      targetMiB: recipe.sizeMiB,
      fileSize: (kept) => outputFileSize(shapeFor(kept, WIDEST_THRESHOLD)),
      dimensionBytes: lora.layers.map((p) =>
        (p.layer.factors.out + p.layer.factors.inFlat) * elementSize
      ),
    });
    if (!s.fits) {
      throw new RecipeError(
        `${lora.model.entry}: recipe ${recipe.text}: even an output without any resized layer (${s.fileBytes} bytes) is larger than size=${recipe.sizeMiB} MiB`,
        { file: lora.model.entry, key: "size" },
      );
    }
    // Report the real size, measured with the real threshold text.
    const real = () => outputFileSize(shapeFor(s.keep.map((k) => k.length), s.threshold));
    selection = s.cut ? { ...s, cut: { ...s.cut, realBytes: real() } } : s;
  }
  if (selection.cut) log("INFO", formatTotalRankLine(selection.cut));
  return selection;
}
