// Builds the console into dist/, which the binary embeds (src/http/console.rs): one bundle of
// the app and its npm dependencies, the page, the stylesheet, and the licenses of what is
// bundled. dist/SOURCES.sha256 records what it was built from, so a test notices when the
// committed build is stale. Run `scripts/console` (npm ci, then this); `--out DIR` builds elsewhere.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';

const here = new URL('.', import.meta.url).pathname;
const at = process.argv.indexOf('--out');
const out = at > 0 ? process.argv[at + 1] : join(here, 'dist');
mkdirSync(out, { recursive: true });

await esbuild.build({
  entryPoints: [join(here, 'src/main.js')],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  legalComments: 'none',
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
});
copyFileSync(join(here, 'src/index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'src/app.css'), join(out, 'app.css'));

// The licenses of every package in the bundle.
const lock = JSON.parse(readFileSync(join(here, 'package-lock.json'), 'utf8'));
let licenses = 'The console bundles these packages from the npm registry.\n';
for (const [path, meta] of Object.entries(lock.packages)) {
  if (!path || meta.dev) continue;
  const dir = join(here, path);
  const file = readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  licenses += `\n==== ${path.replace(/^node_modules\//, '')} ${meta.version} (${meta.license}) ====\n\n`;
  licenses += file ? readFileSync(join(dir, file), 'utf8') : `${meta.license}\n`;
}
writeFileSync(join(out, 'LICENSES.txt'), licenses);
writeFileSync(join(out, 'SOURCES.sha256'), sourcesHash() + '\n');

// SHA-256 over each source file's path and bytes, in path order (src/http/console.rs checks it).
function sourcesHash() {
  const files = ['build.mjs', 'package.json', 'package-lock.json', ...readdirSync(join(here, 'src')).map((f) => `src/${f}`)];
  files.sort();
  const hash = createHash('sha256');
  for (const f of files) {
    hash.update(f + '\0');
    hash.update(readFileSync(join(here, f)));
    hash.update('\0');
  }
  return hash.digest('hex');
}
