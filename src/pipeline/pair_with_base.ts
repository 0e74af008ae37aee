/**
 * Pairing stage: each layer of a LoRA meets the base weight it modifies; what pairs with
 * nothing is copied unchanged or dropped (docs/design.md, "Tensors that are not resized are
 * kept"), and the log says so in the original's words and order.
 *
 * @module
 */

import type { LoraLayer, LoraModel, RawTensor } from "../lora/lora_file.ts";
import { type PairedLayer, pairLayers, unmatchedBaseMessage } from "../lora/pairing.ts";
import { untouchedSummary } from "../report/untouched.ts";
import { namingLine } from "./output_naming.ts";
import type { Session } from "./session.ts";

/** The layers of a LoRA that will be resized, and the tensors carried over as they are. */
export interface PairedLora {
  /** Layers with a base weight, in name order. */
  readonly paired: readonly PairedLayer[];
  /** Tensors copied to every output unchanged (empty with `dropUnmapped`). */
  readonly passThrough: readonly RawTensor[];
}

/**
 * Opens the base (once per run) and pairs `model`'s layers with its weights; without a base,
 * every layer the LoRA holds is resized as it is (docs/design.md, "Resizing without a base").
 */
export async function pairWithBase(session: Session, model: LoraModel): Promise<PairedLora> {
  const { log, dropUnmapped } = session.options;
  await session.openBase();
  log("INFO", `Processing LoRA model: ${model.entry}`);
  log("INFO", namingLine(model, session.options.naming));
  if (!session.hasBase) {
    log("INFO", `No base checkpoint: resizing all ${model.layers.length} layers of ${model.entry}`);
    const paired = model.layers.map((layer) => ({ layer }));
    const passThrough = dropUnmapped ? [] : model.passThrough;
    reportPassThrough(session, model, [], passThrough);
    return { paired, passThrough };
  }
  const pairing = pairLayers(model, session.checkpoint);
  // dropUnmapped keeps nothing but resized layers, as the original did.
  const passThrough = dropUnmapped ? [] : [...model.passThrough];
  for (const layer of pairing.unmapped) {
    if (dropUnmapped) {
      log(
        "WARNING",
        `LoRA key '${layer.name}' found in file but is not mapped to any base layer by the checkpoint's key_mapper.`,
      );
    } else {
      log("DEBUG", `LoRA layer '${layer.name}' maps to no base weight: copied unchanged`);
      passThrough.push(...layer.tensors);
    }
  }
  // One line at -v for the hundreds of base weights a partial LoRA leaves alone; each at -vv.
  const untouched = untouchedSummary(session.checkpoint.entries(), pairing.unmatchedBase);
  if (untouched) log("INFO", untouched);
  for (const base of pairing.unmatchedBase) log("DEBUG", unmatchedBaseMessage(base));
  log(
    "INFO",
    `Mapped ${pairing.paired.length} LoRA layers from file to base layers (out of ${model.layers.length} LoRA alpha keys in file).`,
  );
  reportPassThrough(session, model, pairing.unmapped, passThrough);
  const short = pairing.paired.filter((p) => p.matchedBy === "short");
  if (short.length > 0) {
    log(
      "WARNING",
      `${short.length} layers of ${model.entry} matched only through lossy short aliases (e.g. '${
        short[0].layer.name
      }' → '${short[0].base.label}'); check the pairing with -v`,
    );
  }
  return { paired: pairing.paired, passThrough };
}

/** One warning that sums up what is copied (or dropped) without being resized. */
function reportPassThrough(
  session: Session,
  model: LoraModel,
  unmapped: readonly LoraLayer[],
  passThrough: readonly RawTensor[],
): void {
  const { log, dropUnmapped } = session.options;
  const parts: string[] = [];
  if (unmapped.length > 0) {
    parts.push(`${unmapped.length} LoRA layers with no base weight`);
  }
  for (const [kind, n] of Object.entries(model.passThroughSummary.byKind)) {
    if (n > 0) parts.push(`${n} ${kind} tensors`);
  }
  if (parts.length === 0) return;
  const count = dropUnmapped
    ? model.passThrough.length + unmapped.reduce((n, l) => n + l.tensors.length, 0)
    : passThrough.length;
  log(
    "WARNING",
    dropUnmapped
      ? `Dropping ${count} tensors of ${model.entry} that are not part of a resized layer: ${
        parts.join(", ")
      }`
      : `Copying ${count} tensors of ${model.entry} that are not part of a resized layer unchanged: ${
        parts.join(", ")
      } (--drop_unmapped drops them)`,
  );
}
