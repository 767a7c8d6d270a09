// Bundles each widget's front end into kerasllm_widget/static/ (one ES module + its CSS per widget).
// `npm run build` is what the hatch jupyter-builder hook runs; `npm run dev` rebuilds on save, which
// together with ANYWIDGET_HMR=1 in the kernel reloads the widget in place.
import * as esbuild from "esbuild";

const watch = process.argv.includes("--watch");

// One entry per widget class; the key is the file name under static/ that the Python class points at.
const entries = {
  chat: "js/chat_widget/index.ts",
  tokens: "js/tokens/index.ts",
  preprocess: "js/preprocess/index.ts",
  attention: "js/attention/index.ts",
  probabilities: "js/probabilities/index.ts",
  lens: "js/lens/index.ts",
  training: "js/training/index.ts",
  attribution: "js/attribution/index.ts",
  compare: "js/compare/index.ts",
};

const options = {
  entryPoints: entries,
  outdir: "kerasllm_widget/static",
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: !watch,
  sourcemap: watch ? "inline" : false,
  legalComments: "none",
  logLevel: "info",
};

if (watch) {
  const context = await esbuild.context(options);
  await context.watch();
} else {
  await esbuild.build(options);
}
