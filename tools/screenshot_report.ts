#!/usr/bin/env -S deno run -A
/**
 * Renders the example HTML report (conformance LoRA A on the micro SDXL base,
 * two recipes) to `docs/report-example.html` and screenshots it with headless
 * Chromium to `docs/report-example.png`.
 *
 * ```
 * deno run -A tools/screenshot_report.ts [--chromium PATH] [--width 1400] [--height 2600]
 * ```
 *
 * Checks on the way that the page is self-contained: no script, stylesheet,
 * image or font reference, and no request in Chromium's network log.
 * Needs Chromium (`apt-get install -y chromium` on Debian).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { plan } from "../src/resize.ts";
import { externalReferences, renderReport } from "../src/report/html.ts";
import { VERSION } from "../src/version.ts";

const FIXTURES = "tests/fixtures";
const CHECKPOINT = `${FIXTURES}/micro_sdxl_base.safetensors`;
const LORA = `${FIXTURES}/microA_r8_te.safetensors`;
const RECIPES = "fro_ckpt=1,thr=-3.5:spn_lora=1,size=0.4";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    chromium: { type: "string", default: "chromium" },
    width: { type: "string", default: "1400" },
    height: { type: "string", default: "2600" },
    html: { type: "string", default: "docs/report-example.html" },
    png: { type: "string", default: "docs/report-example.png" },
  },
});

const { outputs } = await plan({
  checkpoint: CHECKPOINT,
  loras: [LORA],
  recipes: RECIPES,
  normsCache: false,
  device: "cpu",
  curve: true,
});
const html = await renderReport({
  outputs,
  checkpoint: CHECKPOINT,
  title: "resize-lora report — example",
  footer: `resize-lora ${VERSION} · recipes ${RECIPES}`,
});
const refs = externalReferences(html);
if (refs.length > 0) throw new Error(`the report references outside resources: ${refs.join(", ")}`);
await Deno.mkdir("docs", { recursive: true });
await Deno.writeTextFile(values.html, html);
console.log(`${values.html}: ${html.length} characters`);

const png = resolve(values.png);
const netLog = join(await Deno.makeTempDir({ prefix: "report_netlog_" }), "net.json");
const { code, stderr } = await new Deno.Command(values.chromium, {
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--no-first-run",
    `--user-data-dir=${await Deno.makeTempDir({ prefix: "report_chromium_" })}`,
    "--force-device-scale-factor=1",
    `--window-size=${values.width},${values.height}`,
    `--log-net-log=${netLog}`,
    `--screenshot=${png}`,
    `file://${resolve(values.html)}`,
  ],
  stdout: "null",
  stderr: "piped",
}).output();
if (code !== 0) {
  throw new Error(`${values.chromium} failed (${code}): ${new TextDecoder().decode(stderr)}`);
}
// Requests made on behalf of the page carry its site (file://) in their
// network isolation key; Chromium's own traffic (updates, account checks)
// does not. A file:// page load itself does not go through the network stack.
interface NetLog {
  constants: { logEventTypes: Record<string, number> };
  events: { type: number; params?: { url?: string; network_isolation_key?: string } }[];
}
const net: NetLog = JSON.parse(await Deno.readTextFile(netLog));
const startJob = net.constants.logEventTypes.URL_REQUEST_START_JOB;
const requests = net.events
  .filter((e) => e.type === startJob && e.params?.network_isolation_key?.startsWith("file://"))
  .map((e) => e.params?.url);
if (requests.length > 0) throw new Error(`the page made requests: ${requests.join(", ")}`);
console.log(`${values.png}: written; the page made no network request`);
